"""The provider seam: what the chat service needs from a model, and nothing more.

A provider turns a list of chat messages into a stream of `StreamChunk`s. The
consumer stops a generation by cancelling the task that iterates the stream or by
calling `aclose()` on it; a provider must then release the upstream promptly (close
the HTTP response, or stop the local model between two tokens).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Per-request options; `None` means the provider's configured default."""

    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    # More of OpenAI's sampling fields (top_p, stop, seed, penalties, response_format),
    # as a client gave them to the OpenAI-compatible route; a provider that cannot honour
    # one leaves it out.
    options: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One step of a reply: a text delta, and/or how and at what cost it ended."""

    text: str = ""
    # Reasoning models' `reasoning_content`: never part of the reply text.
    reasoning: str = ""
    finish_reason: str | None = None
    # Set when the provider reports usage, usually on the last chunk only.
    usage: TokenUsage | None = None
    # The reply's tool calls, whole (OpenAI's `{"id", "type", "function": {"name",
    # "arguments"}}`), once the model has finished them: the provider assembles the
    # streamed fragments (providers/tool_calls.py). Only a provider with `tools` sends them.
    tool_calls: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the rest of chatmem may assume about the default model."""

    name: str
    context_window: int
    # Capabilities, as data: whether the model takes OpenAI's `tools` and tool messages
    # (the OpenAI-compatible route answers 400 `tools_unsupported` when it does not).
    tools: bool = False


class ChatProvider(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def stream(
        self, messages: Sequence[Mapping[str, Any]], params: GenerationParams
    ) -> AsyncIterator[StreamChunk]:
        """Generate a reply; an async generator, cancellable at any await. `messages`
        are OpenAI's chat messages (`role`, `content`, and the tool fields)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and model memory."""
        ...


@runtime_checkable
class WholeReplies(Protocol):
    """A provider that can also answer in one piece, for a reply nobody follows as it
    is written (a JSON turn): `whole` yields the same chunks as `stream`, at the end.
    `answers_whole`: whether it is configured to (a whole reply stopped half-way has no
    partial text to keep, so it is the operator's choice)."""

    @property
    def answers_whole(self) -> bool: ...

    def whole(
        self, messages: Sequence[Mapping[str, Any]], params: GenerationParams
    ) -> AsyncIterator[StreamChunk]: ...


def reply_chunks(
    provider: ChatProvider,
    messages: Sequence[Mapping[str, Any]],
    params: GenerationParams,
    *,
    relayed: bool,
) -> AsyncIterator[StreamChunk]:
    """The reply's chunks: streamed when they are relayed as they come, else in one
    piece when the provider is set to (one upstream read instead of one per token)."""
    if not relayed and isinstance(provider, WholeReplies) and provider.answers_whole:
        return provider.whole(messages, params)
    return provider.stream(messages, params)
