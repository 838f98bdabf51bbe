"""Native SSE frames: encoded once as bytes (as sse-starlette would write them), and the
frames that are ready together written at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from sse_starlette import ServerSentEvent

from chatmem.api.sse.events import error_event, native_event
from chatmem.api.sse.response import subscribe
from chatmem.chat.generation import Delta, Ended, Generation


def test_frames_are_what_sse_starlette_would_write() -> None:
    for event, name, event_id, data in [
        (Delta("hi\nthere “ok”\r\n", 17), "delta", "g1.17", {"content": "hi\nthere “ok”\r\n"}),
        (Ended("done", {"message": {"content": "x"}}), "done", "g1.end", None),
    ]:
        payload = orjson.dumps(data if data is not None else cast(Ended, event).data).decode()
        expected = ServerSentEvent(payload, event=name, id=event_id).encode()
        assert native_event(event, "g1") == expected
    expected = ServerSentEvent('{"code":"c","message":"m"}', event="error", id="g1.end").encode()
    assert error_event("c", "m", "g1") == expected


class Batches:
    """Stands in for a Generation: its `batches` are given."""

    on_disconnect = "continue"

    def __init__(self, batches: list[list[Any]]) -> None:
        self._batches = batches

    async def batches(self, after: int = 0) -> AsyncIterator[list[Any]]:
        for batch in self._batches:
            yield batch


async def frames_of(gen: Batches, shape: Any) -> list[Any]:
    sub = subscribe(cast(Generation, gen), shape, lambda c, m: error_event(c, m, "g"))
    return [frame async for frame in sub]


async def test_frames_ready_together_are_one_write() -> None:
    deltas = [Delta("a", 1), Delta("b", 2), Delta("c", 3)]
    gen = Batches([deltas[:1], deltas[1:]])
    frames = await frames_of(gen, lambda e: native_event(e, "g"))
    assert frames == [
        native_event(deltas[0], "g"),
        native_event(deltas[1], "g") + native_event(deltas[2], "g"),
    ]


async def test_frames_sse_starlette_encodes_go_one_by_one() -> None:
    gen = Batches([[Delta("a", 1), Delta("b", 2)]])
    frames = await frames_of(gen, lambda e: {"data": e.text})
    assert frames == [{"data": "a"}, {"data": "b"}]
