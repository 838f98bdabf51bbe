"""Tool calls in the fake model's replies (tests/fake_openai.py), as OpenAI sends them.

    Reply(tool_calls=[ToolCall("get_weather", '{"city": "Paris"}')])

Streamed, each call is sent the way OpenAI streams one: a first `delta.tool_calls`
fragment with `index`, `id`, `type` and the function's name, then its arguments in
`pieces` fragments; the finishing chunk says `tool_calls`. Not streamed, the calls are
`message.tool_calls`, with `content: null` when the reply has no text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count(1)


@dataclass
class ToolCall:
    name: str
    arguments: str = "{}"
    id: str = field(default_factory=lambda: f"call_fake{next(_ids)}")
    pieces: int = 3  # how many fragments the arguments are streamed in

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def call_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """The `delta`s that stream `calls`."""
    out: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call.id, "type": "function"}
        out.append({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]})
        args, n = call.arguments, max(1, call.pieces)
        for i in range(n):
            piece = args[i * len(args) // n : (i + 1) * len(args) // n]
            if piece:
                out.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return out
