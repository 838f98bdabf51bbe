"""Token-budgeted context assembly: pure, no Redis, no HTTP.

The context sent to the model is the character's system prompt, then the user's
long-term memories with the character, then the session's rolling summary (SPEC §2b),
then the last `window_size` rounds of history not covered by the summary, then the new
user message (then the character's post-history instructions, if any). History is cut
to `max_context_messages` and to a token budget of min(`max_context_tokens`, model
context window − reply tokens − the chat format's per-message overhead), filled newest
first. The system prompt and the new
message are never dropped and no message is ever split. Token counts are the ones stored
with each message at write time, so assembly never re-tokenizes history and costs the
same however many messages the session holds.

The token budget is spent in this order: the system prompt, the new message and the
post-history instructions (never dropped), then the memories (all of them when they fit
`memories_max_tokens`; else the most recently used first), then the summary (within
`summary_max_tokens`: it is kept in preference to the oldest window messages), then the
window, newest first. Memory and summary blocks are counted as their stored token counts
plus `BLOCK_LINE_TOKENS` per line and their heading: an upper bound, never an undercount.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatmem.models import Message, Role
from chatmem.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_REPLY_PRIMER

MEMORIES_HEADING = "What you remember about the user:"
SUMMARY_HEADING = "Summary of the earlier conversation:"
# Upper bounds of the tokens a heading and a line's "- " and newline add.
HEADING_TOKENS = 10
BLOCK_LINE_TOKENS = 2


@dataclass(frozen=True, slots=True)
class MemoryBlock:
    """What the context may hold beyond the window: memories as (text, tokens), most
    recently used first, and the summary with the seq of the newest message it covers."""

    memories: Sequence[tuple[str, int]] = ()
    memories_max_tokens: int = 0
    summary: str = ""
    summary_tokens: int = 0
    summary_max_tokens: int = 0
    summary_through_seq: int = 0


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
    memories_tokens: int = 0
    memories_used: int = 0
    memories_dropped: int = 0
    summary_tokens: int = 0
    summary_used: bool = False
    summary_through_seq: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.system_tokens
            + self.memories_tokens
            + self.summary_tokens
            + self.history_tokens
            + self.new_message_tokens
        )

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
            "memories": self.memories_tokens,
            "memories_used": self.memories_used,
            "memories_dropped": self.memories_dropped,
            "summary": self.summary_tokens,
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
    extra: MemoryBlock | None = None,
) -> AssembledContext:
    """Build the model's messages from stored history (oldest first) and the new message.

    `new_message` may be None to preview the context without a new turn. `extra`: the
    memories and the summary (none by default: the seeds' pure window).
    """
    extra = extra or MemoryBlock()
    budget = limits.token_budget()
    new_tokens = new_message.token_count if new_message else 0
    fixed_tokens = system_tokens + post_history_tokens
    left = budget - fixed_tokens - new_tokens

    memory_lines, memory_tokens = _fill_memories(extra, left)
    left -= memory_tokens
    summary_tokens = extra.summary_tokens + HEADING_TOKENS
    use_summary = bool(extra.summary) and summary_tokens <= min(extra.summary_max_tokens, left)
    if use_summary:
        left -= summary_tokens
    else:
        summary_tokens = 0
    through = extra.summary_through_seq if use_summary else 0
    if through:
        history = [m for m in history if m.seq > through]  # the summary stands for them
    window = list(history[-2 * limits.window_size :]) if limits.window_size > 0 else []
    dropped_by_window = len(history) - len(window)

    fixed = (1 if system_prompt else 0) + (1 if new_message else 0) + (1 if post_history else 0)
    fixed += (1 if memory_lines else 0) + (1 if use_summary else 0)
    room = max(0, limits.max_context_messages - fixed)
    by_count = window[-room:] if room else []
    dropped_by_count = len(window) - len(by_count)

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
    if memory_lines:
        block = "\n".join(f"- {line}" for line in memory_lines)
        out.append({"role": "system", "content": f"{MEMORIES_HEADING}\n{block}"})
    if use_summary:
        out.append({"role": "system", "content": f"{SUMMARY_HEADING}\n{extra.summary}"})
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
        memories_tokens=memory_tokens,
        memories_used=len(memory_lines),
        memories_dropped=len(extra.memories) - len(memory_lines),
        summary_tokens=summary_tokens,
        summary_used=use_summary,
        summary_through_seq=through,
    )


def _fill_memories(extra: MemoryBlock, left: int) -> tuple[list[str], int]:
    """The memories that fit min(their budget, what is left), in order (most recently
    used first), and their block's tokens (0 with none)."""
    room = min(extra.memories_max_tokens, left) - HEADING_TOKENS
    lines: list[str] = []
    used = 0
    for text, tokens in extra.memories:
        cost = tokens + BLOCK_LINE_TOKENS
        if used + cost <= room:
            lines.append(text)
            used += cost
    return lines, (used + HEADING_TOKENS if lines else 0)
