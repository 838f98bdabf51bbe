"""The OpenAI-compatible endpoint through the official `openai` SDK, against a real uvicorn.

The fake OpenAI-compatible server plays the model and records what chatmem sent it, so
each test can check that the server, not the client, supplied the history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from chatmem.api.routes.openai.shapes import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessageIn,
    ChunkShaper,
    completion,
    error_body,
    new_message,
)
from chatmem.characters import load_builtins
from chatmem.chat.service import TurnDone
from chatmem.errors import InvalidInput, ProviderUnavailable
from chatmem.models import Message, Role, Usage
from tests.api_support import make_test_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer

# Every test takes `fake` (reset), even one that never looks at it.
pytestmark = pytest.mark.usefixtures("fake")

ADMIN_KEY = "sk-admin-key-0123456789"
BOB_KEY = "sk-bob-key-0123456789"
BUILTINS = {ch.id: ch for ch in load_builtins()}


@pytest.fixture(scope="module")
def auth_base_url(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    settings = make_test_settings(
        redis_url,
        fake_model.base_url,
        tmp_path_factory.mktemp("data"),
        auth_keys=f"{ADMIN_KEY}=root:admin,{BOB_KEY}=bob",
    )
    with LiveServer(settings) as server:
        yield server.url


@pytest.fixture
async def client(base_url: str, user: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key="not-needed-in-open-mode",
        default_headers={"X-User-Id": user},
        max_retries=0,
        timeout=30,
    ) as c:
        yield c


@pytest.fixture
async def raw(base_url: str, user: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers={"X-User-Id": user}, timeout=30) as c:
        yield c


def session_header(sid: str) -> dict[str, str]:
    return {"X-Session-Id": sid}


def sent_messages(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """The messages of the last request chatmem made to the model."""
    messages: list[dict[str, Any]] = fake.chat_bodies[-1]["messages"]
    return messages


def user_msg(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant_msg(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# --- non-streamed ------------------------------------------------------------------------


async def test_two_turns_server_supplies_the_history(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="Nice to meet you, Ada."), Reply(text="Your name is Ada."))
    sid = "sdk-plain"
    first = await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("My name is Ada.")],
        extra_headers=session_header(sid),
    )
    assert first.object == "chat.completion"
    assert first.id.startswith("chatcmpl-")
    assert first.model == "assistant"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content == "Nice to meet you, Ada."
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None and first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens

    second = await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("What is my name?")],
        extra_headers=session_header(sid),
    )
    assert second.choices[0].message.content == "Your name is Ada."
    assistant = BUILTINS["assistant"]
    assert sent_messages(fake) == [
        {"role": "system", "content": assistant.system_prompt},
        assistant_msg(assistant.greeting),
        user_msg("My name is Ada."),
        assistant_msg("Nice to meet you, Ada."),
        user_msg("What is my name?"),
    ]
    assert first.id != second.id


async def test_a_resent_conversation_is_sent_once_with_the_clients_system_prompt(
    client: AsyncOpenAI, fake: FakeOpenAI
) -> None:
    """A client that resends its whole conversation stores and sends nothing twice: only
    its last message is new; its system message is that turn's system prompt."""
    await client.chat.completions.create(
        model="teacher",
        messages=[user_msg("Hello")],
        extra_headers=session_header("resend"),
    )
    await client.chat.completions.create(
        model="teacher",
        messages=[
            {"role": "system", "content": "You are a pirate."},
            user_msg("Hello"),
            assistant_msg(fake.default.text),
            user_msg("Again"),
        ],
        extra_headers=session_header("resend"),
    )
    sent = sent_messages(fake)
    assert [m["content"] for m in sent if m["role"] == "system"] == ["You are a pirate."]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["Hello", "Again"]


async def test_model_picks_the_character_of_a_new_session_only(
    client: AsyncOpenAI, fake: FakeOpenAI
) -> None:
    await client.chat.completions.create(
        model="programmer", messages=[user_msg("hi")], extra_headers=session_header("code")
    )
    assert sent_messages(fake)[0]["content"] == BUILTINS["programmer"].system_prompt
    # The session keeps its character whatever a later request names.
    await client.chat.completions.create(
        model="teacher", messages=[user_msg("hi again")], extra_headers=session_header("code")
    )
    assert sent_messages(fake)[0]["content"] == BUILTINS["programmer"].system_prompt
    # A model name that is no character means the default character.
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[user_msg("hi")], extra_headers=session_header("other")
    )
    assert sent_messages(fake)[0]["content"] == BUILTINS["assistant"].system_prompt


