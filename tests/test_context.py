"""assemble_context is pure: plain values in, plain values out, no Redis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import pytest
import tiktoken

from chatmem.context import ContextLimits, assemble_context
from chatmem.models import Message, Role
from chatmem.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_REPLY_PRIMER


def history(n: int, tokens: int = 10) -> list[Message]:
    """n messages alternating user / assistant, oldest first, contents '0'..'n-1'."""
    roles = (Role.USER, Role.ASSISTANT)
    return [Message(roles[i % 2], str(i), tokens, seq=i + 1) for i in range(n)]


def contents(ctx_messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in ctx_messages]


def test_budget_of_5000_over_1000_token_messages_keeps_5() -> None:
    ctx = assemble_context(
        system_prompt="",
        system_tokens=0,
        history=history(20, tokens=1000),
        new_message=None,
        limits=ContextLimits(window_size=20, max_context_tokens=5000),
    )
    assert contents(ctx.messages) == ["15", "16", "17", "18", "19"]
    assert (ctx.history_tokens, ctx.budget_tokens, ctx.dropped_by_budget) == (5000, 5000, 15)


def test_layout_system_history_new_post_history() -> None:
    new = Message(Role.USER, "new", 3)
    ctx = assemble_context(
        system_prompt="You are a teacher.",
        system_tokens=5,
        history=history(4),
        new_message=new,
        limits=ContextLimits(),
        post_history="Stay in character.",
        post_history_tokens=4,
    )
    assert ctx.messages == [
        {"role": "system", "content": "You are a teacher."},
        {"role": "user", "content": "0"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "2"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "new"},
        {"role": "system", "content": "Stay in character."},
    ]
    assert (ctx.system_tokens, ctx.history_tokens, ctx.new_message_tokens) == (9, 40, 3)
    assert ctx.total_tokens == 52
    assert ctx.breakdown()["history_messages"] == 4


def test_window_of_n_rounds() -> None:
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=1,
        history=history(30),
        new_message=Message(Role.USER, "new", 1),
        limits=ContextLimits(window_size=3),
    )
    assert contents(ctx.messages) == ["S", "24", "25", "26", "27", "28", "29", "new"]
    assert ctx.dropped_by_window == 24


@pytest.mark.parametrize("window", [1, 10, 20])
def test_window_sizes(window: int) -> None:
    ctx = assemble_context(
        system_prompt="",
        system_tokens=0,
        history=history(100),
        new_message=None,
        limits=ContextLimits(window_size=window, max_context_messages=100),
    )
    assert len(ctx.history) == 2 * window


def test_max_context_messages_counts_system_and_new_message() -> None:
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=1,
        history=history(40),
        new_message=Message(Role.USER, "new", 1),
        limits=ContextLimits(window_size=20, max_context_messages=6),
    )
    assert contents(ctx.messages) == ["S", "36", "37", "38", "39", "new"]
    assert (ctx.dropped_by_window, ctx.dropped_by_count) == (0, 36)


def test_system_prompt_is_never_dropped() -> None:
    # The system prompt alone is over the budget: it stays, and so does the new message.
    ctx = assemble_context(
        system_prompt="huge",
        system_tokens=10_000,
        history=history(10),
        new_message=Message(Role.USER, "new", 50),
        limits=ContextLimits(max_context_tokens=5000),
    )
    assert contents(ctx.messages) == ["huge", "new"]
    assert ctx.dropped_by_budget == 10
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=1,
        history=history(10),
        new_message=None,
        limits=ContextLimits(max_context_messages=1),
    )
    assert contents(ctx.messages) == ["S"]


def test_system_prompt_tokens_count_in_the_budget() -> None:
    """The system prompt and the post-history instructions take their tokens from the
    budget before history does (with them counted as 0, history filled the whole
    budget and the model was sent more than the budget allows)."""
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=500,
        history=history(20, tokens=100),
        new_message=Message(Role.USER, "new", 100),
        limits=ContextLimits(window_size=10, max_context_tokens=1300),
        post_history="P",
        post_history_tokens=200,
    )
    # 1300 - 500 - 200 - 100 leaves room for 5 messages of 100, the newest.
    assert [m.content for m in ctx.history] == ["15", "16", "17", "18", "19"]
    assert (ctx.system_tokens, ctx.history_tokens, ctx.total_tokens) == (700, 500, 1300)
    assert ctx.dropped_by_budget == 15


def test_never_splits_or_skips_a_message() -> None:
    # Newest first: 300 fits, then 5000 does not; the 10-token messages before it are
    # not used to fill the gap, so the history stays contiguous; no message is cut.
    msgs = [Message(Role.USER, "old", 10), Message(Role.USER, "old2", 10)]
    msgs += [Message(Role.ASSISTANT, "big", 5000), Message(Role.USER, "recent", 300)]
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=100,
        history=msgs,
        new_message=Message(Role.USER, "new", 100),
        limits=ContextLimits(max_context_tokens=1000),
    )
    assert contents(ctx.messages) == ["S", "recent", "new"]
    assert ctx.history_tokens == 300 and ctx.dropped_by_budget == 3


def test_budget_is_the_smaller_of_the_setting_and_the_model_window() -> None:
    format_tokens = TOKENS_PER_MESSAGE * (50 + 2) + TOKENS_PER_REPLY_PRIMER
    big_model = ContextLimits(max_context_tokens=20_000, model_context_window=128_000)
    assert big_model.token_budget() == 20_000
    small = ContextLimits(max_context_tokens=20_000, model_context_window=2048, reply_tokens=512)
    assert small.token_budget() == 2048 - 512 - format_tokens
    assert ContextLimits(model_context_window=100, reply_tokens=512).token_budget() == 0

    # With a 2048-token model, 100-token messages: what fits is exactly the budget.
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=48,
        history=history(40, tokens=100),
        new_message=Message(Role.USER, "new", 100),
        limits=small,
    )
    room = small.token_budget() - 48 - 100
    assert len(ctx.history) == room // 100
    assert ctx.total_tokens <= small.token_budget()


def test_empty_history_and_no_system_prompt() -> None:
    ctx = assemble_context(
        system_prompt="",
        system_tokens=0,
        history=[],
        new_message=Message(Role.USER, "hi", 1),
        limits=ContextLimits(),
    )
    assert ctx.messages == [{"role": "user", "content": "hi"}]


def test_uses_stored_token_counts_and_does_not_retokenize(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> list[int]:
        raise AssertionError("assemble_context re-tokenized a message")

    for name in ("encode", "encode_ordinary", "encode_batch"):
        monkeypatch.setattr(tiktoken.Encoding, name, fail)
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=1,
        history=history(10, tokens=7),
        new_message=Message(Role.USER, "x" * 1000, 2),
        limits=ContextLimits(),
    )
    assert ctx.history_tokens == 70 and ctx.new_message_tokens == 2


class CountingHistory(Sequence[Message]):
    """A stored history that counts how many of its messages are read."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages
        self.touched = 0

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        got = self._messages[index]
        self.touched += len(got) if isinstance(got, list) else 1
        return got


@pytest.mark.parametrize("window", [1, 5])
def test_cost_does_not_grow_with_the_stored_history(window: int) -> None:
    """Assembly reads only the window: 10 000 stored messages cost what 10 do."""
    touched = {}
    for n in (10, 10_000):
        stored = CountingHistory(history(n))
        ctx = assemble_context(
            system_prompt="S",
            system_tokens=1,
            history=stored,
            new_message=None,
            limits=ContextLimits(window_size=window),
        )
        assert len(ctx.history) == 2 * window
        touched[n] = stored.touched
    assert touched[10_000] == touched[10] == 2 * window
