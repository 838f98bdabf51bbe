"""Relay a prepared turn to the client: JSON, or SSE with pings.

sse-starlette cancels the generator when the client disconnects; the turn's own cleanup
then persists the partial reply and closes the upstream stream.

On server shutdown (SIGTERM) a stream may go on for the grace period
(`server.shutdown_grace_s`, uvicorn's graceful-shutdown timeout too). One still running
shortly before it ends is stopped, so that it ends with its `done` event (the reply
marked interrupted, as stored) rather than with a connection cut half-way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from chatmem.api.errors import log_detail
from chatmem.chat.service import Turn, TurnEvent
from chatmem.errors import ChatmemError

PING_S = 15
# Stop a turn this long before the shutdown grace period ends: time to store and send it.
SHUTDOWN_STOP_MARGIN_S = 1.0

EventShaper = Callable[[TurnEvent, str, int], dict[str, str]]
ErrorShaper = Callable[[str, str, str, int], dict[str, str]]


def graceful_shutdown(turn: Turn) -> dict[str, Any]:
    """EventSourceResponse options for a turn's stream at server shutdown: sse-starlette
    would end every stream at once; this lets it run for the grace period, and stops the
    turn just before the end so that it ends with its `done` event."""
    grace_s = turn.service.settings.server.shutdown_grace_s
    shutdown = anyio.Event()

    async def stop_before_the_cut() -> None:
        await shutdown.wait()
        await anyio.sleep(max(0.0, grace_s - SHUTDOWN_STOP_MARGIN_S))
        turn.stop.set()

    return {
        "shutdown_event": shutdown,
        "shutdown_grace_period": grace_s,
        "data_sender_callable": stop_before_the_cut,
    }


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
            log_detail(exc)
            yield shape_error(exc.code, exc.message, turn.reply_id, n + 1)

    return EventSourceResponse(
        frames(),
        ping=PING_S,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(turn.abandon),
        **graceful_shutdown(turn),
    )