async def test_session_from_user_and_metadata(
    client: AsyncOpenAI, raw: httpx.AsyncClient, fake: FakeOpenAI, user: str
) -> None:
    """In open mode the body's `user` names the user, and `metadata.session_id` the session."""
    other = f"{user}-other"
    fake.script(Reply(text="noted"))
    await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("remember 42")],
        user=other,
        metadata={"session_id": "meta-session"},
    )
    await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("what number?")],
        user=other,
        metadata={"session_id": "meta-session"},
    )
    assert user_msg("remember 42") in sent_messages(fake)
    r = await raw.get("/v1/sessions/meta-session/messages", headers={"X-User-Id": other})
    assert r.status_code == 200
    contents = [m["content"] for m in r.json()["messages"]]
    assert contents[-4:] == ["remember 42", "noted", "what number?", fake.default.text]
    # The caller's own user has no such session: it was `other`'s.
    r = await raw.get("/v1/sessions/meta-session")
    assert r.status_code == 404


async def test_no_session_is_stateless(
    client: AsyncOpenAI, fake: FakeOpenAI, raw: httpx.AsyncClient
) -> None:
    """Without a session, as OpenAI: the context is the client's messages exactly as sent
    and nothing is stored (every call of a user used to go into one session per
    character, so unrelated conversations leaked into each other); usage still counts."""
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        user_msg("first"),
        assistant_msg("an answer the server never gave"),
        user_msg("second"),
    ]
    response = await client.chat.completions.with_raw_response.create(
        model="teacher", messages=messages
    )
    assert "x-session-id" not in response.headers
    await client.chat.completions.create(model="teacher", messages=[user_msg("unrelated")])
    assert fake.chat_bodies[0]["messages"] == messages
    assert fake.chat_bodies[1]["messages"] == [user_msg("unrelated")]
    assert (await raw.get("/v1/sessions")).json()["sessions"] == []
    me = (await raw.get("/v1/me")).json()
    assert me["usage"]["completion_tokens"] > 0 and me["message_count"] == 0


async def test_idempotency_key_returns_the_stored_reply(
    client: AsyncOpenAI, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="only once"))
    headers = {**session_header("idem"), "Idempotency-Key": "key-123"}
    first = await client.chat.completions.create(
        model="assistant", messages=[user_msg("hello")], extra_headers=headers
    )
    again = await client.chat.completions.create(
        model="assistant", messages=[user_msg("hello")], extra_headers=headers
    )
    assert fake.request_count == 1
    assert again.choices[0].message.content == first.choices[0].message.content == "only once"
    assert again.id == first.id
    assert again.usage == first.usage


async def test_sampling_parameters_reach_the_model(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("hi")],
        temperature=0.2,
        max_tokens=10_000_000,
        extra_headers=session_header("params"),
    )
    sent = fake.chat_bodies[-1]
    assert sent["temperature"] == 0.2
    assert sent["max_tokens"] == 512  # may lower the configured limit, never raise it
    await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("hi")],
        max_completion_tokens=7,
        extra_headers=session_header("params"),
    )
    assert fake.chat_bodies[-1]["max_tokens"] == 7


# --- streamed ----------------------------------------------------------------------------


