"""OpenAICompatProvider against the fake OpenAI server, over real sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest

from chatmem.config import LLMSettings
from chatmem.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from chatmem.providers import GenerationParams, StreamChunk, TokenUsage, http1_pool, make_provider
from chatmem.providers.http1 import Http1Connection
from chatmem.providers.http1_pool import Http1Client
from chatmem.providers.local import LocalLlamaProvider
from chatmem.providers.openai_compat import OpenAICompatProvider
from chatmem.providers.sse_decoder import SSEDecoder
from chatmem.providers.tool_calls import ToolCallAssembler, whole_calls
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai_tools import ToolCall

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the world"},
]


pytestmark = pytest.mark.fake_model(api_key="test-key")


def llm_settings(base_url: str, **overrides: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "provider": "auto",
        "base_url": base_url,
        "api_key": "test-key",
        "model": None,
        "max_retries": 2,
        "retry_backoff_s": 0.01,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 5.0,
    }
    return LLMSettings(**(values | overrides))


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAICompatProvider]:
    p = OpenAICompatProvider(llm_settings(fake.base_url))
    yield p
    await p.aclose()


async def collect(
    provider: OpenAICompatProvider, params: GenerationParams | None = None
) -> list[StreamChunk]:
    return [c async for c in provider.stream(MESSAGES, params or GenerationParams())]


def reply_text(chunks: list[StreamChunk]) -> str:
    return "".join(c.text for c in chunks)


# -- streaming and request shape ---------------------------------------------------


async def test_streams_the_reply_and_sends_exactly_the_messages(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="Hello there, world!"))
    chunks = await collect(provider)
    assert reply_text(chunks) == "Hello there, world!"
    assert [c.text for c in chunks[:3]] == ["Hello ", "there, ", "world!"]
    assert chunks[-2].finish_reason == "stop"
    assert chunks[-1].usage == TokenUsage(prompt_tokens=8, completion_tokens=3)
    assert all(c.text or c.finish_reason or c.usage for c in chunks)
    body = fake.chat_bodies[-1]
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-4o-mini", 0.7, 512)
    assert fake.chat_requests[-1].headers["authorization"] == "Bearer test-key"


async def test_generation_params_override_the_settings(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    await collect(provider, GenerationParams(model="other", temperature=0.0, max_tokens=9))
    body = fake.chat_bodies[-1]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("other", 0.0, 9)


@pytest.mark.parametrize(
    ("mode", "reported"), [("final", True), ("inline", True), ("null", False), ("absent", False)]
)
async def test_usage_is_relayed_when_reported_and_tolerated_when_not(
    provider: OpenAICompatProvider, fake: FakeOpenAI, mode: Any, reported: bool
) -> None:
    fake.script(Reply(text="one two three", usage=mode))
    chunks = await collect(provider)
    assert reply_text(chunks) == "one two three"
    usages = [c.usage for c in chunks if c.usage]
    assert usages == ([TokenUsage(prompt_tokens=8, completion_tokens=3)] if reported else [])


async def test_comment_lines_and_empty_choices_are_skipped(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="a b c", comments=True, empty_choices=True))
    chunks = await collect(provider)
    assert [c.text for c in chunks if c.text] == ["a ", "b ", "c"]


async def test_reasoning_content_is_kept_apart_from_the_reply(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="Paris.", reasoning="The user asks about France."))
    chunks = await collect(provider)
    assert reply_text(chunks) == "Paris."
    assert "".join(c.reasoning for c in chunks) == "The user asks about France."
    assert all(not (c.text and c.reasoning) for c in chunks)


async def test_a_plain_json_reply_to_a_streamed_request_is_accepted(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="Whole reply at once.", reasoning="hmm", plain=True))
    [chunk] = await collect(provider)
    assert (chunk.text, chunk.reasoning, chunk.finish_reason) == (
        "Whole reply at once.",
        "hmm",
        "stop",
    )
    assert chunk.usage == TokenUsage(prompt_tokens=8, completion_tokens=4)


async def test_a_stream_without_done_marker_still_ends(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="no marker", done=False))
    assert reply_text(await collect(provider)) == "no marker"


async def test_the_connection_is_reused_across_streams(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    for _ in range(3):
        await collect(provider)
    assert fake.request_count == 3
    assert fake.connections == 1


async def test_the_pool_keeps_its_books_in_one_pass(
    provider: OpenAICompatProvider, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: httpcore's pool counted every connection again for each idle one, and
    polled every idle socket, each time a request started or ended (quadratic in the
    pool: 32 turns in flight cost ~0.5 ms a turn, 1 000 streams stalled the loop). The
    own client's pool takes the newest idle connection and looks at no other."""
    client = provider._upstream
    assert isinstance(client, Http1Client)
    fake.script(*[Reply(text="hello", delay_s=0.02) for _ in range(30)])
    await asyncio.gather(*(collect(provider) for _ in range(30)))
    assert fake.connections == 30
    checks = 0
    real_reusable = Http1Connection.reusable

    def counted(self: Http1Connection) -> bool:
        nonlocal checks
        checks += 1
        return bool(real_reusable.fget(self))  # type: ignore[attr-defined]

    monkeypatch.setattr(Http1Connection, "reusable", property(counted))
    monkeypatch.setattr(http1_pool, "SWEEP_S", 3600.0)
    client._swept_at = time.monotonic()  # type: ignore[attr-defined]
    for _ in range(3):  # sequential: each reuses an idle connection
        await collect(provider)
    assert fake.connections == 30
    assert client.open_connections == 30  # type: ignore[attr-defined]
    assert checks <= 3 * 3  # taking one, giving it back: not 30 each time


