"""Tools through the OpenAI-compatible route (SPEC §4): real clients against a real
uvicorn and the fake model. An agent loop (tool call → tool result → answer) works
with a session (stored and reconciled, each message once) and without one, streamed
and not; bad tool messages and a model without tools are 400 with nothing stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from chatmem.api.app import create_app
from chatmem.chat.reconcile import ClientMessage, plan_turn
from chatmem.config import LLMSettings
from chatmem.context import ContextLimits, assemble_context
from chatmem.errors import InvalidInput
from chatmem.models import Message, Role
from chatmem.ops.transfer import export_sessions, import_sessions
from chatmem.providers.local import LocalLlamaProvider
from chatmem.store.conversations import RedisMemoryStore
from tests.api_support import make_test_settings, openai_client, sessions_of, stored_messages
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai_tools import ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def session_ids(base_url: str, user: str) -> list[str]:
    return [s["session_id"] for s in sessions_of(base_url, user)]


def _ask(client: OpenAI, convo: list[Any], stream: bool, **kw: Any) -> tuple[dict[str, Any], str]:
    """The assistant message as the client would add it to its conversation, and the
    finish reason; streamed, the `delta.tool_calls` fragments joined by index."""
    if not stream:
        done = client.chat.completions.create(model="m", messages=convo, **kw)
        choice = done.choices[0]
        return choice.message.model_dump(exclude_none=True), choice.finish_reason
    text, calls, finish = "", {}, ""
    for chunk in client.chat.completions.create(model="m", messages=convo, stream=True, **kw):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for frag in choice.delta.tool_calls or []:
            call = calls.setdefault(
                frag.index,
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = frag.id or call["id"]
            if frag.function is not None:
                call["function"]["name"] += frag.function.name or ""
                call["function"]["arguments"] += frag.function.arguments or ""
        finish = choice.finish_reason or finish
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, finish


def _tail(body: dict[str, Any], n: int) -> list[tuple[Any, ...]]:
    """The last `n` messages the model was sent, as (role, content, tool fields)."""
    return [
        (m["role"], m.get("content"), m.get("tool_calls"), m.get("tool_call_id"))
        for m in body["messages"][-n:]
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("session", [True, False], ids=["session", "stateless"])
def test_tool_calling_loop(
    base_url: str, fake: FakeOpenAI, user: str, stream: bool, session: bool
) -> None:
    sid = "agent" if session else None
    client = openai_client(base_url, user, sid)
    call = ToolCall("get_weather", '{"city":"Paris"}')
    fake.script(
        Reply(text="", tool_calls=[call]), Reply(text="Sunny in Paris."), Reply(text="Any time.")
    )
    tools = {"tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False}
    convo: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    message, finish = _ask(client, convo, stream, **tools)
    assert finish == "tool_calls"
    assert message["tool_calls"] == [call.wire()]
    assert not message.get("content")
    first = fake.chat_bodies[0]
    assert (first["tools"], first["tool_choice"], first["parallel_tool_calls"]) == (
        [WEATHER],
        "auto",
        False,
    )

    convo += [message, {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C\n"}]
    message, finish = _ask(client, convo, stream, **tools)
    assert (message["content"], finish) == ("Sunny in Paris.", "stop")
    sent = fake.chat_bodies[1]
    assert _tail(sent, 3) == [
        ("user", "Weather in Paris?", None, None),
        ("assistant", None, [call.wire()], None),
        ("tool", "sunny, 21 C\n", None, call.id),
    ]
    assert sent["tools"] == [WEATHER]

    convo += [message, {"role": "user", "content": "Thanks!"}]
    message, _ = _ask(client, convo, stream, **tools)
    assert message["content"] == "Any time."
    # Each message once, in order: the session's stored history is the context.
    contents = [m.get("content") for m in fake.chat_bodies[2]["messages"] if m["role"] != "system"]
    result = "sunny, 21 C\n"  # stored as sent, so that the client's copy still matches
    assert contents[-5:] == ["Weather in Paris?", None, result, "Sunny in Paris.", "Thanks!"]
    assert len([c for c in contents if c is not None]) == len({c for c in contents if c})

    if not session:
        assert session_ids(base_url, user) == []
        return
    stored = stored_messages(base_url, user, "agent")
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "Weather in Paris?"),
        ("assistant", ""),
        ("tool", "sunny, 21 C\n"),
        ("assistant", "Sunny in Paris."),
        ("user", "Thanks!"),
        ("assistant", "Any time."),
    ]
    assert stored[1]["metadata"]["tool_calls"] == [call.wire()]
    assert stored[1]["metadata"]["finish_reason"] == "tool_calls"
    assert stored[2]["metadata"]["tool_call_id"] == call.id
    assert session_ids(base_url, user) == ["agent"]  # appended to: no fork, no rewrite


def test_parallel_calls_streamed_and_stored_once(
    base_url: str, fake: FakeOpenAI, user: str
) -> None:
    client = openai_client(base_url, user, "parallel")
    calls = [
        ToolCall("get_weather", '{"city": "Paris"}'),
        ToolCall("get_weather", '{"city": "Rome"}'),
    ]
    fake.script(Reply(text="Let me look.", tool_calls=calls), Reply(text="Both sunny."))
    convo: list[Any] = [{"role": "user", "content": "Paris and Rome?"}]
    message, finish = _ask(client, convo, True, tools=[WEATHER])
    assert finish == "tool_calls"
    assert message == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [c.wire() for c in calls],
    }
    convo += [
        message,
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "sunny too"},
    ]
    message, _ = _ask(client, convo, True, tools=[WEATHER])
    assert message["content"] == "Both sunny."
    assert _tail(fake.chat_bodies[1], 3) == [
        ("assistant", "Let me look.", [c.wire() for c in calls], None),
        ("tool", "sunny", None, calls[0].id),
        ("tool", "sunny too", None, calls[1].id),
    ]
    stored = stored_messages(base_url, user, "parallel")
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "Paris and Rome?"),
        ("assistant", "Let me look."),
        ("tool", "sunny"),
        ("tool", "sunny too"),
        ("assistant", "Both sunny."),
    ]
    assert session_ids(base_url, user) == ["parallel"]  # appended to, not rewritten as a fork


def test_tool_result_retried_after_503_is_stored_once(
    base_url: str, fake: FakeOpenAI, user: str
) -> None:
    """The SDK re-sends the tool result after the model's 503: it is answered, not
    stored twice; re-sending it once more is a regenerate (two alternatives)."""
    client = openai_client(base_url, user, "retry", max_retries=1)
    call = ToolCall("get_weather", '{"city": "Oslo"}')
    fake.script(
        Reply(text="", tool_calls=[call]),
        Reply(status=503),
        Reply(text="Snow."),
        Reply(text="Snowing."),
    )
    convo: list[Any] = [{"role": "user", "content": "Oslo?"}]
    message, _ = _ask(client, convo, False, tools=[WEATHER])
    convo += [message, {"role": "tool", "tool_call_id": call.id, "content": "snow"}]
    assert _ask(client, convo, False, tools=[WEATHER])[0]["content"] == "Snow."
    assert _ask(client, convo, False, tools=[WEATHER])[0]["content"] == "Snowing."
    stored = stored_messages(base_url, user, "retry")
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert (stored[-1]["alternatives"], stored[-1]["selected"]) == (2, 1)
    assert [m["role"] for m in fake.chat_bodies[-1]["messages"]].count("tool") == 1


@pytest.mark.parametrize("session", [True, False], ids=["session", "stateless"])
@pytest.mark.parametrize(
    "tool_message",
    [
        {"role": "tool", "content": "no id"},
        {"role": "tool", "tool_call_id": "call_unknown", "content": "not asked for"},
    ],
    ids=["no-tool_call_id", "unknown-tool_call_id"],
)
def test_bad_tool_messages_are_400_and_store_nothing(
    base_url: str, fake: FakeOpenAI, user: str, session: bool, tool_message: dict[str, Any]
) -> None:
    sid = "bad" if session else None
    client = openai_client(base_url, user, sid)
    call = ToolCall("get_weather", '{"city": "Lima"}')
    fake.script(Reply(text="", tool_calls=[call]))
    convo: list[Any] = [{"role": "user", "content": "Lima?"}]
    message, _ = _ask(client, convo, False, tools=[WEATHER])
    before = stored_messages(base_url, user, "bad") if session else []
    asked = fake.request_count
    for sent in ([*convo, message, tool_message], [tool_message]):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=sent, tools=[WEATHER])
        assert info.value.code == "invalid_tool_message"
    # A tool result with no call before it at all.
    orphan = [{"role": "user", "content": "hi"}, {**tool_message, "tool_call_id": call.id}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=orphan, tools=[WEATHER])
    assert fake.request_count == asked
    if session:
        assert stored_messages(base_url, user, "bad") == before
    else:
        assert session_ids(base_url, user) == []


def test_langchain_bind_tools_loop(base_url: str, fake: FakeOpenAI, user: str) -> None:
    """LangChain's ChatOpenAI with bind_tools sends the calls back re-serialized
    (`{"city": "Paris"}` for the model's `{"city":"Paris"}`): still the same message."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city now."""
        return f"sunny in {city}"

    call = ToolCall("get_weather", '{"city":"Paris"}')
    fake.script(Reply(text="", tool_calls=[call]), Reply(text="It is sunny in Paris."))
    llm = ChatOpenAI(
        model="m",
        base_url=f"{base_url}/v1",
        api_key="open-mode",
        default_headers={"X-User-Id": user, "X-Session-Id": "lc"},
        max_retries=0,
    ).bind_tools([get_weather])
    convo: list[Any] = [HumanMessage("Weather in Paris?")]
    ai = llm.invoke(convo)
    assert [(c["name"], c["args"], c["id"]) for c in ai.tool_calls] == [
        ("get_weather", {"city": "Paris"}, call.id)
    ]
    convo += [ai, ToolMessage(get_weather.invoke(ai.tool_calls[0]["args"]), tool_call_id=call.id)]
    assert llm.invoke(convo).content == "It is sunny in Paris."
    assert fake.chat_bodies[0]["tools"][0]["function"]["name"] == "get_weather"
    stored = stored_messages(base_url, user, "lc")
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "Weather in Paris?"),
        ("assistant", ""),
        ("tool", "sunny in Paris"),
        ("assistant", "It is sunny in Paris."),
    ]
    assert session_ids(base_url, user) == ["lc"]


