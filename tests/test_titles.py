"""A chat's title from its first user message, then from the model (chat/titles.py),
through the API; a title the user set is never replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chatmem.chat.titles import (
    MAX_TITLE_CHARS,
    TITLE_JOB,
    clean_title,
    is_placeholder,
    title_from_message,
)
from chatmem.memory_prompts import PROMPTS_VERSION
from chatmem.store import keys
from chatmem.store.client import AnyRedis
from chatmem.store.jobs import Job
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.memory_model import MemoryModel, kind_of
from tests.support import eventually
from tests.test_memory_summary import FAST_JOBS

H = {"X-User-Id": "title-user"}


def test_title_is_the_first_line_made_short() -> None:
    assert title_from_message("  How do I  sort a list?\nIn Python.") == "How do I sort a list?"
    assert title_from_message("\n\n# Plan for **today**\n- a") == "Plan for today"
    assert title_from_message("> quoted question") == "quoted question"
    assert title_from_message("   \n  ") == ""
    # Control and format characters never reach a title (a terminal's ESC, U+202E).
    assert title_from_message("a\x00b\x1b[31mred \u202eevil") == "a b [31mred evil"
    assert clean_title("Title: \u202eSorting\x1b lists", "Luna") == "Sorting lists"
    long = "word " * 40
    title = title_from_message(long)
    assert len(title) <= MAX_TITLE_CHARS and title.endswith("word…")
    unbroken = "x" * 200
    assert title_from_message(unbroken) == "x" * (MAX_TITLE_CHARS - 1) + "…"


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ('"Kyoto weekend plans."', "Kyoto weekend plans"),
        ("Title: **Kyoto** trip 🌸\nHope this helps!", "Kyoto trip"),
        ("Luna: Hey, it's Luna! How's your day going? I'm all ears", "Hey, it's Luna"),
        ("Assistant: Title: “Sorting lists”", "Sorting lists"),
        (
            "## 👋 Plans for the weekend in Kyoto with friends and family",
            "Plans for the weekend in Kyoto with friends",
        ),
        ("\n\n  - Python: sorting lists\n", "Python: sorting lists"),  # not a speaker
        ("Dr. Who fan chat", "Dr. Who fan chat"),  # an abbreviation ends no sentence
        ("计划京都旅行。", "计划京都旅行"),
        ("x" * 200, "x" * MAX_TITLE_CHARS),
        ("🌸✨🎉", ""),
        ("Luna", ""),
        ("Luna: “Luna”", ""),
        # The model echoes its prompt's "Chat:" (seen with SmolLM2 on the screenshots).
        ("Chat", ""),
        ("Chat: Kitten names", "Kitten names"),
        ("New chat.", ""),
        ("  \n ", ""),
    ],
)
def test_a_generated_title_is_cleaned(raw: str, title: str) -> None:
    """Regression: the embedded 135M model titled chats "Luna: Hey, it's Luna! How's
    your day going? I'm all ears" (a speaker's prefix, three sentences, no topic)."""
    assert clean_title(raw, "Luna") == title


def test_a_long_generated_title_is_cut_at_a_word() -> None:
    title = clean_title("a bb ccc dddd eeeee ffffff ggggggg hhhhhhhh iiiiiiiii", "Luna")
    assert title == "a bb ccc dddd eeeee ffffff ggggggg hhhhhhhh"  # 8 words
    long_words = " ".join(["abcdefghijklmnopq"] * 6)
    assert clean_title(long_words, "Luna") == " ".join(["abcdefghijklmnopq"] * 3)


def test_only_the_placeholder_before_the_first_message_is_replaced() -> None:
    assert is_placeholder("Luna", "Luna", 2)  # greeting + first message
    assert is_placeholder("Luna", "Luna", 1)  # no greeting
    assert not is_placeholder("Luna", "Luna", 3)
    assert not is_placeholder("My chat", "Luna", 2)


async def test_first_message_titles_the_chat_and_a_given_title_stays(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/sessions", json={"character_id": "luna"}, headers=H)
    sid = r.json()["session"]["session_id"]
    assert r.json()["session"]["title"] == "Luna"
    await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "Plan a trip to Kyoto"}, headers=H
    )
    assert (await client.get(f"/v1/sessions/{sid}", headers=H)).json()[
        "title"
    ] == "Plan a trip to Kyoto"
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "Something else"}, headers=H)
    assert (await client.get(f"/v1/sessions/{sid}", headers=H)).json()[
        "title"
    ] == "Plan a trip to Kyoto"

    body = {"character_id": "luna", "title": "Named by me"}
    sid2 = (await client.post("/v1/sessions", json=body, headers=H)).json()["session"]["session_id"]
    await client.post(f"/v1/sessions/{sid2}/messages", json={"content": "Hello"}, headers=H)
    assert (await client.get(f"/v1/sessions/{sid2}", headers=H)).json()["title"] == "Named by me"


@pytest.fixture
async def jobs_client(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryModel]]:
    model = MemoryModel(title='"Kyoto weekend plans."')
    fake.respond = model
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir, jobs=FAST_JOBS)
    async with running_app(settings) as (_, http):
        yield http, model


async def title_of(client: httpx.AsyncClient, sid: str) -> str:
    return str((await client.get(f"/v1/sessions/{sid}", headers=H)).json()["title"])


async def test_the_model_titles_the_chat_after_the_first_exchange(
    jobs_client: tuple[httpx.AsyncClient, MemoryModel],
) -> None:
    client, model = jobs_client
    r = await client.post("/v1/sessions", json={"character_id": "luna"}, headers=H)
    sid = r.json()["session"]["session_id"]
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "Plan Kyoto"}, headers=H)
    await eventually(
        lambda: _is(client, sid, "Kyoto weekend plans"), "the generated title (unquoted)"
    )
    title_request = next(b for b in model.bodies if kind_of(b) == "title")
    asked = title_request["messages"][-1]["content"]
    assert "Plan Kyoto" in asked and "Noted." in asked  # the first exchange
    assert "Hey, it's Luna!" not in asked  # not the greeting
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "More"}, headers=H)
    assert model.calls["title"] == 1  # after the first exchange only


async def test_a_chatty_generated_title_is_cleaned_or_dropped(
    jobs_client: tuple[httpx.AsyncClient, MemoryModel], caplog: pytest.LogCaptureFixture
) -> None:
    client, model = jobs_client
    model.title = "Luna: 🌸 **Kyoto weekend plans!** Hope you like it!\nMore text"
    r = await client.post("/v1/sessions", json={"character_id": "luna"}, headers=H)
    sid = r.json()["session"]["session_id"]
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "Plan Kyoto"}, headers=H)
    await eventually(lambda: _is(client, sid, "Kyoto weekend plans"), "the cleaned title")
    # Nothing usable (emoji only): the first message stays the title, counted.
    model.title = "🌸✨"
    r = await client.post("/v1/sessions", json={"character_id": "luna"}, headers=H)
    sid2 = r.json()["session"]["session_id"]
    await client.post(f"/v1/sessions/{sid2}/messages", json={"content": "Plan Nara"}, headers=H)
    await eventually(lambda: _done(client), "both title jobs done")
    assert await title_of(client, sid2) == "Plan Nara"
    metrics = (await client.get("/metrics")).text
    assert 'chatmem_memory_invalid_output_total{kind="title"} 1.0' in metrics
    (dropped,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert sid2 in dropped and f"(prompts v{PROMPTS_VERSION})" in dropped  # which wording


async def test_the_first_message_titles_the_chat_when_the_model_gives_nothing_usable(
    jobs_client: tuple[httpx.AsyncClient, MemoryModel], redis_client: AnyRedis
) -> None:
    """The placeholder is still the title when the job runs (the first message's title
    was not stored: Redis was down then); a title the model spoils does not keep it."""
    client, model = jobs_client
    model.title = "Luna: 👋"
    model.chat = Reply(text="Noted.", headers_delay_s=0.5)
    r = await client.post("/v1/sessions", json={"character_id": "luna"}, headers=H)
    sid = r.json()["session"]["session_id"]
    body = {"content": "**Plan** Nara"}
    turn = asyncio.create_task(client.post(f"/v1/sessions/{sid}/messages", json=body, headers=H))
    await eventually(lambda: _is(client, sid, "Plan Nara"), "the first message's title")
    await redis_client.hset(keys.session_meta_key(H["X-User-Id"], sid), "title", "Luna")
    await turn
    await eventually(lambda: model.calls["title"] == 1 and _is(client, sid, "Plan Nara"), "it")


async def test_the_title_job_titles_from_the_first_exchange_after_more_turns(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    """Regression: the job read the newest four messages; when the next turn came before
    it ran, it took the second message for the first, found the title was not that
    one's and left it as if the user had named the chat."""
    model = MemoryModel(title="Kyoto weekend plans")
    fake.respond = model
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir)  # no worker
    async with running_app(settings) as (app, client):
        r = await client.post("/v1/sessions", json={"character_id": "luna"}, headers=H)
        sid = r.json()["session"]["session_id"]
        for text in ("Plan Kyoto", "In April", "With friends"):
            await client.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=H)
        titles = app.state.parts.service.background.titles
        await titles.run(Job(TITLE_JOB, {"user_id": H["X-User-Id"], "session_id": sid}))
        assert await title_of(client, sid) == "Kyoto weekend plans"
        asked = next(b for b in model.bodies if kind_of(b) == "title")["messages"][-1]
        assert "Plan Kyoto" in asked["content"] and "In April" not in asked["content"]


