"""ASGI middleware around the real app that watches a client resume a reply (SPEC §3.5).

    tap = StreamTap(create_app(settings))
    with LiveServer(app=tap) as server:
        tap.cut_after_events = 5     # the client's next streamed send ends after 5 events
        ...                          # the client resumes with GET …/stream
        tap.cut_at_ids               # the id of the last event each cut response carried
        tap.last_event_ids           # the Last-Event-ID of every GET …/stream the app got

It serves nothing itself: every request goes to the real app, the routes included. It
only records the `Last-Event-ID` header of each `GET /v1/sessions/{sid}/stream` the app
receives, and, when asked, ends the client's next streamed `POST
/v1/sessions/{sid}/messages` response after a given number of events: the client sees
its body end before the reply's end, at a known event, and the app sees its client go
away (the reply goes on, as the route promises). What the app sends after the cut is
dropped.
"""

from __future__ import annotations

import re
from typing import Any

SEND_PATH = re.compile(r"/v1/sessions/([^/]+)/messages")
STREAM_PATH = re.compile(r"/v1/sessions/([^/]+)/stream")

Scope = dict[str, Any]
Message = dict[str, Any]


class _EventIds:
    """The ids of the SSE events in a body read piece by piece (pings carry none)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._buffer = ""

    def feed(self, chunk: bytes) -> int:
        """Take a piece of the body; the number of events with an id it finished."""
        self._buffer = (self._buffer + chunk.decode()).replace("\r\n", "\n")
        finished = 0
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            ids = [line[3:].strip() for line in block.split("\n") if line.startswith("id:")]
            if ids:
                self.ids.append(ids[-1])
                finished += 1
        return finished


class StreamTap:
    """See the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cut_after_events: int | None = None
        self.cut_at_ids: list[str] = []
        self.last_event_ids: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if method == "GET" and STREAM_PATH.fullmatch(path):
                header = dict(scope["headers"]).get(b"last-event-id")
                self.last_event_ids.append(header.decode() if header else None)
            elif method == "POST" and SEND_PATH.fullmatch(path) and self.cut_after_events:
                cut_after, self.cut_after_events = self.cut_after_events, None
                await self.app(scope, receive, self._cutting(send, cut_after))
                return
        await self.app(scope, receive, send)

    def _cutting(self, send: Any, cut_after: int) -> Any:
        events: _EventIds | None = None
        client_open = True

        async def cutting_send(message: Message) -> None:
            nonlocal events, client_open
            if not client_open:
                return
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    events = _EventIds()
            elif message["type"] == "http.response.body" and events is not None:
                events.feed(message.get("body", b""))
                if len(events.ids) >= cut_after and message.get("more_body"):
                    client_open = False
                    self.cut_at_ids.append(events.ids[-1])
                    await send(message | {"more_body": False})
                    return
            await send(message)

        return cutting_send
