"""Admission of turn starts (chat/inflight.py): at most `limits.starts_in_flight` turns
start at once per process; the others wait in line — none refused, none timed out — so
that a burst of starts cannot starve the streams already running. A session's own wait
(one turn at a time, 409 after `session_lock_wait_ms`) is unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from chatmem.chat.inflight import InFlight
from chatmem.errors import SessionBusy
from chatmem.store.conversations import AnyRedis
from chatmem.store.turns import TurnStore
from tests.api_support import make_test_settings, new_session, running_app, sse_events
from tests.fake_openai import FakeOpenAI, Reply


class Healthy:
    def is_down(self, user_id: str) -> bool:
        return False

    def mark_down(self, exc: BaseException, user_id: str | None = None) -> None:
        raise AssertionError("not here")


def inflight(starts: int, lock_wait_ms: int = 1500) -> InFlight:
    # Reservations use no Redis: the coordinator is only for running generations.
    return InFlight(cast(Any, None), Healthy(), lock_wait_ms=lock_wait_ms, starts=starts)


async def test_starts_beyond_the_bound_wait_in_line_and_none_is_refused() -> None:
    flight = inflight(starts=2, lock_wait_ms=50)
    entered: list[str] = []
    release = asyncio.Event()

    async def start(name: str) -> None:
        async with flight.reserve(("u", name)):
            entered.append(name)
            await release.wait()

    tasks = [asyncio.create_task(start(n)) for n in ("a", "b", "c", "d")]
    await asyncio.sleep(0.2)  # 4× lock_wait_ms: a wait in line is not a busy session
    assert entered == ["a", "b"]
    assert flight.starts_waiting == 2
    release.set()
    await asyncio.gather(*tasks)
    assert entered == ["a", "b", "c", "d"]  # in order, all of them
    assert flight.starts_waiting == 0


async def test_a_start_that_gives_up_waiting_leaves_no_place_taken() -> None:
    flight = inflight(starts=1)
    release = asyncio.Event()

    async def start(name: str) -> None:
        async with flight.reserve(("u", name)):
            await release.wait()

    first = asyncio.create_task(start("a"))
    gone = asyncio.create_task(start("b"))  # a client that goes away while waiting
    await asyncio.sleep(0.05)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert flight.starts_waiting == 0
    assert flight.local(("u", "b")) is None and ("u", "b") not in flight._slots
    release.set()
    await first
    async with asyncio.timeout(1):  # the one place is free again
        async with flight.reserve(("u", "c")):
            pass


async def test_a_busy_session_is_still_refused_after_lock_wait_ms() -> None:
    flight = inflight(starts=4, lock_wait_ms=50)
    async with flight.reserve(("u", "s")):
        with pytest.raises(SessionBusy):
            async with flight.reserve(("u", "s")):
                pass


async def test_zero_means_no_bound() -> None:
    flight = inflight(starts=0)
    release = asyncio.Event()
    entered = 0

    async def start(name: str) -> None:
        nonlocal entered
        async with flight.reserve(("u", name)):
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(start(str(i))) for i in range(50)]
    await asyncio.sleep(0.05)
    assert entered == 50
    release.set()
    await asyncio.gather(*tasks)


class ConcurrentBegins:
    """How many begin round trips run at once, at most."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = self.most = 0
        original = TurnStore.begin

        async def begin(store: TurnStore, *args: Any, **kwargs: Any) -> Any:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await asyncio.sleep(0.1)  # a slow Redis: starts overlap if they may
                return await original(store, *args, **kwargs)
            finally:
                self.now -= 1

        monkeypatch.setattr(TurnStore, "begin", begin)


@pytest.mark.fake_model(default=Reply(text="one two three four", chunks=4, delay_s=0.02))
@pytest.mark.parametrize(("starts", "most"), [(1, 1), (3, 3), (0, None)])
async def test_streamed_turns_start_within_the_bound_and_all_finish(
    starts: int,
    most: int | None,
    redis_url: str,
    redis_client: AnyRedis,
    fake: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_test_settings(
        redis_url, fake.base_url, tmp_path, limits={"starts_in_flight": starts}
    )
    begins = ConcurrentBegins(monkeypatch)
    async with running_app(settings) as (_, client):
        users = [f"user-{i}" for i in range(8)]
        sids = [await new_session(client, user) for user in users]

        async def stream(user: str, sid: str) -> list[str]:
            r = await client.post(
                f"/v1/sessions/{sid}/messages",
                json={"content": "hi", "stream": True},
                headers={"X-User-Id": user},
            )
            assert r.status_code == 200, r.text
            events = sse_events(r.text)
            assert events[-1].event == "done" and events[-1].data["memory"] == "ok"
            return [e.data["content"] for e in events if e.event == "delta"]

        replies = await asyncio.gather(*(stream(u, s) for u, s in zip(users, sids, strict=True)))
    assert all("".join(reply) == "one two three four" for reply in replies)
    if most is not None:
        assert begins.most == most
    else:  # unbounded: as many at once as got there within the slow begin (all 8, unloaded)
        assert begins.most > 3


def test_the_default_bounds_starts() -> None:
    settings = make_test_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:1/v1", Path("."))
    assert settings.limits.starts_in_flight == 16


@pytest.mark.fake_model(default=Reply(text="one two", chunks=2))
@pytest.mark.parametrize("starts", [1, 0])
async def test_finishes_are_bounded_alike(
    starts: int,
    redis_url: str,
    redis_client: AnyRedis,
    fake: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streams that end together store their replies a bounded number at a time (their
    deltas are all out: only their final events wait)."""
    from chatmem.chat.turns import Turns

    now = most = 0
    original = Turns.persist

    async def persist(turns: Turns, *args: Any, **kwargs: Any) -> Any:
        nonlocal now, most
        now += 1
        most = max(most, now)
        try:
            await asyncio.sleep(0.1)
            return await original(turns, *args, **kwargs)
        finally:
            now -= 1

    monkeypatch.setattr(Turns, "persist", persist)
    settings = make_test_settings(
        redis_url, fake.base_url, tmp_path, limits={"starts_in_flight": starts}
    )
    async with running_app(settings) as (_, client):
        users = [f"user-{i}" for i in range(6)]
        sids = [await new_session(client, user) for user in users]

        async def stream(user: str, sid: str) -> None:
            r = await client.post(
                f"/v1/sessions/{sid}/messages",
                json={"content": "hi", "stream": True},
                headers={"X-User-Id": user},
            )
            assert sse_events(r.text)[-1].event == "done"

        await asyncio.gather(*(stream(u, s) for u, s in zip(users, sids, strict=True)))
    assert most == 1 if starts == 1 else most > 2
