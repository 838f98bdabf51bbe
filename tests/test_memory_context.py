"""Context assembly with memories and a summary (context.py, pure): whatever the sizes,
the context stays within its budget, the system prompt and the new message are never
dropped, memories all go in when they fit (else the most recently used first), and the
summary is kept in preference to the oldest window messages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatmem.context import (
    MEMORIES_HEADING,
    SUMMARY_HEADING,
    ContextLimits,
    MemoryBlock,
    assemble_context,
)
from chatmem.models import Message, Role


def history(sizes: list[int]) -> list[Message]:
    out = []
    for i, n in enumerate(sizes):
        m = Message(Role.USER if i % 2 == 0 else Role.ASSISTANT, f"m{i}", n)
        m.seq = i + 1
        out.append(m)
    return out


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), max_size=40),
    memories=st.lists(st.integers(1, 120), max_size=12),
    summary_tokens=st.integers(0, 500),
    covered=st.integers(0, 40),
    system_tokens=st.integers(1, 3000),
    max_tokens=st.integers(50, 4000),
    window=st.integers(1, 20),
)
def test_never_over_budget_and_the_system_prompt_stays(
    sizes: list[int],
    memories: list[int],
    summary_tokens: int,
    covered: int,
    system_tokens: int,
    max_tokens: int,
    window: int,
) -> None:
    limits = ContextLimits(window_size=window, max_context_tokens=max_tokens)
    new = Message(Role.USER, "new", 5)
    block = MemoryBlock(
        memories=[(f"fact {i}", n) for i, n in enumerate(memories)],
        memories_max_tokens=300,
        summary="the summary" if summary_tokens else "",
        summary_tokens=summary_tokens,
        summary_max_tokens=400,
        summary_through_seq=min(covered, len(sizes)),
    )
    ctx = assemble_context(
        system_prompt="SYSTEM",
        system_tokens=system_tokens,
        history=history(sizes),
        new_message=new,
        limits=limits,
        extra=block,
    )
    assert ctx.messages[0] == {"role": "system", "content": "SYSTEM"}
    assert ctx.messages[-1]["content"] == "new"
    fixed = system_tokens + 5
    if fixed <= limits.token_budget():
        assert ctx.total_tokens <= limits.token_budget()
    else:  # only what is never dropped is left
        assert len(ctx.messages) == 2 and ctx.total_tokens == fixed
    assert ctx.memories_tokens <= 300 and ctx.summary_tokens <= 400
    kept = [m.seq for m in ctx.history]
    assert kept == sorted(kept) and all(s > ctx.summary_through_seq for s in kept)
    if kept:  # contiguous up to the newest
        assert kept == list(range(kept[0], len(sizes) + 1))


def test_all_memories_when_they_fit_else_the_most_recent_first() -> None:
    limits = ContextLimits()
    new = Message(Role.USER, "hi", 1)
    few = MemoryBlock(memories=[("a", 5), ("b", 5), ("c", 5)], memories_max_tokens=300)
    ctx = assemble_context(
        system_prompt="S", system_tokens=1, history=[], new_message=new, limits=limits, extra=few
    )
    assert ctx.messages[1]["content"] == f"{MEMORIES_HEADING}\n- a\n- b\n- c"
    many = MemoryBlock(memories=[(f"m{i}", 40) for i in range(20)], memories_max_tokens=300)
    ctx = assemble_context(
        system_prompt="S", system_tokens=1, history=[], new_message=new, limits=limits, extra=many
    )
    lines = ctx.messages[1]["content"].splitlines()[1:]
    assert lines == [f"- m{i}" for i in range(len(lines))] and 0 < len(lines) < 20
    assert ctx.memories_dropped == 20 - len(lines)


def test_the_summary_is_kept_before_the_oldest_window_messages() -> None:
    limits = ContextLimits(window_size=10, max_context_tokens=300, max_context_messages=50)
    block = MemoryBlock(summary="earlier", summary_tokens=100, summary_max_tokens=400)
    ctx = assemble_context(
        system_prompt="S",
        system_tokens=10,
        history=history([40] * 10),
        new_message=Message(Role.USER, "now", 5),
        limits=limits,
        extra=block,
    )
    assert ctx.messages[1]["content"] == f"{SUMMARY_HEADING}\nearlier"
    assert ctx.summary_used and ctx.dropped_by_budget > 0  # window messages went first
    assert ctx.total_tokens <= limits.token_budget()
