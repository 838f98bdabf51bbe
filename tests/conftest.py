from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from chatmem.config import RedisSettings
from chatmem.memory.connection import make_redis
from chatmem.memory.store import AnyRedis, RedisMemoryStore
from tests.redis_servers import RedisProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=None,
        help="use this Redis instead of starting one (its database is flushed!)",
    )


@pytest.fixture(scope="session")
def redis_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real redis-server for the whole run: the embedded binary unless --redis-url."""
    given = request.config.getoption("--redis-url")
    if given:
        yield given
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[AnyRedis]:
    client = make_redis(redis_url, RedisSettings(url=redis_url))
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: Redis) -> RedisMemoryStore:
    return RedisMemoryStore(redis_client, max_messages=100, default_ttl_s=3600)


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d
