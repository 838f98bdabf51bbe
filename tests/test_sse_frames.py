"""Native SSE frames: encoded once as bytes (as sse-starlette would write them), and the
frames that are ready together written at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import orjson
import pytest
from sse_starlette import ServerSentEvent
from starlette.types import Message

from chatmem.api.sse.events import error_event, native_event
from chatmem.api.sse.response import FrameStream, subscribe
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


async def test_frames_are_sent_without_a_cancel_scope_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No send timeout is set, so a frame is one plain ASGI send (sse-starlette wraps
    each in `anyio.move_on_after(None)`, ~12 µs); a failed send still marks the stream
    interrupted, as sse-starlette's own does."""
    scopes = 0
    original = anyio.move_on_after

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal scopes
        scopes += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(anyio, "move_on_after", counting)
    frames = [native_event(Delta(str(i), i + 1), "g") for i in range(10)]

    async def body() -> AsyncIterator[bytes]:
        for f in frames:
            yield f

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    await FrameStream(body(), ping=0)({"type": "http", "method": "GET"}, receive, send)
    assert [m.get("body") for m in sent[1:-1]] == frames
    assert scopes == 0

    async def failing(message: Message) -> None:
        raise OSError("the client went away")

    stream = FrameStream(body(), ping=0)
    with pytest.raises(OSError):
        await stream._send_with_timeout(failing, {"type": "http.response.body"})
    assert stream._send_interrupted
