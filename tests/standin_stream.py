"""TEMPORARY, test-only: a stand-in for the server side of issue 11 (SPEC §3.5, §3.6).

Remove this module (and the `standin` test parameters that use it) once the server
serves `GET /v1/sessions/{sid}/stream` itself; the same client tests then run against the
real route, unchanged. It exists so that the clients (the page, `chatmem chat`) can be
checked against the contract before the server side lands:

- a client that disconnects from `POST /v1/sessions/{sid}/messages` (SSE) does not stop
  the generation: the wrapped app never hears of the disconnect, so the reply completes
  and is stored;
- `GET /v1/sessions/{sid}/stream` answers 204 when the session has no reply running or
  recently ended; otherwise SSE: the reply's events from the start, or after the id in
  `Last-Event-ID`, then live until the end, each with its `id:` line, and comment pings.

It wraps the real app as ASGI middleware and records each streamed reply's events as
they pass. No auth check on the stream route: tests only.

`cut_after_events = n` ends the client's next POST response after n events (the reply
goes on), so that a client's resume with `Last-Event-ID` can be exercised;
`cut_at_ids` lists the id of the last event each cut response carried, and
`last_event_ids` the header of every `GET …/stream`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

SEND_PATH = re.compile(r"/v1/sessions/([^/]+)/messages")
STREAM_PATH = re.compile(r"/v1/sessions/([^/]+)/stream")
KEEP_AFTER_END_S = 60.0

Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass
class _Recording:
    events: list[tuple[str, str]] = field(default_factory=list)  # (id, the event's text)
    ended_at: float | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)
    _buffer: str = ""

    def feed(self, chunk: bytes) -> int:
        """Take a piece of the SSE body; the number of complete events it finished."""
        self._buffer += chunk.decode()
        self._buffer = self._buffer.replace("\r\n", "\n")
        finished = 0
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            ids = [line[3:].strip() for line in block.split("\n") if line.startswith("id:")]
            if ids:  # pings (comments) carry no id
                self.events.append((ids[-1], block))
                finished += 1
        self._notify()
        return finished

    def end(self) -> None:
        self.ended_at = time.monotonic()
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def position_after(self, last_event_id: str | None) -> int:
        for i, (event_id, _) in enumerate(self.events):
            if event_id == last_event_id:
                return i + 1
        return 0


class StandInStream:
    """ASGI middleware around the real app; see the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.replies: dict[str, _Recording] = {}
        self.cut_after_events: int | None = None
        self.cut_at_ids: list[str] = []
        self.last_event_ids: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if method == "GET" and (m := STREAM_PATH.fullmatch(path)):
                await self._replay(m[1], scope, send)
                return
            if method == "POST" and (m := SEND_PATH.fullmatch(path)):
                await self._send_and_record(m[1], scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _send_and_record(self, sid: str, scope: Scope, receive: Any, send: Any) -> None:
        finished = anyio.Event()
        body_read = False
        recording: _Recording | None = None
        cut_after, self.cut_after_events = self.cut_after_events, None
        relayed = 0
        client_open = True

        async def shielded_receive() -> Message:
            nonlocal body_read
            if not body_read:
                message: Message = await receive()
                body_read = message["type"] != "http.request" or not message.get("more_body")
                return message
            await finished.wait()  # the app never hears of the client going away
            return {"type": "http.disconnect"}

        async def recording_send(message: Message) -> None:
            nonlocal recording, relayed, client_open
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    recording = self.replies[sid] = _Recording()
            elif message["type"] == "http.response.body" and recording is not None:
                relayed += recording.feed(message.get("body", b""))
                if not message.get("more_body"):
                    recording.end()
                if client_open and cut_after is not None and relayed >= cut_after:
                    client_open = False
                    self.cut_at_ids.append(recording.events[-1][0])
                    await send(message | {"more_body": False})
                    return
            if client_open:
                await send(message)

        try:
            await self.app(scope, shielded_receive, recording_send)
        finally:
            finished.set()

    async def _replay(self, sid: str, scope: Scope, send: Any) -> None:
        headers = dict(scope["headers"])
        last_id = headers.get(b"last-event-id", b"").decode() or None
        self.last_event_ids.append(last_id)
        rec = self.replies.get(sid)
        if rec is None or (
            rec.ended_at is not None and time.monotonic() - rec.ended_at > KEEP_AFTER_END_S
        ):
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
        pos = rec.position_after(last_id)
        while True:
            changed = rec.changed
            while pos < len(rec.events):
                body = (rec.events[pos][1].replace("\n", "\r\n") + "\r\n\r\n").encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                pos += 1
            if rec.ended_at is not None:
                break
            await changed.wait()
        await send({"type": "http.response.body", "body": b""})
