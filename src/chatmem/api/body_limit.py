"""Refuse request bodies past their size limit with a JSON 413, before a route sees them.

Pure ASGI, so that it counts what is really received: a chunked body (no
Content-Length) or one that lies about its length is cut off at the limit too, and
never buffered whole. A declared Content-Length past the limit is refused at once,
without reading the body.

Once the limit is passed, the app is told the client went away (`http.disconnect`) and
whatever it answers is dropped: the client gets the 413 instead.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatmem.api.errors import error_body
from chatmem.config import LimitSettings

CODE = "body_too_large"
# Routes whose bodies may be as large as an import: a Character Card V2 import, and the
# admin's own character writes (a character holds up to ~80 000 characters of prompts
# plus the card data it was imported from), and an export imported over HTTP.
IMPORT_ROUTES_PREFIX = ("/v1/characters", "/v1/import")


def route_limits(limits: LimitSettings) -> Callable[[str, str], int]:
    """Each request's body limit: `max_import_body_bytes` for imports, else `max_body_bytes`."""

    def limit_for(method: str, path: str) -> int:
        if method in ("POST", "PUT") and path.startswith(IMPORT_ROUTES_PREFIX):
            return limits.max_import_body_bytes
        return limits.max_body_bytes

    return limit_for


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we see it
    return None


async def _too_large(send: Send, limit: int) -> None:
    body = orjson.dumps(
        error_body(CODE, f"the request body is larger than the limit of {limit} bytes")
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """`limit_for(method, path)` gives each request's limit in bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the 413 goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _too_large(send, limit)
