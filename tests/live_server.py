"""A real uvicorn serving `create_app(settings)` on a free loopback port, in a thread.

    with LiveServer(settings) as server:       # lifespan run, port bound, ready
        httpx.get(server.url + "/health")

For tests where sockets matter: browsers, subprocess clients, disconnects. The server's
event loop lives in its own thread, so sync test code (Playwright's sync API, a
subprocess) can talk to it while it runs.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import anyio
import uvicorn

from chatmem.api.app import create_app
from chatmem.config import Settings
from chatmem.providers.base import ChatProvider
from tests.support import free_port, wait_until

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

# CPython 3.11.7's ast is not thread-safe (gh-106905): a module imported for the first
# time in the server's thread, under pytest's assertion rewriter (anyio is a pytest
# plugin, so it is rewritten), can fail with "AST constructor recursion depth mismatch"
# while another thread parses. Starlette loads these lazily on its first file response
# and threadpool call: load them here, in the importing thread.
for _name in ("open_file", "wrap_file", "Path", "to_thread", "from_thread"):
    getattr(anyio, _name)


class LiveServer:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        app: Any = None,
        provider: ChatProvider | None = None,
        port: int | None = None,
    ) -> None:
        """Serve `create_app(settings)`, or an `app` built by the caller."""
        if app is None:
            if settings is None:
                raise ValueError("LiveServer needs settings or an app")
            app = create_app(settings, provider=provider)
        self.settings = settings
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            # uvloop's loop.close() can fail with EBUSY when a thread's server stops.
            loop="asyncio",
            # Open streams must not hold a test's teardown for long.
            timeout_graceful_shutdown=2,
            # Idle keep-alive connections outlive a slow test step: a client reusing one
            # that the server is closing would see a spurious disconnect.
            timeout_keep_alive=120,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self._thread = threading.Thread(
            target=self._server.run, name=f"uvicorn-{self.port}", daemon=True
        )
        self._thread.start()
        thread = self._thread

        def started() -> bool:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up (see the log above)")
            return bool(self._server.started)

        try:
            wait_until(started, "uvicorn to start", timeout_s=START_TIMEOUT_S)
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