async def test_two_streamed_turns_with_usage(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="I will remember blue."), Reply(text="You said blue."))
    sid = "sdk-stream"
    stream = await client.chat.completions.create(
        model="companion",
        messages=[user_msg("My favourite colour is blue.")],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=session_header(sid),
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "I will remember blue."
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    # Last, the usage chunk: no choices; every other chunk has `usage: null`.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])

    stream = await client.chat.completions.create(
        model="companion",
        messages=[user_msg("What is my favourite colour?")],
        stream=True,
        extra_headers=session_header(sid),
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said blue."
    assert all(c.usage is None for c in chunks)  # not asked for
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert sent_messages(fake)[-3:] == [
        user_msg("My favourite colour is blue."),
        assistant_msg("I will remember blue."),
        user_msg("What is my favourite colour?"),
    ]


def test_sync_client_streams_too(base_url: str, user: str, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="from the sync client"))
    with openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="x", default_headers={"X-User-Id": user}, max_retries=0
    ) as sync_client:
        stream = sync_client.chat.completions.create(
            model="assistant",
            messages=[user_msg("hi")],
            stream=True,
            extra_headers=session_header("sync"),
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "from the sync client"


async def test_stream_wire_format(raw: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    """`data:` lines only, ending with `data: [DONE]`, as OpenAI's own clients parse them."""
    fake.script(Reply(text="a b"))
    body = {
        "model": "assistant",
        "messages": [user_msg("hi")],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with raw.stream(
        "POST", "/v1/chat/completions", json=body, headers=session_header("wire")
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-session-id"] == "wire"
        lines = [line async for line in r.aiter_lines() if line and not line.startswith(":")]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 1 + 2 + 1 + 1 + 1  # role, 2 deltas, finish, usage, [DONE]


async def test_stream_error_reaches_the_sdk(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="partial answer", error_in_stream="the model fell over"))
    stream = await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("hi")],
        stream=True,
        extra_headers=session_header("broken"),
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    # chatmem's own message: the upstream's text is only logged (SPEC §8).
    assert info.value.message == ProviderUnavailable().message
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error"
    assert "".join(c.choices[0].delta.content or "" for c in received) == "partial answer"


# --- models ------------------------------------------------------------------------------


async def test_models_list_the_characters_and_the_configured_model(client: AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    ids = [m.id for m in models]
    assert ids[: len(BUILTINS)] == list(BUILTINS)
    assert ids[-1] == "fake-model"
    assert all(m.object == "model" and m.owned_by == "chatmem" for m in models)
    teacher = await client.models.retrieve("teacher")
    assert teacher.id == "teacher"
    configured = await client.models.retrieve("fake-model")
    assert configured.model_extra and configured.model_extra["character_id"] == "assistant"
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([assistant_msg("I answer myself")], "no_user_message"),
        ([user_msg("hi"), {"role": "system", "content": "be brief"}], "no_user_message"),
        ([user_msg("   \n ")], "empty_message"),
        ([{"role": "user", "content": None}], "empty_message"),
        ([user_msg("x" * 4001)], "message_too_long"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "unsupported_content",
        ),
    ],
)
async def test_bad_messages_are_400_in_openai_shape(
    client: AsyncOpenAI, fake: FakeOpenAI, messages: list[Any], code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="assistant", messages=messages, extra_headers=session_header("bad")
        )
    assert info.value.status_code == 400
    assert info.value.code == code
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "invalid_request_error"
    assert fake.request_count == 0


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        ({"model": "assistant"}, {}, "invalid_request"),
        ({"model": "assistant", "messages": []}, {}, "invalid_request"),
        ({"model": "assistant", "messages": [{"role": "robot", "content": "x"}]}, {}, None),
        ({"model": "assistant", "messages": [user_msg("hi")], "n": 2}, {}, "invalid_request"),
        ({"messages": [user_msg("hi")]}, {}, "invalid_request"),
        (
            {"model": "assistant", "messages": [user_msg("hi")]},
            {"X-Session-Id": "a:b"},
            "invalid_request",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")]},
            {"X-Session-Id": "{x}"},
            "invalid_request",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")]},
            {"X-Session-Id": "x" * 129},
            "invalid_request",
        ),
        (
            {
                "model": "assistant",
                "messages": [user_msg("hi")],
                "metadata": {"session_id": "one"},
            },
            {"X-Session-Id": "two"},
            "session_id_mismatch",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")], "metadata": {"session_id": "*"}},
            {},
            "invalid_request",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")], "metadata": {"tag": 1}},
            {},
            "invalid_request",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")], "user": "a b"},
            {},
            "invalid_request",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")], "stream": "yes"},
            {},
            "invalid_request",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")], "temperature": 3},
            {},
            "invalid_request",
        ),
        (
            {"model": "assistant", "messages": [user_msg("hi")], "max_tokens": 0},
            {},
            "invalid_request",
        ),
    ],
)
async def test_bad_requests_are_4xx_never_500(
    raw: httpx.AsyncClient,
    fake: FakeOpenAI,
    body: dict[str, Any],
    headers: dict[str, str],
    code: str | None,
) -> None:
    r = await raw.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if code is not None:
        assert error["code"] == code
    assert fake.request_count == 0


async def test_body_that_is_not_json_is_400(raw: httpx.AsyncClient) -> None:
    r = await raw.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_upstream_failure_is_an_openai_error(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    fake.script(Reply(status=500))
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="assistant", messages=[user_msg("hi")], extra_headers=session_header("up")
        )
    assert info.value.status_code >= 500
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error"


# --- auth --------------------------------------------------------------------------------


