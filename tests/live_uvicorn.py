"""`serve_in_thread(app)`: the app under a real uvicorn, as a context manager of its URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.live_server import LiveServer


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve `app` (lifespan included) and yield its base URL; stop it on exit."""
    with LiveServer(app=app) as server:
        yield server.url
