"""Text from the server as the terminal shows it."""

from __future__ import annotations

import json
import re
from typing import Any

# Model output may carry terminal control sequences; only text, newlines and tabs print.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# A tool call's arguments and a tool's result are shown on one line, cut to this length.
TOOL_TEXT_CHARS = 160


def printable(text: str) -> str:
    return _CONTROL.sub("", text)


def _one_line(text: str) -> str:
    flat = " ".join(printable(text).split())
    return flat if len(flat) <= TOOL_TEXT_CHARS else flat[: TOOL_TEXT_CHARS - 1] + "…"


def _arguments(raw: Any) -> str:
    """A call's arguments as compact JSON (as sent when they are not JSON)."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(raw)


def tool_lines(msg: dict[str, Any]) -> list[str]:
    """The compact lines of a message of the OpenAI route's agent loop (SPEC §4): one
    "called tool NAME(args)" per tool call of an assistant message, or "tool result ›
    text" for a tool message; [] for any other message."""
    md = msg.get("metadata") or {}
    if msg.get("role") == "tool":
        return [f"tool result › {_one_line(str(msg.get('content') or ''))}"]
    lines = []
    for call in md.get("tool_calls") or []:
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        name = printable(str(function.get("name") or "?"))
        lines.append(f"called tool {name}({_one_line(_arguments(function.get('arguments')))})")
    return lines
