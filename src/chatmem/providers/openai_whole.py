"""JSON turns in one non-streamed request, when CHATMEM_LLM_WHOLE_JSON_REPLIES is on.

A turn that relays nothing (a JSON turn) needs the reply only once it is whole: asked
for it in one piece, the upstream sends one JSON body, read once, instead of a chunk per
token, each a read, an SSE parse and a chunk object (~50 µs a chunk when the
model paces them; docs/performance.md). The catch is why it is opt-in: a whole reply
stopped half-way (POST …/stop, a shutdown) has no partial text to keep, where a streamed
one keeps what was said (SPEC §3.6). `providers.base.reply_chunks` picks `whole` for
such turns when `answers_whole`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from chatmem.errors import ProviderError
from chatmem.providers.base import GenerationParams, StreamChunk
from chatmem.providers.openai_compat import (
    _RETRYABLE,
    OpenAICompatProvider,
    _relay,
    _status_error,
    _transport_error,
)
from chatmem.providers.upstream import Timeouts, UpstreamError

# A reply asked for whole arrives when the model has finished: its read timeout grows
# with the tokens it may write (4 tokens/s at the least).
WHOLE_READ_S_PER_TOKEN = 0.25


class OpenAIWholeReplies(OpenAICompatProvider):
    """OpenAICompatProvider that can also answer a JSON turn in one request."""

    @property
    def answers_whole(self) -> bool:
        """JSON turns in one non-streamed request (CHATMEM_LLM_WHOLE_JSON_REPLIES)."""
        return self._settings.whole_json_replies

    async def whole(
        self, messages: Sequence[Mapping[str, Any]], params: GenerationParams
    ) -> AsyncIterator[StreamChunk]:
        """The reply in one non-streamed request, for a turn that relays nothing (a JSON
        turn): one read of one JSON body instead of a read, an SSE parse and a chunk per
        token. Yields what `stream` would (usually one chunk: the text, finish reason
        and usage), with the same retries; nothing is out until the reply is whole, so
        every retryable failure is retried. Stopped before the end (POST …/stop, a
        shutdown) it has no partial text to keep: the reply is stored empty, marked
        interrupted, where a streamed one keeps what was said; hence opt-in. The
        model sends nothing until it has finished, so the read timeout is
        `read_timeout_s` plus WHOLE_READ_S_PER_TOKEN for each token it may write."""
        body = _whole_body(self._request_body(messages, params))
        s = self._settings
        max_tokens = params.max_tokens or s.max_tokens
        timeouts = Timeouts(
            connect_s=s.connect_timeout_s,
            read_s=s.read_timeout_s + WHOLE_READ_S_PER_TOKEN * max_tokens,
            write_s=s.read_timeout_s,
            pool_s=s.connect_timeout_s,
        )
        attempt = 0
        while True:
            try:
                async with self._upstream.post("chat/completions", body, timeouts) as resp:
                    if resp.status >= 300:
                        raise await _status_error(resp)
                    chunks = [chunk async for chunk in _relay(resp)]
                for chunk in chunks:
                    yield chunk
                return
            except ProviderError as exc:
                error: ProviderError = exc
            except UpstreamError as exc:
                error = _transport_error(exc, self._base_url)
                error.__cause__ = exc
            if attempt >= s.max_retries or not isinstance(error, _RETRYABLE):
                raise self._scrubbed(error)
            await asyncio.sleep(self._retry_delay_s(attempt, error))
            attempt += 1


def _whole_body(streamed: bytes) -> bytes:
    """The request body of `_request_body`, asking for the reply in one piece."""
    body = orjson.loads(streamed)
    body["stream"] = False
    body.pop("stream_options", None)
    return orjson.dumps(body)