async def _is(client: httpx.AsyncClient, sid: str, title: str) -> bool:
    return await title_of(client, sid) == title


async def test_a_title_the_user_set_is_never_replaced(
    jobs_client: tuple[httpx.AsyncClient, MemoryModel],
) -> None:
    client, model = jobs_client
    body = {"character_id": "luna", "title": "Named by me"}
    sid = (await client.post("/v1/sessions", json=body, headers=H)).json()["session"]["session_id"]
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "Hello"}, headers=H)
    # Renamed while the model writes one: the rename wins (compare and swap).
    model.title_delay_s = 0.5
    sid2 = (await client.post("/v1/sessions", json={"character_id": "luna"}, headers=H)).json()[
        "session"
    ]["session_id"]
    await client.post(f"/v1/sessions/{sid2}/messages", json={"content": "Hello"}, headers=H)
    await eventually(lambda: model.calls["title"] >= 1, "the title job under way")
    r = await client.patch(f"/v1/sessions/{sid2}", json={"title": "Mine"}, headers=H)
    assert r.status_code == 200
    await eventually(lambda: model.calls["title"] == 1 and _done(client), "the title job done")
    assert await title_of(client, sid) == "Named by me"
    assert await title_of(client, sid2) == "Mine"


async def _done(client: httpx.AsyncClient) -> bool:
    """Both sessions' title jobs are done (the first one's found the user's title)."""
    text = (await client.get("/metrics")).text
    return 'chatmem_jobs_done_total{kind="title"} 2.0' in text
