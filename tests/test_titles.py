"""A chat's title from its first user message (chat/titles.py), through the API."""

from __future__ import annotations

import httpx

from chatmem.chat.titles import MAX_TITLE_CHARS, is_placeholder, title_from_message

H = {"X-User-Id": "title-user"}


def test_title_is_the_first_line_made_short() -> None:
    assert title_from_message("  How do I  sort a list?\nIn Python.") == "How do I sort a list?"
    assert title_from_message("\n\n# Plan for **today**\n- a") == "Plan for today"
    assert title_from_message("> quoted question") == "quoted question"
    assert title_from_message("   \n  ") == ""
    long = "word " * 40
    title = title_from_message(long)
    assert len(title) <= MAX_TITLE_CHARS and title.endswith("word…")
    unbroken = "x" * 200
    assert title_from_message(unbroken) == "x" * (MAX_TITLE_CHARS - 1) + "…"


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