async def test_a_request_goes_out_in_one_write(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    """httpcore wrote a request's head and body separately: two syscalls and two
    wake-ups of the server per request; one here."""
    await collect(provider)
    [conn] = provider._upstream._idle  # type: ignore[attr-defined]
    transport = conn.transport
    writes: list[bytes] = []
    real_write = transport.write

    def counted(data: bytes) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = counted
    assert reply_text(await collect(provider)) == "Hello from the fake model."
    assert len(writes) == 1
    assert writes[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert writes[0].endswith(b"}")  # head and JSON body
    assert fake.connections == 1


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "retried"),
    [
        (400, ProviderBadRequest, False),
        (401, ProviderAuthError, False),
        (403, ProviderAuthError, False),
        (404, ProviderBadRequest, False),
        (422, ProviderBadRequest, False),
        (429, ProviderRateLimited, True),
        (500, ProviderUnavailable, True),
        (503, ProviderUnavailable, True),
    ],
)
async def test_upstream_status_maps_to_a_domain_error_with_its_detail(
    provider: OpenAICompatProvider,
    fake: FakeOpenAI,
    status: int,
    error: type[ProviderError],
    retried: bool,
) -> None:
    fake.script(*[Reply(status=status, error_message=f"upstream says {status}")] * 3)
    with pytest.raises(error) as caught:
        await collect(provider)
    assert type(caught.value) is error or issubclass(type(caught.value), error)
    # What the upstream said is the detail, for the log; the client's message is chatmem's.
    assert f"upstream says {status}" in caught.value.detail
    assert "upstream says" not in caught.value.message
    assert fake.request_count == (3 if retried else 1)


async def test_a_wrong_api_key_is_an_auth_error(fake: FakeOpenAI) -> None:
    provider = OpenAICompatProvider(llm_settings(fake.base_url, api_key="wrong"))
    try:
        with pytest.raises(ProviderAuthError, match="Incorrect API key"):
            await collect(provider)
    finally:
        await provider.aclose()


