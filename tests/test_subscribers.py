"""A generation's subscribers (chat/generation.py): each waits on a future of its own,
so that one leaving (a client that disconnects) ends nothing for the others and leaves
nothing behind."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from chatmem.chat.generation import Delta, Generation, TurnDone, TurnEvent
from chatmem.models import Message, Role, SessionMeta, Usage


def generation() -> Generation:
    none = cast(Any, None)  # the host, character, context: not used by subscribers
    return Generation(
        host=none,
        user_id="u",
        meta=SessionMeta("s", "u", "assistant"),
        character=none,
        user_message=Message(Role.USER, "hi"),
        context=none,
        params=none,
        lock_token="t",
        reply_id="r",
        generation_id="g",
        relay=True,
    )


async def follow(gen: Generation, seen: list[TurnEvent]) -> None:
    async for event in gen.events():
        seen.append(event)


async def test_a_subscriber_that_leaves_ends_nothing_for_the_others() -> None:
    gen = generation()
    stays: list[TurnEvent] = []
    leaves: list[TurnEvent] = []
    staying = asyncio.create_task(follow(gen, stays))
    leaving = asyncio.create_task(follow(gen, leaves))
    await asyncio.sleep(0)
    gen._add("one ")
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert len(gen._waiters) == 1  # the one that left took its future with it
    gen._add("two")
    await asyncio.sleep(0)
    done = TurnDone(Message(Role.ASSISTANT, "one two"), None, Usage())
    gen._settle(done)
    await asyncio.wait_for(staying, 1)
    assert [e.text for e in stays if isinstance(e, Delta)] == ["one ", "two"]
    assert stays[-1] is done
    assert [e.text for e in leaves if isinstance(e, Delta)] == ["one "]
    assert gen._waiters == []


async def test_every_waiting_subscriber_wakes_at_each_change() -> None:
    gen = generation()
    seen: list[list[TurnEvent]] = [[] for _ in range(3)]
    tasks = [asyncio.create_task(follow(gen, s)) for s in seen]
    await asyncio.sleep(0)
    assert len(gen._waiters) == 3
    for word in ("a", "b", "c"):
        gen._add(word)
        await asyncio.sleep(0)
    gen._settle(TurnDone(Message(Role.ASSISTANT, "abc"), None, Usage()))
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    for s in seen:
        assert "".join(e.text for e in s if isinstance(e, Delta)) == "abc"
        assert isinstance(s[-1], TurnDone)
