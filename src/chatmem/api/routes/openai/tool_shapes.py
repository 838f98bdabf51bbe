"""OpenAI's tool fields on the chat-completions wire (pure: no I/O): the messages' tool
calls and tool results as requests carry them, and a reply's calls as a completion
and as stream chunks carry them.

A streamed reply's calls are sent once the model has finished them (chatmem stores a
reply whole), each the way OpenAI streams one: a first `delta.tool_calls` fragment with
`index`, `id`, `type` and `function.name` (empty arguments), then its arguments; clients
join the fragments by `index`, as they do OpenAI's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatmem.chat.reconcile import ClientMessage
from chatmem.models import TOOL_CALLS, Message

# As many as OpenAI takes; more is a client's mistake, not a reason to call the model.
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
_STRICT = ConfigDict(extra="ignore", strict=True)

# --- requests ---------------------------------------------------------------------------


class FunctionCallIn(BaseModel):
    model_config = _STRICT

    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field("", max_length=100_000)


class ToolCallIn(BaseModel):
    """One tool call of an assistant message the client sends back."""

    model_config = _STRICT

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.function.name, "arguments": self.function.arguments},
        }


def client_message(
    role: str,
    content: str,
    tool_calls: Sequence[ToolCallIn] | None,
    tool_call_id: str | None,
) -> ClientMessage:
    calls = tuple(c.wire() for c in tool_calls or ()) if role == "assistant" else ()
    return ClientMessage(role, content, calls, tool_call_id if role == "tool" else None)


def uses_tools(tools: Any, messages: Sequence[ClientMessage]) -> bool:
    """True if the request needs a model that can do tools."""
    return bool(tools) or any(m.tool_calls or m.role == "tool" for m in messages)


# --- responses --------------------------------------------------------------------------


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


def reply_calls(message: Message) -> list[dict[str, Any]]:
    """A stored reply's tool calls (none for most replies)."""
    calls = message.metadata.get(TOOL_CALLS)
    return list(calls) if isinstance(calls, list) else []


def call_deltas(calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `delta`s that stream `calls`: per call, its name, then its arguments."""
    out: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        head = {
            "index": index,
            "id": call.get("id", ""),
            "type": "function",
            "function": {"name": function.get("name", ""), "arguments": ""},
        }
        out.append({"tool_calls": [head]})
        arguments = function.get("arguments") or ""
        if arguments:
            out.append({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
    return out
