"""Real OpenAI clients against a real uvicorn, each sending its whole conversation every
turn (SPEC §4): the model receives each message once and nothing is stored twice; a
retry after a 503 leaves one user message; a re-sent request is a regenerate (two
alternatives); an edit of an earlier message forks the session."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.api_support import openai_client, sessions_of, stored_messages
from tests.fake_openai import FakeOpenAI, Reply


@pytest.mark.parametrize("stream", [False, True])
def test_sync_sdk_whole_conversation_each_turn(
    base_url: str, fake: FakeOpenAI, user: str, stream: bool
) -> None:
    client = openai_client(base_url, user, "conv")
    fake.script(Reply(text="Hi Ada."), Reply(text="You are Ada."))
    convo: list[Any] = [{"role": "user", "content": "I am Ada"}]
    for reply_no in range(2):
        if stream:
            chunks = client.chat.completions.create(model="m", messages=convo, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            done = client.chat.completions.create(model="m", messages=convo)
            text = done.choices[0].message.content or ""
        convo.append({"role": "assistant", "content": text})
        if reply_no == 0:
            convo.append({"role": "user", "content": "who am I?"})
    # (the session's greeting comes first: the server keeps it)
    sent = [m["content"] for m in fake.chat_bodies[-1]["messages"] if m["role"] != "system"]
    assert sent[-3:] == ["I am Ada", "Hi Ada.", "who am I?"]
    assert len(sent) == len(set(sent))
    stored = [m["content"] for m in stored_messages(base_url, user, "conv")]
    assert stored == ["I am Ada", "Hi Ada.", "who am I?", "You are Ada."]
    # Agreeing histories are appended to: no fork, no rewrite (the ids stay).
    assert [s["session_id"] for s in sessions_of(base_url, user)] == ["conv"]


async def test_async_sdk_retry_after_503_stores_one_user_message(
    base_url: str, fake: FakeOpenAI, user: str
) -> None:
    """The SDK's default retries re-send the request after the model's 503: the user
    message is answered, not stored again (it was stored three times before)."""
    fake.script(Reply(status=503), Reply(status=503), Reply(text="Third time lucky."))
    async with AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key="open-mode",
        default_headers={"X-User-Id": user, "X-Session-Id": "retry"},
        timeout=30,
    ) as client:
        client = client.with_options(max_retries=2)
        # The SDK waits between retries; keep it short.
        done = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello?"}]
        )
    assert done.choices[0].message.content == "Third time lucky."
    assert len(fake.chat_bodies) == 3
    stored = [(m["role"], m["content"]) for m in stored_messages(base_url, user, "retry")]
    assert stored == [("user", "hello?"), ("assistant", "Third time lucky.")]


def test_resent_request_is_a_regenerate(base_url: str, fake: FakeOpenAI, user: str) -> None:
    client = openai_client(base_url, user, "regen")
    fake.script(Reply(text="First."), Reply(text="Second."))
    convo: list[Any] = [{"role": "user", "content": "tell me"}]
    client.chat.completions.create(model="m", messages=convo)
    again = client.chat.completions.create(model="m", messages=convo)
    assert again.choices[0].message.content == "Second."
    stored = stored_messages(base_url, user, "regen")
    assert [m["content"] for m in stored] == ["tell me", "Second."]
    assert (stored[-1]["alternatives"], stored[-1]["selected"]) == (2, 1)
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"]].count("tell me") == 1


def test_edit_of_an_earlier_message_forks(base_url: str, fake: FakeOpenAI, user: str) -> None:
    client = openai_client(base_url, user, "edit")
    fake.script(Reply(text="A1"), Reply(text="A2"), Reply(text="A3"))
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Q1"}])
    client.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
    )
    # The user edits Q1 in their client and sends from there.
    client.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "Q1 edited"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
    )
    sent = [m["content"] for m in fake.chat_bodies[-1]["messages"] if m["role"] != "system"]
    assert sent[-3:] == ["Q1 edited", "A1", "Q2"] and "Q1" not in sent
    now = [m["content"] for m in stored_messages(base_url, user, "edit")]
    assert now == ["Q1 edited", "A1", "Q2", "A3"]
    [fork] = [s for s in sessions_of(base_url, user) if s["forked_from"] == "edit"]
    old = [m["content"] for m in stored_messages(base_url, user, fork["session_id"])]
    assert old == ["Q1", "A1", "Q2", "A2"]


def test_the_sdk_sees_openai_errors(base_url: str, fake: FakeOpenAI, user: str) -> None:
    client = openai_client(base_url, user, "err")
    fake.script(Reply(status=503))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def _chat(base_url: str, user: str, sid: str | None = None) -> Any:
    from langchain_openai import ChatOpenAI

    headers = {"X-User-Id": user} | ({"X-Session-Id": sid} if sid else {})
    return ChatOpenAI(
        base_url=f"{base_url}/v1",
        api_key="open-mode",  # type: ignore[arg-type]
        model="assistant",
        default_headers=headers,
        max_retries=0,
        timeout=30,
    )


def test_langchain_batch_without_a_session_does_not_leak(
    base_url: str, fake: FakeOpenAI, user: str
) -> None:
    """The issue's case: a `batch()` of four independent prompts, no session — each call
    sends its own prompt only (the model used to see the other three)."""
    prompts = ["alpha?", "bravo?", "charlie?", "delta?"]
    replies = _chat(base_url, user).batch(prompts)
    assert [r.content for r in replies] == [fake.default.text] * 4
    sent = sorted(tuple(m["content"] for m in body["messages"]) for body in fake.chat_bodies)
    assert sent == [(p,) for p in prompts]
    assert sessions_of(base_url, user) == []


def test_langchain_invoke_and_stream_in_a_session(
    base_url: str, fake: FakeOpenAI, user: str
) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    chat = _chat(base_url, user, "lc")
    fake.script(Reply(text="Hello Bo."), Reply(text="You are Bo, still."))
    history: list[Any] = [SystemMessage("Answer in one line."), HumanMessage("I am Bo")]
    first = chat.invoke(history)
    history += [AIMessage(str(first.content)), HumanMessage("who am I?")]
    text = "".join(str(chunk.content) for chunk in chat.stream(history))
    assert text == "You are Bo, still."
    sent = fake.chat_bodies[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "Answer in one line."}
    assert [m["content"] for m in sent[1:]][-3:] == ["I am Bo", "Hello Bo.", "who am I?"]
    stored = [m["content"] for m in stored_messages(base_url, user, "lc")]
    assert stored == ["I am Bo", "Hello Bo.", "who am I?", "You are Bo, still."]


def test_parameters_are_passed_on(base_url: str, fake: FakeOpenAI, user: str) -> None:
    client = openai_client(base_url, user, "params")
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "json please"}],
        temperature=0.3,
        top_p=0.9,
        max_completion_tokens=77,
        stop=["END", "STOP"],
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format={"type": "json_object"},
    )
    body = fake.chat_bodies[-1]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.3, 0.9, 77)
    assert (body["stop"], body["seed"]) == (["END", "STOP"], 42)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -0.5)
    assert body["response_format"] == {"type": "json_object"}
    # Stateless too, and a single stop string is a stop string.
    stateless = OpenAI(base_url=f"{base_url}/v1", api_key="k", default_headers={"X-User-Id": user})
    stateless.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stop="a long stop string"
    )
    assert fake.chat_bodies[-1]["stop"] == "a long stop string"
