"""The rolling summary end to end (SPEC §2b): eviction → job → summary stored → the next
turn's context shows it; trimming waits for it; edits of covered messages rebuild it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.context import SUMMARY_HEADING
from chatmem.store import keys
from chatmem.store.client import AnyRedis
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI
from tests.memory_model import MemoryModel
from tests.support import eventually

H = {"X-User-Id": "sum-user"}
FAST_JOBS = {"enabled": True, "housekeeping_ms": 30, "poll_block_ms": 30, "backoff_base_ms": 30}


@pytest.fixture
def model(fake: FakeOpenAI) -> MemoryModel:
    m = MemoryModel()
    fake.respond = m
    return m


@asynccontextmanager
async def app_client(
    redis_url: str, fake: FakeOpenAI, data_dir: Path, **memory: Any
) -> AsyncIterator[httpx.AsyncClient]:
    mem = {"summary_batch_rounds": 1, "extract_every_rounds": 50} | memory
    settings = make_test_settings(redis_url, fake.base_url, data_dir, memory=mem, jobs=FAST_JOBS)
    async with running_app(settings) as (_, http):
        yield http


@pytest.fixture
async def client(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, model: MemoryModel, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(redis_url, fake, tmp_data_dir) as http:
        yield http


async def session(client: httpx.AsyncClient, window: int = 1) -> str:
    body = {"character_id": "luna", "window_size": window}
    r = await client.post("/v1/sessions", json=body, headers=H)
    assert r.status_code == 201, r.text
    return str(r.json()["session"]["session_id"])


async def say(client: httpx.AsyncClient, sid: str, text: str) -> dict[str, Any]:
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=H)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def context(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.get(f"/v1/sessions/{sid}/context", headers=H)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def messages(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/sessions/{sid}/messages?limit=200", headers=H)
    return list(r.json()["messages"])


async def summary_through(client: httpx.AsyncClient, sid: str, msg_id: str) -> dict[str, Any]:
    async def covered() -> dict[str, Any] | None:
        s = (await context(client, sid))["memory"]["summary"]
        return s if s and s["through_msg_id"] == msg_id and not s["stale"] else None

    return await eventually(covered, f"the summary to cover up to {msg_id}")


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_summary_appears_after_eviction_and_covers_exactly_what_left(
    client: httpx.AsyncClient, model: MemoryModel
) -> None:
    sid = await session(client)
    await say(client, sid, "My sister is called Mei.")
    await say(client, sid, "I live in Porto.")
    assert (await context(client, sid))["memory"]["summary"]["covers_messages"] == 0
    await say(client, sid, "I prefer tea to coffee.")
    # The window is one round: when the job runs, all but the last round left the context.
    msgs = await messages(client, sid)
    left = msgs[4]  # greeting, "My sister…", reply, "I live in Porto.", reply
    summary = await summary_through(client, sid, left["msg_id"])
    assert summary["through_seq"] == left["seq"] and summary["covers_messages"] == 5
    assert "My sister is called Mei." in summary["text"] and "Porto" in summary["text"]
    assert "tea" not in summary["text"]  # still in the window
    assert summary["tokens"] > 0

    ctx = await context(client, sid)
    roles = [m["role"] for m in ctx["messages"]]
    assert roles[0] == "system" and ctx["messages"][0]["content"].startswith("You are Luna")
    assert ctx["messages"][1]["content"].startswith(SUMMARY_HEADING)
    assert ctx["tokens"]["summary"] > 0 and ctx["memory"]["summary_in_context"]
    assert ctx["tokens"]["total"] <= ctx["tokens"]["budget"]

    # The next turn sends it: system prompt, summary, window, new message.
    await say(client, sid, "What is my sister's name?")
    sent = model.chat_bodies()[-1]["messages"]
    assert sent[1]["role"] == "system" and "My sister is called Mei." in sent[1]["content"]
    assert all("My sister" not in m["content"] for m in sent[2:])


async def test_no_summary_for_a_session_whose_character_has_it_off(
    client: httpx.AsyncClient, model: MemoryModel
) -> None:
    character = {"id": "forgetful", "name": "Forgetful", "system_prompt": "Short answers."}
    character["memory"] = {"summary": False, "memories": False}  # type: ignore[assignment]
    r = await client.post("/v1/characters", json=character, headers=H)
    assert r.status_code == 201, r.text
    body = {"character_id": "forgetful", "window_size": 1}
    sid = (await client.post("/v1/sessions", json=body, headers=H)).json()["session"]["session_id"]
    for text in ("one", "two", "three", "four"):
        await say(client, sid, text)
    ctx = await context(client, sid)
    assert ctx["memory"]["summary"] is None
    assert ctx["memory"]["policy"] == {"summary": False, "memories": False}
    assert model.calls["summary"] == 0 and model.calls["extract"] == 0


async def test_trimming_waits_for_the_summary_up_to_the_hard_cap(
    redis_url: str,
    redis_client: AnyRedis,
    fake: FakeOpenAI,
    model: MemoryModel,
    tmp_data_dir: Path,
) -> None:
    model.summary_status = 500  # summaries fail (and are retried) until told otherwise
    async with app_client(redis_url, fake, tmp_data_dir, max_messages=4) as client:
        sid = await session(client)
        for n in range(5):
            await say(client, sid, f"fact number {n}")
        meta = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
        # 11 messages (greeting + 5 rounds): none covered, so none trimmed below the
        # hard cap of 2 × max_messages.
        assert meta["stored_messages"] == keys.SUMMARY_HARD_CAP_FACTOR * 4
        await eventually(lambda: model.calls["summary"] >= 1, "a summary asked (and failed)")
        model.summary_status = 200
        stored = await eventually(
            lambda: _summary_text(client, sid), "the summary once the model is back"
        )

        # The three trimmed uncovered (11 - 8) are counted and logged when a summary pass
        # that finds them is stored. Regression: the count was sometimes 2. The summary
        # state was started after the first turn, by a task racing the next turns: a
        # turn that came first trimmed the oldest message as a plain window trim,
        # uncounted. The first reply's write starts it now (FINISH_TURN).
        async def trims() -> float:
            text = (await client.get("/metrics")).text
            return metric(text, "chatmem_summary_uncovered_trims_total")

        await eventually(trims, "the uncovered trims counted")
        assert await trims() == 3
        assert "fact number 0" not in stored  # it was trimmed before any summary existed
        assert "fact number 1" in stored
        # Now covered, the trim takes the covered ones at the next append.
        await say(client, sid, "fact number 5")
        meta = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
        assert meta["stored_messages"] <= keys.SUMMARY_HARD_CAP_FACTOR * 4


async def _summary_text(client: httpx.AsyncClient, sid: str) -> str:
    s = (await context(client, sid))["memory"]["summary"]
    return str(s["text"]) if s and s["covers_messages"] else ""


@pytest.mark.parametrize("change", ["edit", "delete"])
async def test_editing_a_covered_message_marks_the_summary_stale_and_it_is_rebuilt(
    client: httpx.AsyncClient, model: MemoryModel, change: str
) -> None:
    sid = await session(client)
    await say(client, sid, "My cat is called Tom.")
    await say(client, sid, "I work as a nurse.")
    await say(client, sid, "I like jazz.")
    msgs = await messages(client, sid)
    await summary_through(client, sid, msgs[4]["msg_id"])
    cat = msgs[1]
    url = f"/v1/sessions/{sid}/messages/{cat['msg_id']}"
    if change == "edit":
        r = await client.patch(url, json={"content": "My dog is called Rex."}, headers=H)
        assert r.status_code == 200, r.text
    else:
        assert (await client.delete(url, headers=H)).status_code == 204
    assert (await context(client, sid))["memory"]["summary"]["stale"] is True

    await say(client, sid, "Anything else?")

    async def rebuilt() -> str:
        s = (await context(client, sid))["memory"]["summary"]
        return "" if s["stale"] else str(s["text"])

    text = await eventually(rebuilt, "the stale summary to be rebuilt")
    assert "Tom" not in text
    if change == "edit":
        assert "My dog is called Rex." in text


async def test_turns_that_come_while_the_job_runs_are_folded_by_it(
    client: httpx.AsyncClient, model: MemoryModel
) -> None:
    """Regression: one summary job per session at a time, so the turns during a slow
    summary queued none; the job stopped at what it had read, and at round 40 of the
    bench the summary still ended at round 4. It now reads again until nothing is left."""
    model.summary_delay_s = 0.3
    sid = await session(client)
    for n in range(8):
        await say(client, sid, f"fact {n}")
    msgs = await messages(client, sid)
    summary = await summary_through(client, sid, msgs[-3]["msg_id"])  # all but the window
    assert "fact 6" in summary["text"] and "fact 7" not in summary["text"]
