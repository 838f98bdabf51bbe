"""Issue 16, item 4: every failure mode redis-py shows under failover is "unavailable" in
the one Redis error mapping (store/client.py), so a turn degrades (or is refused with a
503) instead of being answered with a 500 although it was kept.

The torn connection is made for real: a connection whose server was SIGKILLed under it,
on uvloop (what `chatmem serve` runs on), raises RuntimeError from redis-py's write, and
a connection closed by another task (the Cluster client's re-initialisation does that to
connections in use) raises AttributeError from the same line.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.exceptions as rex
import uvloop
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import MasterNotFoundError

from chatmem.errors import StoreUnavailable
from chatmem.store.client import is_torn_connection, redis_errors, store_error
from tests.redis_servers import RedisProcess


@pytest.mark.parametrize(
    "exc",
    [
        rex.MovedError("3999 127.0.0.1:6381"),
        rex.AskError("3999 127.0.0.1:6381"),
        rex.ClusterError("TTL exhausted."),  # a MOVED storm outlasting redis-py's retries
        rex.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rex.RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node."
        ),
        MasterNotFoundError("No master found for 'mymaster'"),
        rex.ReadOnlyError("READONLY You can't write against a read only replica."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_failover_errors_are_store_unavailable(exc: Exception) -> None:
    assert isinstance(store_error(exc, "op"), StoreUnavailable)


def test_other_cluster_exceptions_are_left_as_bugs() -> None:
    crossed = rex.RedisClusterException("keys in request don't hash to the same slot")
    assert store_error(crossed, "op") is None


async def _torn_writes(port: int, server: RedisProcess) -> list[BaseException]:
    """Two connections torn as a failover tears them; what writing to each raises."""
    raised: list[BaseException] = []
    killed = Connection(host="127.0.0.1", port=port)
    closed = Connection(host="127.0.0.1", port=port)
    await killed.connect()
    await closed.connect()
    writer = closed._writer
    assert writer is not None
    closed._writer = None  # what `disconnect()` from another task leaves under a command
    server.kill()
    # Another user of the connection writes, then writes again and meets the reset:
    # uvloop closes the transport under redis-py, which still holds its writer.
    assert killed._writer is not None
    for _ in range(2):
        await asyncio.sleep(0.1)
        with contextlib.suppress(ConnectionError):
            killed._writer.write(b"PING\r\n")
            await killed._writer.drain()
    for conn, send in (
        (killed, killed.send_packed_command(b"PING\r\n", check_health=False)),
        (closed, closed._send_packed_command([b"PING\r\n"])),
    ):
        try:
            await send
        except Exception as exc:
            raised.append(exc)
        await conn.disconnect(nowait=True)
    writer.close()
    return raised


def test_a_torn_connection_on_uvloop_is_store_unavailable(redis_server: RedisProcess) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runtime, attribute = runner.run(_torn_writes(redis_server.port, redis_server))
    assert isinstance(runtime, RuntimeError) and "TCPTransport closed" in str(runtime)
    assert isinstance(attribute, AttributeError) and "writelines" in str(attribute)
    for exc in (runtime, attribute):
        assert is_torn_connection(exc)
        with pytest.raises(StoreUnavailable, match="during read"), redis_errors("read"):
            raise exc


def test_the_same_messages_from_our_own_code_are_bugs() -> None:
    """Only redis-py's torn connection is "unavailable": a RuntimeError or AttributeError
    of ours with the same words stays a bug (a 500, logged)."""
    for exc in (
        RuntimeError("unable to perform operation on <TCPTransport closed=True>"),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
    ):
        try:
            raise exc
        except Exception as raised:
            assert not is_torn_connection(raised)
            assert store_error(raised, "op") is None
        with pytest.raises(type(exc)), redis_errors("read"):
            raise exc
