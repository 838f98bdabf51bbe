"""Shape native SSE events (pure: values in, dicts for sse-starlette out).

    event: delta  {content}                                 id: <generation>.<offset>
    event: done   {message, user_message, usage, memory, replayed}   id: <generation>.end
    event: error  {code, message}                           id: <generation>.end

A delta's id says how many characters of the reply the client has once it is applied:
`GET /v1/sessions/{sid}/stream` with that id as `Last-Event-ID` sends the rest of the
reply from there, each character exactly once (chat/generation.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from chatmem.chat.service import Delta, Ended, NativeEvent, TurnDone


def _data(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def done_payload(done: TurnDone) -> dict[str, Any]:
    return done.payload()


def native_event(event: NativeEvent, generation_id: str) -> dict[str, str]:
    if isinstance(event, Delta):
        return {
            "event": "delta",
            "id": f"{generation_id}.{event.offset}",
            "data": _data({"content": event.text}),
        }
    if isinstance(event, Ended):
        return {"event": event.event, "id": f"{generation_id}.end", "data": _data(event.data)}
    return {"event": "done", "id": f"{generation_id}.end", "data": _data(event.payload())}


def error_event(code: str, message: str, generation_id: str) -> dict[str, str]:
    return {
        "event": "error",
        "id": f"{generation_id}.end",
        "data": _data({"code": code, "message": message}),
    }