async def test_auth_the_sdk_key_is_the_credential(auth_base_url: str, fake: FakeOpenAI) -> None:
    async with AsyncOpenAI(base_url=f"{auth_base_url}/v1", api_key=BOB_KEY, max_retries=0) as bob:
        await bob.chat.completions.create(
            model="assistant", messages=[user_msg("I am Bob")], extra_headers=session_header("b")
        )
        # `user` may name the caller, not anyone else (404, as any object not theirs).
        await bob.chat.completions.create(
            model="assistant", messages=[user_msg("still Bob")], user="bob"
        )
        with pytest.raises(openai.NotFoundError) as info:
            await bob.chat.completions.create(
                model="assistant", messages=[user_msg("I am Eve")], user="eve"
            )
        assert info.value.code == "user_not_found"
    async with AsyncOpenAI(base_url=f"{auth_base_url}/v1", api_key="wrong", max_retries=0) as eve:
        with pytest.raises(openai.AuthenticationError) as auth_info:
            await eve.models.list()
        assert isinstance(auth_info.value.body, dict)
        assert auth_info.value.body["type"] == "authentication_error"
    async with httpx.AsyncClient(
        base_url=auth_base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as admin:
        r = await admin.get("/v1/sessions/b/messages", params={"limit": 10})
        assert r.status_code == 404  # the admin's own sessions: Bob's is not among them
    async with httpx.AsyncClient(
        base_url=auth_base_url, headers={"Authorization": f"Bearer {BOB_KEY}"}
    ) as as_bob:
        r = await as_bob.get("/v1/sessions/b/messages")
        assert [m["content"] for m in r.json()["messages"]][-2:] == ["I am Bob", fake.default.text]


# --- pure --------------------------------------------------------------------------------


def test_new_message_joins_text_parts() -> None:
    msg = ChatMessageIn.model_validate(
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    )
    assert new_message([msg]).content == "a\nb"
    with pytest.raises(InvalidInput):
        new_message([ChatMessageIn(role="assistant", content="x")])
    tool = new_message([ChatMessageIn(role="tool", content="42", tool_call_id="call_1")])
    assert (tool.role, tool.content, tool.tool_call_id) == ("tool", "42", "call_1")


def _done(text: str = "hi", *, finish: str | None = "stop") -> TurnDone:
    metadata = {"finish_reason": finish} if finish else {}
    reply = Message(Role.ASSISTANT, text, 1, msg_id="r1", metadata=metadata)
    return TurnDone(reply, Message(Role.USER, "q", 1), Usage(10, 2))


def test_chunks_keep_to_their_documented_schema() -> None:
    """The chunks are built as dicts for speed; they must stay what /openapi.json says."""
    shape = ChunkShaper("r1", model="teacher", created=1, include_usage=True)
    done = _done()
    chunks = [shape.role(), shape.content("a"), *shape.closing(done)]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk, strict=True)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    assert all(c["usage"] is None for c in chunks[:-1])
    plain = ChunkShaper("r1", model="teacher", created=1, include_usage=False)
    assert [set(c) for c in plain.closing(done)] == [set(chunks[0]) - {"usage"}]


def test_completion_keeps_to_its_documented_schema() -> None:
    body = completion(_done("Paris", finish="length"), model="teacher", created=5)
    parsed = ChatCompletion.model_validate(body, strict=True)
    assert parsed.id == "chatcmpl-r1" and parsed.choices[0].finish_reason == "length"
    # Anything chatmem stores that is no OpenAI finish reason (or none at all) reads "stop".
    assert (
        completion(_done(finish="interrupted"), model="m", created=0)["choices"][0]["finish_reason"]
        == "stop"
    )
    assert (
        completion(_done(finish=None), model="m", created=0)["choices"][0]["finish_reason"]
        == "stop"
    )


def test_error_types_follow_openai() -> None:
    assert error_body(400, "empty_message", "m")["error"]["type"] == "invalid_request_error"
    assert error_body(401, "unauthenticated", "m")["error"]["type"] == "authentication_error"
    assert error_body(429, "rate_limited", "m")["error"]["type"] == "rate_limit_error"
    assert error_body(503, "store_unavailable", "m")["error"]["type"] == "server_error"


async def test_client_closing_a_stream_keeps_the_partial_reply(
    client: AsyncOpenAI, raw: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    """Closing the SDK's stream ends the upstream generation, stores what was said as
    interrupted, and frees the session for the next turn at once (no 409)."""
    fake.script(Reply(text="word " * 200, delay_s=0.02))
    stream = await client.chat.completions.create(
        model="assistant",
        messages=[user_msg("talk")],
        stream=True,
        extra_headers=session_header("gone"),
    )
    received = []
    async for chunk in stream:
        received.append(chunk)
        if len(received) == 4:
            break
    await stream.close()
    assert await fake.wait_disconnected()
    reply = await client.chat.completions.create(
        model="assistant", messages=[user_msg("still there?")], extra_headers=session_header("gone")
    )
    assert reply.choices[0].message.content == fake.default.text
    r = await raw.get("/v1/sessions/gone/messages")
    partial = r.json()["messages"][-3]
    assert partial["role"] == "assistant" and partial["metadata"]["interrupted"] is True
    assert partial["content"].startswith("word word")
