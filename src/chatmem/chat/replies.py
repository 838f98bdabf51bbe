"""What a finished reading leaves: the reply's usage and cost, or the error payload that
ends its event stream (used by the turn service, chat/turns.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatmem.chat.generation import Generation, Reading
from chatmem.config import ModelPrice
from chatmem.models import Usage
from chatmem.tokens import TOKENS_PER_MESSAGE, cost_usd


def reply_usage(
    gen: Generation, reading: Reading, completion: int, prices: Mapping[str, ModelPrice]
) -> Usage:
    """The provider's usage when it gave one, else counted (the context's stored token
    counts and the reply's); the cost from the price table."""
    chunk = reading.usage
    if chunk is not None and chunk.usage is not None:
        prompt_t = chunk.usage.prompt_tokens
        completion_t = chunk.usage.completion_tokens
    else:
        n_msgs = len(gen.context.messages)
        prompt_t = gen.context.total_tokens + TOKENS_PER_MESSAGE * n_msgs
        completion_t = completion
    model = gen.params.model or gen.host.provider.info.name
    return Usage(prompt_t, completion_t, cost_usd(model, prompt_t, completion_t, prices))


def error_payload(reading: Reading) -> dict[str, Any]:
    err = reading.error
    if err is None:
        return {"code": "interrupted", "message": "the reply was interrupted"}
    return {"code": err.code, "message": err.message}
