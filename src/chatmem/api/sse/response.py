"""Relay a generation to a client as SSE, with pings.

The generation is server-owned (chat/generation.py): the response is one subscriber.
When the client goes away sse-starlette cancels the subscription, and the generation
goes on and is stored — unless it was started with `on_disconnect: "stop"` (the
OpenAI-compatible route's way), in which case it is stopped and its partial reply stored
as interrupted.

On server shutdown (SIGTERM) a stream may go on for the grace period
(`server.shutdown_grace_s`, uvicorn's graceful-shutdown timeout too). A generation still
running shortly before it ends is stopped, so that its subscribers get their final event
(the reply marked interrupted, as stored) rather than a connection cut half-way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.types import Message, Send

from chatmem.api.errors import log_detail
from chatmem.chat.service import Generation, NativeEvent
from chatmem.errors import ChatmemError

PING_S = 15
# Stop a generation this long before the shutdown grace period ends: time to store it.
SHUTDOWN_STOP_MARGIN_S = 1.0
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

# A frame: already encoded (api/sse/events.py), or a dict for sse-starlette to encode.
Frame = bytes | dict[str, Any]
Frames = AsyncIterator[Frame]
EventShaper = Callable[[Any], Frame]
ErrorShaper = Callable[[str, str], Frame]


class FrameStream(EventSourceResponse):
    """sse-starlette's response, minus a cancel scope around every send when no send
    timeout is set (chatmem sets none: a stalled client is the transport's to detect):
    `anyio.move_on_after(None)` cost ~12 µs a frame, the send itself well under one."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is not None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True  # what sse-starlette's own does on failure
            raise


def graceful_shutdown(gen: Generation, grace_s: float) -> dict[str, Any]:
    """EventSourceResponse options for a generation's stream at server shutdown:
    sse-starlette would end every stream at once; this lets it run for the grace period,
    and stops the generation just before the end so that it ends with its final event."""
    shutdown = anyio.Event()

    async def stop_before_the_cut() -> None:
        await shutdown.wait()
        await anyio.sleep(max(0.0, grace_s - SHUTDOWN_STOP_MARGIN_S))
        gen.request_stop()

    return {
        "shutdown_event": shutdown,
        "shutdown_grace_period": grace_s,
        "data_sender_callable": stop_before_the_cut,
    }


async def subscribe(
    gen: Generation, shape: EventShaper, shape_error: ErrorShaper, after: int = 0
) -> Frames:
    """The generation's events as SSE frames; a disconnect stops it if it asked so.
    Frames already encoded that are ready together are joined into one."""
    finished = False
    try:
        async for batch in gen.batches(after):
            frames = [shape(event) for event in batch]
            if len(frames) > 1 and all(type(f) is bytes for f in frames):
                # What arrived together goes out in one write: one ASGI message, one
                # syscall, however many deltas a slow loop let pile up.
                yield b"".join(frames)  # type: ignore[arg-type]
            else:
                for f in frames:
                    yield f
        finished = True
    except ChatmemError as exc:
        finished = True
        log_detail(exc)
        yield shape_error(exc.code, exc.message)
    finally:
        if not finished and gen.on_disconnect == "stop":
            gen.request_stop()


def sse_response(
    gen: Generation, frames: Frames, *, grace_s: float, headers: dict[str, str] | None = None
) -> EventSourceResponse:
    """`frames` (usually `subscribe(gen, …)`) as an SSE response, pinged, that ends
    gracefully at shutdown."""
    return FrameStream(
        frames,
        ping=PING_S,
        headers={**HEADERS, **(headers or {})},
        **graceful_shutdown(gen, grace_s),
    )


def events_response(events: AsyncIterator[NativeEvent], shape: EventShaper) -> EventSourceResponse:
    """A re-attached client's stream (it may follow a generation of another process)."""

    async def frames() -> Frames:
        async for event in events:
            yield shape(event)

    return FrameStream(frames(), ping=PING_S, headers=HEADERS)
