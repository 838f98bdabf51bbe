"""The fake model's answers to background work (memory_prompts.py): a perfect summary
(the old notes plus every new user line, verbatim), canned memory operations and titles,
and bad answers on demand. Chat turns get `chat`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chatmem.memory_prompts import EXTRACT_TASK, SUMMARY_TASK, TITLE_TASK
from tests.fake_openai import Reply


def kind_of(body: Any) -> str:
    first = body["messages"][0]["content"] if body and body.get("messages") else ""
    for kind, task in (("summary", SUMMARY_TASK), ("extract", EXTRACT_TASK)):
        if first.startswith(task):
            return kind
    return "title" if first.startswith(TITLE_TASK) else "chat"


def perfect_summary(body: Any) -> str:
    """The notes so far and every line of the new messages, as given."""
    prompt = body["messages"][-1]["content"]
    notes, _, new = prompt.partition("\n\nNew messages:\n")
    notes = notes.removeprefix("Notes so far:\n")
    lines = [] if notes == "(none yet)" else [notes]
    return "\n".join([*lines, *new.splitlines()])


@dataclass
class MemoryModel:
    chat: Reply = field(default_factory=lambda: Reply(text="Noted."))
    extract: str = '{"ops": []}'
    title: str = "Kyoto trip"
    title_delay_s: float = 0.0
    summary_status: int = 200
    summary_delay_s: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    bodies: list[Any] = field(default_factory=list)

    def __call__(self, body: Any) -> Reply:
        kind = kind_of(body)
        self.calls[kind] += 1
        self.bodies.append(body)
        if kind == "summary":
            return Reply(
                text=perfect_summary(body),
                status=self.summary_status,
                headers_delay_s=self.summary_delay_s,
            )
        if kind == "extract":
            return Reply(text=self.extract)
        if kind == "title":
            return Reply(text=self.title, headers_delay_s=self.title_delay_s)
        return self.chat

    def chat_bodies(self) -> list[Any]:
        return [b for b in self.bodies if kind_of(b) == "chat"]
