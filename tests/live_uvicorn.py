"""Real uvicorn servers for tests where sockets or processes matter.

- `serve_in_thread(app)`: the app under a real uvicorn in a thread, as a context
  manager of its URL.
- `ChatmemProcess(env, data_dir)`: `python -m chatmem serve` in a process of its own
  (scale-out, SIGKILL, SIGTERM tests).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.live_server import LiveServer
from tests.support import free_port, wait_until

START_TIMEOUT_S = 30.0


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve `app` (lifespan included) and yield its base URL; stop it on exit."""
    with LiveServer(app=app) as server:
        yield server.url


class ChatmemProcess:
    """`python -m chatmem serve` on a free loopback port, with its own data dir."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.port = free_port()
        self.env = {**env, "CHATMEM_DATA_DIR": str(data_dir)}
        self.cwd = data_dir.parent  # holds no .env
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChatmemProcess:
        cmd = [sys.executable, "-m", "chatmem", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=self.env, cwd=self.cwd)
        return self

    def wait_ready(self) -> None:
        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "chatmem exited"
            return httpx.get(self.url + "/health", timeout=1).status_code == 200

        what = f"chatmem on port {self.port} to start"
        wait_until(healthy, what, timeout_s=START_TIMEOUT_S, ignore=(httpx.TransportError,))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to store or release anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextmanager
def two_processes(
    env: dict[str, str], tmp: Path
) -> Iterator[tuple[ChatmemProcess, ChatmemProcess]]:
    """Two `chatmem serve` processes sharing `env` (one Redis), each with its own data
    dir under `tmp`, started together and stopped on exit."""
    a = ChatmemProcess(env, tmp / "a" / "data").start()
    b = ChatmemProcess(env, tmp / "b" / "data").start()
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()