async def test_an_error_event_inside_the_stream_is_raised(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="partial answer", error_in_stream="model overloaded"))
    seen: list[str] = []
    with pytest.raises(ProviderUnavailable, match="model overloaded"):
        async for chunk in provider.stream(MESSAGES, GenerationParams()):
            seen.append(chunk.text)
    assert "".join(seen) == "partial answer"
    assert fake.request_count == 1


async def test_a_read_timeout_is_a_timeout_error(fake: FakeOpenAI) -> None:
    provider = OpenAICompatProvider(llm_settings(fake.base_url, read_timeout_s=0.2, max_retries=1))
    fake.script(Reply(headers_delay_s=3), Reply(headers_delay_s=3))
    try:
        with pytest.raises(ProviderTimeout):
            await collect(provider)
    finally:
        await provider.aclose()
    assert fake.request_count == 2


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    provider = OpenAICompatProvider(llm_settings(f"http://127.0.0.1:{port}/v1", max_retries=1))
    try:
        with pytest.raises(ProviderUnavailable, match="cannot connect"):
            await collect(provider)
    finally:
        await provider.aclose()


# -- retries: before the first token only -----------------------------------------------


async def test_retries_before_the_first_token_then_succeeds(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(status=500), Reply(status=429, retry_after_s=0), Reply(text="at last"))
    assert reply_text(await collect(provider)) == "at last"
    assert fake.request_count == 3


async def test_gives_up_after_max_retries(provider: OpenAICompatProvider, fake: FakeOpenAI) -> None:
    fake.script(*[Reply(status=502)] * 3, Reply(text="too late"))
    with pytest.raises(ProviderUnavailable):
        await collect(provider)
    assert fake.request_count == 3


async def test_no_retry_once_a_token_was_relayed(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="one two three four", drop_after=2), Reply(text="a second answer"))
    seen: list[str] = []
    with pytest.raises(ProviderUnavailable):
        async for chunk in provider.stream(MESSAGES, GenerationParams()):
            seen.append(chunk.text)
    assert "".join(seen) == "one two "
    assert fake.request_count == 1
    assert fake.chat_requests[0].outcome == "dropped"


async def test_a_server_rejecting_stream_options_is_asked_again_without(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    rejection = "Unrecognized request argument supplied: stream_options"
    fake.script(Reply(status=400, error_message=rejection), Reply(text="fine", usage="absent"))
    assert reply_text(await collect(provider)) == "fine"
    assert "stream_options" in fake.chat_bodies[0]
    assert "stream_options" not in fake.chat_bodies[1]


# -- cancellation ---------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_upstream_stream(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="word " * 100, delay_s=0.05))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(MESSAGES, GenerationParams()):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_disconnected(10)
    assert fake.chat_requests[-1].outcome == "client_closed"
    assert fake.chat_requests[-1].chunks_sent < 10


async def test_closing_the_stream_closes_the_upstream_stream(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="word " * 100, delay_s=0.05))
    stream = cast(AsyncGenerator[StreamChunk, None], provider.stream(MESSAGES, GenerationParams()))
    assert (await anext(stream)).text == "word "
    await stream.aclose()
    assert await fake.wait_disconnected(10)
    assert fake.request_count == 1


# -- model info and selection -----------------------------------------------------------


def test_context_window_known_configured_or_default() -> None:
    url = "http://127.0.0.1:9/v1"
    assert OpenAICompatProvider(llm_settings(url, model="gpt-4")).info.context_window == 8_192
    explicit = llm_settings(url, model="gpt-4", context_window=4_000)
    assert OpenAICompatProvider(explicit).info.context_window == 4_000
    unknown = OpenAICompatProvider(llm_settings(url, model="my-vllm-model")).info
    assert (unknown.name, unknown.context_window) == ("my-vllm-model", 128_000)


def test_factory_picks_openai_when_a_url_or_key_is_set_else_local() -> None:
    with_url = make_provider(llm_settings("http://127.0.0.1:9/v1", api_key=None))
    with_key = make_provider(llm_settings("", api_key="sk-test"))
    assert isinstance(with_url, OpenAICompatProvider)
    assert isinstance(with_key, OpenAICompatProvider)
    assert isinstance(make_provider(llm_settings("", api_key=None)), LocalLlamaProvider)


