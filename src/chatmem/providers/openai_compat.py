"""Any OpenAI-compatible chat endpoint (OpenAI, DeepSeek, DashScope, Ark, vLLM, Ollama…).

Deliberately chatmem's own HTTP/1.1 client (providers/upstream.py) rather than the
`openai` SDK: the SDK builds a pydantic object per streamed chunk (several times the
CPU per relayed chunk, docs/performance.md), and would retry after the first token.
The SSE bytes are split and parsed with orjson, tolerating what servers really send:
`usage: null`, chunks with empty `choices`, comment lines, `reasoning_content`,
an `error` object inside the stream, or a plain JSON reply to a streamed request.
The model's tool calls, streamed in fragments, are joined (providers/tool_calls.py)
and handed on whole in one last chunk; messages and OpenAI's tool parameters go up
as given.

Upstream errors become chatmem's own (`ProviderError` subclasses, whose client-facing
message is their class's): what the upstream said, with its status, is the error's
`detail`, for the server's log only, with the API key and anything shaped like a
credential redacted. An upstream's body can echo the key or name internal hosts.

Bounds against an upstream that misbehaves: an SSE line or event over a MiB is a 502
(providers/sse_decoder.py), and a reply longer
than MAX_CHARS_PER_TOKEN × its `max_tokens` (a server that ignores `max_tokens`) ends
there, `finish_reason` "length", as if the model had been cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from chatmem.config import LLMSettings
from chatmem.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from chatmem.providers.base import GenerationParams, ModelInfo, StreamChunk, TokenUsage
from chatmem.providers.http1_pool import Http1Client
from chatmem.providers.httpx_upstream import HttpxUpstream
from chatmem.providers.sse_decoder import SSEDecoder
from chatmem.providers.tool_calls import ToolCallAssembler, whole_calls
from chatmem.providers.upstream import (
    ConnectTimeout,
    Timeouts,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    proxied,
)
from chatmem.redact import redact

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
# Windows of well-known models, used when CHATMEM_LLM_CONTEXT_WINDOW is not set.
KNOWN_CONTEXT_WINDOWS = {
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
}
MAX_RETRY_DELAY_S = 10.0
# After `[DONE]` the body should end at once; reading that end lets the
# connection go back to the pool, but a server that lingers must not hold the reply.
DRAIN_AFTER_DONE_S = 0.2
MAX_ERROR_MESSAGE_CHARS = 500
# No tokenizer's token is this long: past it, the server is not holding to max_tokens.
MAX_CHARS_PER_TOKEN = 32


class UpstreamMalformed(ProviderError):  # a 502, retried before the first token
    """The model provider sent an invalid response."""


_RETRYABLE = (ProviderUnavailable, ProviderRateLimited, ProviderTimeout, UpstreamMalformed)


class UpstreamRateLimited(ProviderRateLimited):
    """The model provider is rate limiting requests."""

    # The docstring is the client's message (see errors.py); this one carries the
    # upstream's Retry-After for the retry delay.

    def __init__(self, detail: str, *, retry_after_s: float | None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class OpenAICompatProvider:
    """Streams chat completions from one OpenAI-compatible base URL.

    Retries (``settings.max_retries``, exponential backoff from
    ``settings.retry_backoff_s``) happen only while nothing has been relayed to
    the consumer; once a chunk is out, a failure is raised as is.
    """

    def __init__(self, settings: LLMSettings, *, upstream: Upstream | None = None) -> None:
        self._settings = settings
        self._model = settings.model or DEFAULT_MODEL
        self._base_url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._upstream = upstream or open_upstream(self._base_url, settings)
        # Cleared for good the first time the server rejects `stream_options`.
        self._ask_usage = True
        if "context_window" in settings.model_fields_set:
            window = settings.context_window
        else:
            window = KNOWN_CONTEXT_WINDOWS.get(self._model, settings.context_window)
        self._info = ModelInfo(name=self._model, context_window=window, tools=True)

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def aclose(self) -> None:
        await self._upstream.aclose()

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], params: GenerationParams
    ) -> AsyncIterator[StreamChunk]:
        """Stream one reply; cancelling or closing it closes the upstream response."""
        attempt = 0
        while True:
            relayed = False
            body = self._request_body(messages, params)
            chars_left = (params.max_tokens or self._settings.max_tokens) * MAX_CHARS_PER_TOKEN
            try:
                async with self._upstream.post("chat/completions", body) as resp:
                    if resp.status >= 300:  # redirects too: a base URL to fix
                        raise await _status_error(resp)
                    async for chunk in _relay(resp):
                        relayed = True
                        chars_left -= len(chunk.text) + len(chunk.reasoning)
                        if chars_left < 0:
                            yield StreamChunk(finish_reason="length")
                            return
                        yield chunk
                return
            except ProviderError as exc:
                error: ProviderError = exc
            except UpstreamError as exc:
                error = _transport_error(exc, self._base_url)
                error.__cause__ = exc
            if not relayed and self._ask_usage and _rejects_stream_options(error):
                self._ask_usage = False
                continue
            if (
                relayed
                or attempt >= self._settings.max_retries
                or not isinstance(error, _RETRYABLE)
            ):
                raise self._scrubbed(error)
            await asyncio.sleep(self._retry_delay_s(attempt, error))
            attempt += 1

    def _scrubbed(self, error: ProviderError) -> ProviderError:
        """The error with the API key and other credentials out of its detail."""
        error.detail = redact(error.detail, (self._settings.api_key,))
        error.args = (error.detail,)
        return error

    def _request_body(
        self, messages: Sequence[Mapping[str, Any]], params: GenerationParams
    ) -> bytes:
        s = self._settings
        body: dict[str, Any] = {
            "model": params.model or self._model,
            "messages": [m if type(m) is dict else dict(m) for m in messages],
            "stream": True,
            "temperature": s.temperature if params.temperature is None else params.temperature,
            "max_tokens": params.max_tokens or s.max_tokens,
        }
        if params.options:
            body.update({k: v for k, v in params.options.items() if k not in body})
        if self._ask_usage:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    def _retry_delay_s(self, attempt: int, error: ProviderError) -> float:
        # Jitter keeps many turns that failed together from retrying together.
        delay = self._settings.retry_backoff_s * (2.0**attempt) * random.uniform(0.8, 1.2)
        if isinstance(error, UpstreamRateLimited) and error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        return min(delay, MAX_RETRY_DELAY_S)


async def _relay(resp: UpstreamResponse) -> AsyncIterator[StreamChunk]:
    """Turn an SSE (or, from lax servers, a plain JSON) body into chunks."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        yield _completion_chunk(_loads(await resp.aread()))
        return
    decoder = SSEDecoder()
    tools = ToolCallAssembler()
    blocks = resp.aiter_bytes()
    events = 0
    async for block in blocks:
        for payload in decoder.feed(block):
            events += 1
            if payload == b"[DONE]":
                await _drain(blocks)
                if calls := tools.calls():
                    yield StreamChunk(tool_calls=calls)
                return
            chunk = _delta_chunk(tools.take(_loads(payload)))
            if chunk is not None:
                yield chunk
    for payload in decoder.close():
        events += 1
        if payload != b"[DONE]":
            chunk = _delta_chunk(tools.take(_loads(payload)))
            if chunk is not None:
                yield chunk
    if not events:
        # A 204, or a 200 without a single event: not a model that said nothing (that
        # is a stream of empty deltas), so nothing to store as its reply.
        raise UpstreamMalformed("the model provider sent an empty response")
    if calls := tools.calls():
        yield StreamChunk(tool_calls=calls)


