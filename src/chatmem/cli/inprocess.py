"""Talk HTTP to an in-process app: the app's lifespan run, and a transport that streams.

httpx's own `ASGITransport` collects the whole response body before it returns, so an
SSE reply would arrive all at once at the end. `StreamingASGITransport` runs the app in
a task and hands its body over chunk by chunk as the app sends it; closing the response
early tells the app that the client went away (`http.disconnect`), as a socket would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

Message = MutableMapping[str, Any]

# How long closing a response waits for the app to wind down (persisting a partial reply).
CLOSE_TIMEOUT_S = 10.0


class _AppFailed(Exception):
    pass


class _BodyStream(httpx.AsyncByteStream):
    def __init__(
        self,
        queue: asyncio.Queue[Message | BaseException | None],
        task: asyncio.Task[None],
        disconnected: asyncio.Event,
    ) -> None:
        self._queue = queue
        self._task = task
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if item["type"] != "http.response.body":
                continue
            body = item.get("body", b"")
            if body:
                yield bytes(body)
            if not item.get("more_body", False):
                return

    async def aclose(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """An httpx transport that calls an ASGI app directly and streams its response."""

    def __init__(self, app: Any, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        queue: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()
        disconnected = asyncio.Event()
        request_sent = False
        started = False

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await queue.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                # After the response started the app has already answered (a 500 from
                # Starlette's error middleware, say): the body simply ends.
                if not started:
                    await queue.put(exc)
            finally:
                await queue.put(None)

        task = asyncio.create_task(run())
        first = await queue.get()
        if first is None:
            raise _AppFailed("the app returned without a response")
        if isinstance(first, BaseException):
            raise first
        headers = [(bytes(k), bytes(v)) for k, v in first.get("headers", [])]
        return httpx.Response(
            first["status"],
            headers=headers,
            stream=_BodyStream(queue, task, disconnected),
            request=request,
        )


@asynccontextmanager
async def app_client(app: FastAPI, **client_kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and an httpx client calling it in-process."""
    async with app.router.lifespan_context(app):
        transport = StreamingASGITransport(app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://chatmem.local", **client_kwargs
        ) as client:
            yield client
