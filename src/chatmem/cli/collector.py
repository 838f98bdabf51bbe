"""The garbage collector of a served process, settled once its app has started.

With 1 000 streams open a process holds ~600 000 objects that live for seconds (~650
per stream: the request, the generation, the SSE response's tasks, the upstream
response). At Python's thresholds (700, 10, 10) a full collection runs every ~70 000
allocations whenever a quarter of the old generation is new — 6 to 11 times while 1 000
streams start — and traverses every live object with the event loop stopped: 0.4–1.6 s
on the 2-core box of docs/performance.md, a late delta for every stream each time.

Settled (`settle_gc`, once the lifespan's start-up is complete):
- what start-up built (modules, the app, settings, pools) is frozen: never garbage,
  never traversed again;
- the young generations are collected often and so briefly (every 2 000 allocations,
  the middle one every 5 of those: pauses of a few ms, ~60 ms at worst measured);
- the old one by the thresholds only every ~20 M allocations, and every
  FULL_COLLECTION_S by a timer (`SettledGC`), so that garbage cycles that reached it
  (a stream's, say) are freed within minutes, in one pause at a known rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

GC_THRESHOLDS = (2_000, 5, 2_000)
FULL_COLLECTION_S = 300.0


def settle_gc() -> None:
    """Freeze what exists now and set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def full_collections(every_s: float) -> None:
    """A full collection every `every_s`, until cancelled."""
    while True:
        await asyncio.sleep(every_s)
        gc.collect()


class SettledGC:
    """The app, with the collector settled once its lifespan's start-up is complete and
    a full collection every FULL_COLLECTION_S until its shutdown; requests pass through
    untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        timer: asyncio.Task[None] | None = None

        async def send_then_settle(message: Message) -> None:
            nonlocal timer
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                settle_gc()
                timer = asyncio.create_task(
                    full_collections(FULL_COLLECTION_S), name="full collections"
                )

        try:
            await self.app(scope, receive, send_then_settle)
        finally:
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
