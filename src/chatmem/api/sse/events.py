"""Shape native SSE events (pure: values in, dicts for sse-starlette out).

    event: delta  {content}
    event: done   {message, user_message, usage, memory}
    event: error  {code, message}

Each event has an id `<reply id>:<n>` so a client can tell where it stopped.
"""

from __future__ import annotations

from typing import Any

import orjson

from chatmem.chat.service import Delta, TurnDone, TurnEvent


def _data(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def done_payload(done: TurnDone) -> dict[str, Any]:
    return {
        "message": done.message.to_dict(),
        "user_message": done.user_message.to_dict(),
        "usage": done.usage.to_dict(),
        "memory": done.memory,
        "replayed": done.replayed,
    }


def native_event(event: TurnEvent, reply_id: str, n: int) -> dict[str, str]:
    if isinstance(event, Delta):
        return {"event": "delta", "id": f"{reply_id}:{n}", "data": _data({"content": event.text})}
    return {"event": "done", "id": f"{reply_id}:{n}", "data": _data(done_payload(event))}


def error_event(code: str, message: str, reply_id: str, n: int) -> dict[str, str]:
    return {
        "event": "error",
        "id": f"{reply_id}:{n}",
        "data": _data({"code": code, "message": message}),
    }
