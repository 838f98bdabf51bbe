"""A reply's tool calls, put together from what an OpenAI-compatible model streams (pure).

A streamed reply sends each call in fragments under `delta.tool_calls`: the first
fragment of call `index` carries its `id`, `type` and `function.name`, the next ones
pieces of `function.arguments`, to be joined in order. Some servers send a call whole in
one fragment, or leave `index` out when there is one call; a plain JSON reply has them
whole under `message.tool_calls`. Either way chatmem relays, stores and sends back the
calls as OpenAI's objects: `{"id", "type": "function", "function": {"name", "arguments"}}`.
"""

from __future__ import annotations

import uuid
from typing import Any


class ToolCallAssembler:
    """Joins the `delta.tool_calls` fragments of one streamed reply."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def take(self, event: Any) -> Any:
        """Feed a streamed event's `delta.tool_calls`; the event, for the text's parser."""
        if isinstance(event, dict):
            choices = event.get("choices")
            if choices and isinstance(choices[0], dict):
                delta = choices[0].get("delta")
                if isinstance(delta, dict) and "tool_calls" in delta:
                    self.feed(delta["tool_calls"])
        return event

    def feed(self, fragments: Any) -> None:
        """Take one delta's `tool_calls` (anything else is ignored)."""
        if not isinstance(fragments, list):
            return
        for n, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index")
            call = self._calls.setdefault(index if isinstance(index, int) else n, _empty())
            if isinstance(fragment.get("id"), str) and fragment["id"]:
                call["id"] = fragment["id"]
            if isinstance(fragment.get("type"), str) and fragment["type"]:
                call["type"] = fragment["type"]
            function = fragment.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str) and function["name"]:
                    call["function"]["name"] = function["name"]
                if isinstance(function.get("arguments"), str):
                    call["function"]["arguments"] += function["arguments"]

    def calls(self) -> tuple[dict[str, Any], ...]:
        """The calls so far, in index order (those without a name left out); a call the
        server gave no id gets one, so that a tool message can answer it."""
        out = []
        for i in sorted(self._calls):
            call = self._calls[i]
            if call["function"]["name"]:
                call["id"] = call["id"] or f"call_{uuid.uuid4().hex[:24]}"
                out.append(call)
        return tuple(out)


def whole_calls(message: Any) -> tuple[dict[str, Any], ...]:
    """The tool calls of a plain (not streamed) reply's `message`."""
    if not isinstance(message, dict):
        return ()
    assembler = ToolCallAssembler()
    assembler.feed(message.get("tool_calls"))
    return assembler.calls()


def _empty() -> dict[str, Any]:
    return {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
