"""LocalLlamaProvider with the real SmolLM2-135M-Instruct model (loaded once per module)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from chatmem.config import LLMSettings
from chatmem.errors import ProviderBadRequest, ProviderUnavailable
from chatmem.providers import GenerationParams, StreamChunk
from chatmem.providers.local import LocalLlamaProvider, bundled_model_path
from tests.support import eventually

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]
LONG = GenerationParams(max_tokens=400, temperature=0.8)


def local_settings(**overrides: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "provider": "local",
        "local_model_path": None,
        "local_n_ctx": 2048,
        "local_queue_size": 1,
        "max_tokens": 64,
    }
    return LLMSettings(**(values | overrides))


@pytest.fixture(scope="module")
def model() -> Iterator[LocalLlamaProvider]:
    provider = LocalLlamaProvider(local_settings())
    provider.load()
    yield provider
    asyncio.run(provider.aclose())


def reply_text(chunks: list[StreamChunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.mark.local_model
def test_model_info_comes_from_the_gguf_header_without_a_load() -> None:
    assert bundled_model_path() is not None
    roomy = LocalLlamaProvider(local_settings(local_n_ctx=1_000_000)).info
    assert roomy.context_window == 8192  # SmolLM2's trained context
    small = LocalLlamaProvider(local_settings(local_n_ctx=1024)).info
    assert (small.name, small.context_window) == ("SmolLM2-135M-Instruct.Q4_1", 1024)


def test_a_missing_model_file_is_unavailable(tmp_path: Path) -> None:
    provider = LocalLlamaProvider(local_settings(local_model_path=tmp_path / "none.gguf"))
    with pytest.raises(ProviderUnavailable, match=r"none\.gguf"):
        _ = provider.info


@pytest.mark.local_model
async def test_streams_a_reply_with_usage(model: LocalLlamaProvider) -> None:
    chunks = [c async for c in model.stream(MESSAGES, GenerationParams(max_tokens=24))]
    assert reply_text(chunks).strip()
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.usage is not None
    assert last.usage.prompt_tokens > 20  # system + user + the template's markers
    assert 1 <= last.usage.completion_tokens <= 24
    assert all(c.usage is None for c in chunks[:-1])
    assert model.info.context_window == 2048


@pytest.mark.local_model
async def test_a_history_with_tool_calls_is_read_as_text(model: LocalLlamaProvider) -> None:
    """A session imported from a model with tools: its tool calls have no text (None),
    which the chat template could not join (a 503 with the user message left alone)."""
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "user", "content": "And then?"},
    ]
    chunks = [c async for c in model.stream(history, GenerationParams(max_tokens=8))]
    assert chunks[-1].finish_reason in ("stop", "length")


@pytest.mark.local_model
async def test_respects_max_tokens(model: LocalLlamaProvider) -> None:
    long_answer = [{"role": "user", "content": "Write a long story about a dragon."}]
    chunks = [
        c async for c in model.stream(long_answer, GenerationParams(max_tokens=5, temperature=0))
    ]
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens <= 5
    assert chunks[-1].finish_reason == "length" or usage.completion_tokens < 5


@pytest.mark.local_model
async def test_cancelling_stops_the_generation_between_tokens(model: LocalLlamaProvider) -> None:
    first = asyncio.Event()
    got: list[str] = []

    async def consume() -> None:
        async for chunk in model.stream(MESSAGES, LONG):
            got.append(chunk.text)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 30)
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancelled consumer returns once the worker has stopped: the model is free.
    assert time.perf_counter() - started < 2.0
    assert model.pending == 0
    assert len(got) < 100


@pytest.mark.local_model
async def test_closing_the_stream_frees_the_model(model: LocalLlamaProvider) -> None:
    stream = cast(AsyncGenerator[StreamChunk, None], model.stream(MESSAGES, LONG))
    await anext(stream)
    await stream.aclose()
    assert model.pending == 0


@pytest.mark.local_model
async def test_two_concurrent_requests_are_served_one_after_the_other(
    model: LocalLlamaProvider,
) -> None:
    async def timed(question: str) -> tuple[float, float, str]:
        messages = [{"role": "user", "content": question}]
        times, texts = [], []
        async for chunk in model.stream(messages, GenerationParams(max_tokens=16)):
            times.append(time.perf_counter())
            texts.append(chunk.text)
        return times[0], times[-1], "".join(texts)

    (a_start, a_end, a), (b_start, b_end, b) = await asyncio.gather(
        timed("What is two plus two?"), timed("What colour is the sky?")
    )
    assert a.strip() and b.strip()
    assert a_end <= b_start or b_end <= a_start
    assert model.pending == 0


@pytest.mark.local_model
async def test_requests_beyond_the_queue_are_refused(model: LocalLlamaProvider) -> None:
    running = cast(AsyncGenerator[StreamChunk, None], model.stream(MESSAGES, LONG))
    queued = cast(AsyncGenerator[StreamChunk, None], model.stream(MESSAGES, LONG))
    refused = model.stream(MESSAGES, LONG)
    await anext(running)
    waiting = asyncio.create_task(anext(queued))
    # local_queue_size=1: one running, one waiting
    await eventually(lambda: model.pending == 2, "the second request queued")
    with pytest.raises(ProviderUnavailable, match="busy"):
        await anext(refused)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await queued.aclose()
    await running.aclose()
    assert model.pending == 0


@pytest.mark.local_model
async def test_a_prompt_longer_than_the_context_is_a_bad_request(
    model: LocalLlamaProvider,
) -> None:
    huge = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(ProviderBadRequest, match="context window"):
        async for _ in model.stream(huge, GenerationParams()):
            pass
    assert model.pending == 0


@pytest.mark.local_model
async def test_warm_up_is_idempotent_and_keeps_replies_working(model: LocalLlamaProvider) -> None:
    await model.warm_up()
    await model.warm_up()
    chunks = [c async for c in model.stream(MESSAGES, GenerationParams(max_tokens=4))]
    assert chunks[-1].usage is not None


def conversation(topic: str, rounds: int) -> list[dict[str, str]]:
    """A conversation with some history (~45 tokens a round) and a new question."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(rounds):
        messages.append({"role": "user", "content": f"Tell me fact number {i} about {topic}."})
        messages.append(
            {"role": "assistant", "content": f"Fact {i}: {topic} are interesting in many ways."}
        )
    messages.append({"role": "user", "content": f"What else about {topic}?"})
    return messages


