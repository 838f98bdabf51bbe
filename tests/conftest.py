from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from chatmem.config import RedisSettings
from chatmem.store.client import make_redis
from chatmem.store.conversations import AnyRedis, RedisMemoryStore
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI
from tests.live_server import LiveServer
from tests.redis_servers import RedisClusterProcesses, RedisProcess, SentinelProcesses
from tests.support import scrubbed_env

# The configurations the memory store's contract tests run against (STYLE rule 14).
MEMORY_BACKENDS = ("standalone", "cluster", "sentinel")
_BACKEND_URL_FIXTURES = {
    "standalone": "redis_url",
    "cluster": "cluster_redis_url",
    "sentinel": "sentinel_redis_url",
}


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


@pytest.fixture(scope="session")
def cluster_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on loopback, started on first use."""
    servers = RedisClusterProcesses(tmp_path_factory.mktemp("cluster")).start()
    yield servers.url
    servers.stop()


@pytest.fixture(scope="session")
def sentinel_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A master + replica behind 3 Sentinels on loopback, started on first use."""
    servers = SentinelProcesses(tmp_path_factory.mktemp("sentinel")).start()
    yield servers.url
    servers.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of the test's own, to kill, SIGSTOP or restart: durable across a restart
    (same port, same dir, AOF fsynced at every write)."""
    server = RedisProcess(tmp_path, "appendonly yes", "appendfsync always").start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture(params=MEMORY_BACKENDS)
def memory_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def contract_client(
    memory_backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[AnyRedis]:
    """A flushed client of each backend in turn. A test module runs its tests as a
    contract suite by overriding `redis_client` with this (`store` follows)."""
    url: str = request.getfixturevalue(_BACKEND_URL_FIXTURES[memory_backend])
    client = make_redis(url, RedisSettings(url=url))
    await client.flushdb()
    yield client
    await client.aclose()


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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CHATMEM_ variable of the developer's and no .env (the working directory is the
    test's own, returned): code that reads the environment sees only what the test sets."""
    for name in os.environ.keys() - scrubbed_env().keys():
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def fake_model() -> Iterator[FakeOpenAI]:
    """The fake OpenAI-compatible model server, one for the whole run. Tests take it as
    `fake`; a module-scoped server only needs its `base_url` from here."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake(fake_model: FakeOpenAI, request: pytest.FixtureRequest) -> FakeOpenAI:
    """The fake model, reset: no script, no requests recorded. A module or test changes
    its default reply or API key with `@pytest.mark.fake_model(default=Reply(...),
    api_key=...)`."""
    marker = request.node.get_closest_marker("fake_model")
    fake_model.reset(**(marker.kwargs if marker else {}))
    return fake_model


@pytest.fixture
async def client(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process on the real Redis (flushed), its model `fake`. A module that
    needs other settings defines its own `client`."""
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir)
    async with running_app(settings) as (_, http):
        yield http


@pytest.fixture(scope="module")
def base_url(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of a real uvicorn serving the app (open mode, the test Redis, the fake
    model), one per test module: for real clients (the `openai` SDK, LangChain)."""
    settings = make_test_settings(redis_url, fake_model.base_url, tmp_path_factory.mktemp("data"))
    with LiveServer(settings) as server:
        yield server.url


@pytest.fixture
def user() -> str:
    """A user id of the test's own: tests sharing a module's server see only their data."""
    return f"u{uuid.uuid4().hex[:12]}"
