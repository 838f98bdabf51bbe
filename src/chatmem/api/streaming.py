"""Relay a prepared turn to the client: JSON, or SSE with pings.

sse-starlette cancels the generator when the client disconnects; the turn's own cleanup
then persists the partial reply and closes the upstream stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from chatmem.errors import ChatmemError
from chatmem.service import Turn, TurnEvent

PING_S = 15

EventShaper = Callable[[TurnEvent, str, int], dict[str, str]]
ErrorShaper = Callable[[str, str, str, int], dict[str, str]]


def sse_response(turn: Turn, shape: EventShaper, shape_error: ErrorShaper) -> EventSourceResponse:
    async def frames() -> AsyncIterator[dict[str, Any]]:
        n = 0
        try:
            # aclosing: when the client goes, sse-starlette closes this generator while it
            # is suspended at a yield; the turn's own generator must be closed with it
            # (not left to the garbage collector) so the upstream stream ends now.
            async with contextlib.aclosing(turn.events()) as events:
                async for event in events:
                    n += 1
                    yield shape(event, turn.reply_id, n)
        except ChatmemError as exc:
            yield shape_error(exc.code, exc.message, turn.reply_id, n + 1)

    return EventSourceResponse(
        frames(),
        ping=PING_S,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(turn.abandon),
        # On SIGTERM sse-starlette would end every stream at once: let them finish first.
        shutdown_grace_period=turn.service.settings.server.shutdown_grace_s,
    )