# -- SSE framing (pure) -------------------------------------------------------------------


def test_sse_decoder_handles_split_blocks_crlf_comments_and_multiline_data() -> None:
    decoder = SSEDecoder()
    stream = b': hi\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: x\nid: 3\ndata:[DONE]\n\ndata: tail'
    payloads: list[bytes] = []
    for i in range(0, len(stream), 5):  # cut everywhere, even inside `\r\n`
        payloads += decoder.feed(stream[i : i + 5])
    payloads += decoder.close()
    assert payloads == [b'{"a":\n1}', b"[DONE]", b"tail"]


async def test_a_stall_after_the_first_token_times_out_without_retry(fake: FakeOpenAI) -> None:
    provider = OpenAICompatProvider(llm_settings(fake.base_url, read_timeout_s=0.3))
    fake.script(Reply(text="one two three", stall_after=1, stall_s=3), Reply(text="again"))
    seen: list[str] = []
    try:
        with pytest.raises(ProviderTimeout):
            async for chunk in provider.stream(MESSAGES, GenerationParams()):
                seen.append(chunk.text)
    finally:
        await provider.aclose()
    assert seen == ["one "]
    assert fake.request_count == 1
    assert await fake.wait_disconnected(10)


# -- tools -----------------------------------------------------------------------------


@pytest.mark.parametrize("plain", [False, True], ids=["streamed", "plain-json"])
async def test_tool_calls_are_put_together_and_the_tool_fields_sent_as_given(
    provider: OpenAICompatProvider, fake: FakeOpenAI, plain: bool
) -> None:
    """The model's calls come streamed in fragments (or whole in a JSON reply): the
    provider hands them on whole, once; tools and tool messages go upstream as given."""
    calls = [ToolCall("lookup", '{"q": "a b c d"}', pieces=4), ToolCall("now", "{}")]
    fake.script(Reply(text="Checking.", tool_calls=calls, plain=plain))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    earlier = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [calls[1].wire()]},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
    ]
    params = GenerationParams(options={"tools": tools, "tool_choice": "required"})
    chunks = [c async for c in provider.stream(earlier, params)]
    assert reply_text(chunks) == "Checking."
    assert [c.tool_calls for c in chunks if c.tool_calls] == [tuple(c.wire() for c in calls)]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    body = fake.chat_bodies[-1]
    assert (body["messages"], body["tools"], body["tool_choice"]) == (earlier, tools, "required")


def test_assembler_takes_what_servers_really_send() -> None:
    tools = ToolCallAssembler()
    tools.feed([{"id": "c1", "function": {"name": "f", "arguments": '{"a"'}}])  # no index
    tools.feed([{"index": 0, "function": {"arguments": ": 1}"}}])
    tools.feed([{"index": 1, "type": "function", "function": {"name": "g", "arguments": None}}])
    tools.feed("not a list")
    tools.feed([{"index": 2, "function": {"arguments": "{}"}}])  # never named: left out
    got = tools.calls()
    assert got[0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a": 1}'},
    }
    # A call the server gave no id gets one, for the client's tool message to answer.
    assert got[1]["id"].startswith("call_") and got[1]["function"] == {"name": "g", "arguments": ""}
    assert len(got) == 2
    assert whole_calls({"tool_calls": [ToolCall("h", id="c9").wire()]}) == (
        {"id": "c9", "type": "function", "function": {"name": "h", "arguments": "{}"}},
    )


def test_only_the_openai_compatible_provider_does_tools(
    provider: OpenAICompatProvider,
) -> None:
    """Capabilities as data: the embedded model cannot take tools (the route answers
    400 tools_unsupported, tests/test_openai_tools.py)."""
    assert provider.info.tools is True
    assert LocalLlamaProvider(LLMSettings(provider="local")).info.tools is False
