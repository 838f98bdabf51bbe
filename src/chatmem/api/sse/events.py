"""Shape native SSE events (pure: values in, encoded frames out).

    event: delta  {content}                                 id: <generation>.<offset>
    event: done   {message, user_message, usage, memory, replayed}   id: <generation>.end
    event: error  {code, message}                           id: <generation>.end

A delta's id says how many characters of the reply the client has once it is applied:
`GET /v1/sessions/{sid}/stream` with that id as `Last-Event-ID` sends the rest of the
reply from there, each character exactly once (chat/generation.py).

Frames are encoded here, once, as the bytes that go on the wire (what sse-starlette's
`ServerSentEvent` would write: `id`, `event`, `data` lines ended by CRLF, a blank line
after), so the response passes them through untouched. The data is compact JSON, which
holds no line break, and ids and event names are chatmem's own, so no line needs
splitting.
"""

from __future__ import annotations

from typing import Any

import orjson

from chatmem.chat.service import Delta, Ended, NativeEvent, TurnDone

SEP = b"\r\n"


def frame(event: str, event_id: str, data: Any) -> bytes:
    """One SSE event, encoded: `id`, `event` and one `data` line of compact JSON."""
    return b"".join(
        (
            b"id: ",
            event_id.encode(),
            b"\r\nevent: ",
            event.encode(),
            b"\r\ndata: ",
            orjson.dumps(data),
            b"\r\n\r\n",
        )
    )


def done_payload(done: TurnDone) -> dict[str, Any]:
    return done.payload()


def native_event(event: NativeEvent, generation_id: str) -> bytes:
    if isinstance(event, Delta):
        return frame("delta", f"{generation_id}.{event.offset}", {"content": event.text})
    if isinstance(event, Ended):
        return frame(event.event, f"{generation_id}.end", event.data)
    return frame("done", f"{generation_id}.end", event.payload())


def error_event(code: str, message: str, generation_id: str) -> bytes:
    return frame("error", f"{generation_id}.end", {"code": code, "message": message})