class EvalCounter:
    """Counts the tokens llama.cpp evaluates (wraps the model's `eval`)."""

    def __init__(self, llama: Any) -> None:
        self.tokens = 0
        self._eval = llama.eval

        def counted(tokens: Any) -> None:
            self.tokens += len(tokens)
            self._eval(tokens)

        llama.eval = counted


async def reply_of(model: LocalLlamaProvider, messages: list[dict[str, str]]) -> str:
    params = GenerationParams(max_tokens=12, temperature=0)
    return reply_text([c async for c in model.stream(messages, params)])


@pytest.mark.local_model
async def test_a_returning_conversation_is_not_evaluated_again(
    model: LocalLlamaProvider,
) -> None:
    cats, dogs = conversation("cats", 16), conversation("dogs", 16)
    model.states.clear()
    counter = EvalCounter(model._llama)
    try:
        await reply_of(model, dogs)
        counted = counter.tokens
        cold = await reply_of(model, cats)  # nothing of it cached: the whole prompt
        cold_tokens = counter.tokens - counted
        assert cold_tokens > 400
        model.states.clear()
        await reply_of(model, dogs)
        await reply_of(model, cats)  # its state is kept now
        await reply_of(model, dogs)  # another conversation in between
        restores, counted = model.states.restores, counter.tokens
        warm = await reply_of(model, cats)
        assert model.states.restores == restores + 1
        # The state is put back: only what follows the kept prefix is evaluated.
        assert counter.tokens - counted < 40
        assert warm == cold  # greedy: the same reply as from a fresh evaluation
        assert 0 < model.states.bytes <= model.states.budget_bytes
    finally:
        del model._llama.eval


@pytest.mark.local_model
async def test_prompt_states_stay_within_their_memory_budget(model: LocalLlamaProvider) -> None:
    budget = model.states.budget_bytes
    model.states.clear()
    try:
        await reply_of(model, conversation("cats", 12))
        one = model.states.bytes
        assert len(model.states) == 1 and one > 0
        model.states.budget_bytes = int(one * 1.5)  # room for one such state, not two
        await reply_of(model, conversation("dogs", 12))
        assert len(model.states) == 1
        assert model.states.bytes <= model.states.budget_bytes
        model.states.budget_bytes = 0  # none kept
        model.states.clear()
        await reply_of(model, conversation("birds", 12))
        assert len(model.states) == 0
    finally:
        model.states.budget_bytes = budget
        model.states.clear()


def test_the_provider_module_imports_without_the_local_extra() -> None:
    """numpy and llama_cpp come with chatmem[local]: `chatmem serve` imports this module
    (its banner) on installs without them."""
    code = (
        "import sys; sys.modules['numpy'] = sys.modules['llama_cpp'] = None\n"
        "import chatmem.providers.local"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
