"""The leaner command packer (store/packing.py) writes exactly redis-py's bytes, refuses
what redis-py refuses, and is what make_redis's clients use."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from chatmem.config import RedisSettings
from chatmem.store.client import make_redis
from chatmem.store.packing import FastPacking, fast_packing

ARGS: list[tuple[object, ...]] = [
    ("EVALSHA", "a" * 40, 2, "k1", "k2", "text 你好 🙂", b"\x00\xff", 0, -17, 2**60, 1.5),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"x"),
    ("SET", "k", "v" * 10_000),  # past redis-py's buffer cutoff: same bytes, one chunk
    ("PING",),
]


@pytest.mark.parametrize("args", ARGS)
def test_the_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    plain, fast = Connection(), fast_packing(Connection)()
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_redis_py_refuses_is_refused(bad: object) -> None:
    with pytest.raises(DataError):
        fast_packing(Connection)().pack_command("SET", "k", bad)


def test_a_memoryview_goes_to_redis_py_uncopied() -> None:
    value = memoryview(b"x" * 10_000)
    out = fast_packing(Connection)().pack_command("SET", "k", value)
    assert any(isinstance(part, memoryview) for part in out)


async def test_make_redis_clients_pack_with_it(redis_url: str, tmp_path: Path) -> None:
    client = make_redis(redis_url, RedisSettings(url=redis_url))
    try:
        assert issubclass(client.connection_pool.connection_class, FastPacking)
        text = "multi\nline 你好 🙂 " * 1000
        await client.set("packing:k", text)
        assert await client.get("packing:k") == text
        assert await client.incrby("packing:n", 2**40) == 2**40
    finally:
        await client.delete("packing:k", "packing:n")
        await client.aclose()
