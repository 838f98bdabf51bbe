"""The process's tick (chat/inflight.py) appends a relayed generation's deltas to its
event stream; a generation that ends while its append is still on the way waits for
it, so the stream holds every delta, in order, before its end entry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chatmem.store.conversations import AnyRedis
from chatmem.store.locks import Coordinator
from chatmem.store.streams import GenerationStreams, StreamDelta, StreamEnd
from tests.api_support import make_test_settings, new_session, running_app, sse_events
from tests.fake_openai import FakeOpenAI, Reply


async def test_the_end_waits_for_the_append_on_the_way(
    redis_url: str,
    redis_client: AnyRedis,
    fake: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Coordinator.tick
    slow_appends = 0

    async def slow_tick(self: Coordinator, items: Any) -> Any:
        nonlocal slow_appends
        if any(item.append is not None for item in items):
            slow_appends += 1
            await asyncio.sleep(0.3)  # the reply ends meanwhile
        return await original(self, items)

    monkeypatch.setattr(Coordinator, "tick", slow_tick)
    fake.script(Reply(text="one two three four five six", delay_s=0.03))
    settings = make_test_settings(redis_url, fake.base_url, tmp_path)
    async with running_app(settings) as (_, client):
        sid = await new_session(client)
        r = await client.post(
            f"/v1/sessions/{sid}/messages",
            json={"content": "hi", "stream": True},
            headers={"X-User-Id": "alice"},
        )
        assert sse_events(r.text)[-1].event == "done"
    assert slow_appends >= 1
    snap = await GenerationStreams(redis_client).snapshot("alice", sid)
    kinds = [type(entry) for _, entry in snap.entries]
    assert kinds[-1] is StreamEnd and kinds.count(StreamEnd) == 1
    offsets = [entry.offset for _, entry in snap.entries if isinstance(entry, StreamDelta)]
    assert offsets == sorted(offsets)
    assert snap.text() == "one two three four five six"


async def test_stop_polls_are_counted_from_each_generation_s_start(
    redis_url: str,
    redis_client: AnyRedis,
    fake: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not all at once: 1 000 polls in one pipeline every 0.3 s stalled the loop."""
    original = Coordinator.tick
    polled: list[set[str]] = []

    async def spy(self: Coordinator, items: Any) -> Any:
        polled.append({item.session_id for item in items if item.poll})
        return await original(self, items)

    monkeypatch.setattr(Coordinator, "tick", spy)
    fake.reset(default=Reply(text="word " * 40, delay_s=0.03))
    settings = make_test_settings(redis_url, fake.base_url, tmp_path)
    async with running_app(settings) as (_, client):
        a, b = await new_session(client), await new_session(client)

        async def stream(sid: str) -> None:
            r = await client.post(
                f"/v1/sessions/{sid}/messages",
                json={"content": "hi", "stream": True},
                headers={"X-User-Id": "alice"},
            )
            assert sse_events(r.text)[-1].event == "done"

        first = asyncio.create_task(stream(a))
        await asyncio.sleep(0.15)  # half a poll period later
        await stream(b)
        await first
    assert any(a in p for p in polled) and any(b in p for p in polled)
    assert not any(a in p and b in p for p in polled)
