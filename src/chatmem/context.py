"""Token-budgeted context assembly: pure, no Redis, no HTTP.

The context sent to the model is the character's system prompt, then the last
`window_size` rounds of history, then the new user message (then the character's
post-history instructions, if any). History is cut to `max_context_messages` and to a
token budget of min(`max_context_tokens`, model context window − reply tokens − the
chat format's per-message overhead), filled newest first. The system prompt and the new
message are never dropped and no message is ever split. Token counts are the ones stored
with each message at write time, so assembly never re-tokenizes history and costs the
same however many messages the session holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatmem.models import Message, Role
from chatmem.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_REPLY_PRIMER


@dataclass(frozen=True, slots=True)
class ContextLimits:
    window_size: int = 10
    max_context_messages: int = 50
    max_context_tokens: int = 20_000
    model_context_window: int = 128_000
    reply_tokens: int = 512

    def token_budget(self) -> int:
        # The model's window must also hold the chat format's per-message tokens.
        format_tokens = TOKENS_PER_MESSAGE * (self.max_context_messages + 2)
        format_tokens += TOKENS_PER_REPLY_PRIMER
        return max(
            0,
            min(
                self.max_context_tokens,
                self.model_context_window - self.reply_tokens - format_tokens,
            ),
        )


@dataclass(slots=True)
class AssembledContext:
    messages: list[dict[str, Any]]
    history: list[Message]
    system_tokens: int
    history_tokens: int
    new_message_tokens: int
    budget_tokens: int
    dropped_by_window: int
    dropped_by_count: int
    dropped_by_budget: int

    @property
    def total_tokens(self) -> int:
        return self.system_tokens + self.history_tokens + self.new_message_tokens

    def breakdown(self) -> dict[str, int]:
        return {
            "system": self.system_tokens,
            "history": self.history_tokens,
            "new_message": self.new_message_tokens,
            "total": self.total_tokens,
            "budget": self.budget_tokens,
            "history_messages": len(self.history),
            "dropped_by_window": self.dropped_by_window,
            "dropped_by_count": self.dropped_by_count,
            "dropped_by_budget": self.dropped_by_budget,
        }


def assemble_context(
    *,
    system_prompt: str,
    system_tokens: int,
    history: Sequence[Message],
    new_message: Message | None,
    limits: ContextLimits,
    post_history: str = "",
    post_history_tokens: int = 0,
) -> AssembledContext:
    """Build the model's messages from stored history (oldest first) and the new message.

    `new_message` may be None to preview the context without a new turn.
    """
    window = list(history[-2 * limits.window_size :]) if limits.window_size > 0 else []
    dropped_by_window = len(history) - len(window)

    fixed = (1 if system_prompt else 0) + (1 if new_message else 0) + (1 if post_history else 0)
    room = max(0, limits.max_context_messages - fixed)
    by_count = window[-room:] if room else []
    dropped_by_count = len(window) - len(by_count)

    budget = limits.token_budget()
    new_tokens = new_message.token_count if new_message else 0
    fixed_tokens = system_tokens + post_history_tokens
    left = budget - fixed_tokens - new_tokens
    kept: list[Message] = []
    for msg in reversed(by_count):
        if msg.token_count > left:
            break  # newest first, never skip over a message: the history stays contiguous
        kept.append(msg)
        left -= msg.token_count
    kept.reverse()
    # A tool's result whose call was cut off is not sent: a model refuses it alone.
    while kept and kept[0].role is Role.TOOL:
        kept.pop(0)

    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    out.extend(m.to_llm() for m in kept)
    if new_message:
        out.append(new_message.to_llm())
    if post_history:
        out.append({"role": "system", "content": post_history})
    return AssembledContext(
        messages=out,
        history=kept,
        system_tokens=fixed_tokens,
        history_tokens=sum(m.token_count for m in kept),
        new_message_tokens=new_tokens,
        budget_tokens=budget,
        dropped_by_window=dropped_by_window,
        dropped_by_count=dropped_by_count,
        dropped_by_budget=len(by_count) - len(kept),
    )