async def _drain(blocks: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            async for _ in blocks:
                pass


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProviderUnavailable(
            f"the model provider sent malformed data: {_clip(payload)}"
        ) from None


def _delta_chunk(event: Any) -> StreamChunk | None:
    if not isinstance(event, dict):
        return None
    if event.get("error"):
        raise _error_from_body(event, status=None)
    usage = _usage(event.get("usage"))
    choices = event.get("choices")
    if not choices or not isinstance(choices[0], dict):
        return StreamChunk(usage=usage) if usage else None
    choice = choices[0]
    delta = choice.get("delta") or {}
    text = _text(delta.get("content"))
    reasoning = _text(delta.get("reasoning_content") or delta.get("reasoning"))
    finish = choice.get("finish_reason")
    if not (text or reasoning or finish or usage):
        return None  # role-only or empty keep-alive delta
    return StreamChunk(text=text, reasoning=reasoning, finish_reason=finish, usage=usage)


def _text(value: Any) -> str:
    # Anything but a string (a structured reasoning object, say) is not text to relay.
    return value if type(value) is str else ""


def _completion_chunk(body: Any) -> StreamChunk:
    if not isinstance(body, dict):
        raise ProviderUnavailable("the model provider sent an unexpected reply")
    if body.get("error"):
        raise _error_from_body(body, status=None)
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return StreamChunk(
        text=_text(message.get("content")),
        reasoning=_text(message.get("reasoning_content") or message.get("reasoning")),
        finish_reason=choice.get("finish_reason") or "stop",
        usage=_usage(body.get("usage")),
        tool_calls=whole_calls(message),
    )


def _usage(raw: Any) -> TokenUsage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return TokenUsage(
            prompt_tokens=int(raw.get("prompt_tokens") or 0),
            completion_tokens=int(raw.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None  # unusable figures: the service counts tokens itself


async def _status_error(resp: UpstreamResponse) -> ProviderError:
    body = await resp.aread()
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = body.decode("utf-8", "replace")
    error = _error_from_body(parsed, status=resp.status)
    if isinstance(error, UpstreamRateLimited):
        error.retry_after_s = _retry_after_s(resp.headers.get("retry-after"))
    return error


def _error_from_body(body: Any, *, status: int | None) -> ProviderError:
    """Map an upstream error (HTTP status, or an `error` object in the stream)."""
    message = _upstream_message(body)
    if status is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        status = code if isinstance(code, int) else None
    prefix = f"upstream {status}: " if status else "upstream error: "
    text = prefix + message
    if status in (401, 403):
        return ProviderAuthError(text)
    if status == 429:
        return UpstreamRateLimited(text, retry_after_s=None)
    if status == 408:
        return ProviderTimeout(text)
    if status is not None and 400 <= status < 500:
        return ProviderBadRequest(text)
    return ProviderUnavailable(text)


def _upstream_message(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            for key in ("message", "msg", "detail"):
                if isinstance(err.get(key), str) and err[key]:
                    return _clip(err[key])
        if isinstance(err, str) and err:
            return _clip(err)
        if isinstance(body.get("detail"), str | list):
            return _clip(str(body["detail"]))
    return _clip(body if isinstance(body, str) else orjson.dumps(body).decode())


def _clip(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip() or "(no message)"
    return text if len(text) <= MAX_ERROR_MESSAGE_CHARS else text[:MAX_ERROR_MESSAGE_CHARS] + "…"


def _retry_after_s(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None  # an HTTP date: rare from model APIs, and backoff still applies


def _transport_error(exc: UpstreamError, base_url: str) -> ProviderError:
    if isinstance(exc, ConnectTimeout):
        return ProviderTimeout(f"connecting to {base_url} timed out")
    if isinstance(exc, UpstreamTimeout):
        return ProviderTimeout(f"{base_url} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, UpstreamProtocolError):
        return UpstreamMalformed(f"{base_url} sent an invalid response: {exc}")
    if isinstance(exc, UpstreamConnectError):
        return ProviderUnavailable(f"cannot connect to {base_url}: {exc}")
    return ProviderUnavailable(f"connection to {base_url} failed: {exc or type(exc).__name__}")


def open_upstream(base_url: str, settings: LLMSettings) -> Upstream:
    """chatmem's own HTTP/1.1 client, or httpx if the environment names a proxy for
    `base_url`. A stream holds a connection: max_connections caps the streams at once
    (one past it waits for a connection up to connect_timeout_s, then fails)."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    timeouts = Timeouts(
        connect_s=settings.connect_timeout_s,
        read_s=settings.read_timeout_s,
        write_s=settings.read_timeout_s,
        pool_s=settings.connect_timeout_s,
    )
    client = HttpxUpstream if proxied(base_url) else Http1Client
    return client(
        base_url, headers=headers, timeouts=timeouts, max_connections=settings.max_connections
    )


def _rejects_stream_options(error: ProviderError) -> bool:
    return isinstance(error, ProviderBadRequest) and "stream_options" in error.detail