@pytest.mark.local_model
async def test_a_model_without_tools_answers_tools_unsupported(
    redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    """The embedded model cannot do tools: a request with tools, or with tool messages,
    is 400 `tools_unsupported` before anything is stored (no session is even made)."""
    settings = make_test_settings(redis_url, "http://127.0.0.1:9/v1", tmp_path)
    local = LLMSettings(provider="local", local_n_ctx=2048)
    app = create_app(settings.model_copy(update={"llm": local}), provider=LocalLlamaProvider(local))
    call = ToolCall("get_weather", "{}")
    requests: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER]},
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [call.wire()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ]
        },
    ]
    headers = {"X-User-Id": "u1", "X-Session-Id": "local"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        for stream in (False, True):
            for body in requests:
                r = await client.post(
                    "/v1/chat/completions",
                    json={"model": "m", "stream": stream, **body},
                    headers=headers,
                )
                assert r.status_code == 400, r.text
                assert r.json()["error"]["code"] == "tools_unsupported"
        r = await client.get("/v1/sessions", headers=headers)
        assert r.json()["sessions"] == []


# --- pure: reconciliation with tool messages ------------------------------------------

CALL_A = ToolCall("f", '{"x": 1}', id="call_a").wire()
CALL_B = ToolCall("f", '{"x": 2}', id="call_b").wire()


def _stored(*msgs: ClientMessage) -> list[Message]:
    return [m.to_message() for m in msgs]


USER = ClientMessage("user", "go")
CALLS = ClientMessage("assistant", "", (CALL_A, CALL_B))
RESULT_A = ClientMessage("tool", "one", tool_call_id="call_a")
RESULT_B = ClientMessage("tool", "two", tool_call_id="call_b")


def test_plan_appends_the_new_tool_results_after_the_stored_calls() -> None:
    stored = _stored(USER, CALLS)
    assert plan_turn([USER, CALLS], RESULT_A, stored).kind == "append"
    plan = plan_turn([USER, CALLS, RESULT_A], RESULT_B, stored)
    assert (plan.kind, plan.extra) == ("append", [RESULT_A])
    # The first result already stored (a turn failed after it): only the second is new.
    plan = plan_turn([USER, CALLS, RESULT_A], RESULT_B, _stored(USER, CALLS, RESULT_A))
    assert (plan.kind, plan.extra) == ("append", [])
    # Arguments re-serialized by the client are the same call.
    resent = ClientMessage("assistant", "", tuple(_spaced(c) for c in (CALL_A, CALL_B)))
    assert plan_turn([USER, resent], RESULT_A, stored).kind == "append"


def _spaced(call: dict[str, Any]) -> dict[str, Any]:
    args = call["function"]["arguments"].replace(":", " :  ")
    return {**call, "function": {**call["function"], "arguments": args}}


def test_plan_answers_or_regenerates_a_stored_tool_result() -> None:
    stored = _stored(USER, CALLS, RESULT_A, RESULT_B)
    assert plan_turn([USER, CALLS, RESULT_A], RESULT_B, stored).kind == "answer"
    assert plan_turn([], RESULT_B, stored).kind == "answer"
    answered = [*stored, Message(Role.ASSISTANT, "done")]
    assert plan_turn([USER, CALLS, RESULT_A], RESULT_B, answered).kind == "regenerate"


def test_plan_diverges_when_the_calls_differ() -> None:
    other = ClientMessage("assistant", "", (CALL_A, {**CALL_B, "id": "call_c"}))
    plan = plan_turn(
        [USER, other], ClientMessage("tool", "3", tool_call_id="call_c"), _stored(USER, CALLS)
    )
    assert plan.kind == "diverge"


@pytest.mark.parametrize(
    ("prior", "new", "stored"),
    [
        ([USER, CALLS], ClientMessage("tool", "?", tool_call_id="call_x"), [USER, CALLS]),
        ([USER, CALLS], ClientMessage("tool", "?"), [USER, CALLS]),
        ([USER, CALLS, RESULT_A], RESULT_A, [USER, CALLS]),  # answered twice
        ([], RESULT_A, [USER]),  # no call before it
        ([USER], RESULT_A, []),  # a new session: the call is not among the client's
    ],
)
def test_plan_refuses_a_tool_result_that_answers_no_call(
    prior: list[ClientMessage], new: ClientMessage, stored: list[ClientMessage]
) -> None:
    with pytest.raises(InvalidInput) as info:
        plan_turn(prior, new, _stored(*stored))
    assert info.value.code == "invalid_tool_message"


def test_context_leaves_out_a_tool_result_whose_call_was_cut_off() -> None:
    history = _stored(USER, CALLS, RESULT_A, RESULT_B, ClientMessage("assistant", "done"))
    ctx = assemble_context(
        system_prompt="",
        system_tokens=0,
        history=history,
        new_message=Message(Role.USER, "next", 1),
        limits=ContextLimits(window_size=1, max_context_messages=3),
    )
    assert [m["role"] for m in ctx.messages] == ["assistant", "user"]


async def test_tool_messages_survive_export_and_import(
    client: httpx.AsyncClient, store: RedisMemoryStore, fake: FakeOpenAI
) -> None:
    """Exported and imported (as another user), a session's tool calls and results are
    what its next turn sends the model."""
    call = ToolCall("get_weather", '{"city": "Bern"}')
    fake.script(Reply(text="", tool_calls=[call]), Reply(text="Mild."), Reply(text="Bye."))
    headers = {"X-User-Id": "alice", "X-Session-Id": "s"}
    convo: list[Any] = [{"role": "user", "content": "Bern?"}]
    for follow_up in (
        {"role": "tool", "tool_call_id": call.id, "content": "mild"},
        None,
    ):
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": convo, "tools": [WEATHER]},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        convo.append(r.json()["choices"][0]["message"])
        if follow_up is not None:
            convo.append(follow_up)
    doc = await export_sessions(store, [await store.get_meta("alice", "s")])
    for item in doc["sessions"]:
        item["meta"]["user_id"] = "bob"
    await import_sessions(store, doc["sessions"])
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "Thanks"}]},
        headers={"X-User-Id": "bob", "X-Session-Id": "s"},
    )
    assert r.status_code == 200, r.text
    assert _tail(fake.chat_bodies[-1], 5) == [
        ("user", "Bern?", None, None),
        ("assistant", None, [call.wire()], None),
        ("tool", "mild", None, call.id),
        ("assistant", "Mild.", None, None),
        ("user", "Thanks", None, None),
    ]
