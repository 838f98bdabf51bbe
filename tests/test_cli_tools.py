"""The terminal shows the OpenAI route's agent loop compactly (SPEC §4): an assistant
message that only calls tools as "called tool NAME(args)", a tool's result as "tool
result › text"; as text (no Rich markup, no control sequences), cut to one line."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from chatmem.cli.chat import TerminalChat
from chatmem.cli.text import TOOL_TEXT_CHARS, tool_lines

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris",\n "unit": "C"}'},
}


def _shown(msgs: list[dict[str, Any]], *, terminal: bool) -> str:
    console = Console(record=True, width=200, force_terminal=terminal, color_system=None)
    chat = TerminalChat(console, None, None, {"helper": "Helper"}, None)  # type: ignore[arg-type]
    chat.session = {"character_id": "helper"}
    for msg in msgs:
        chat.show_message(msg)
    return console.export_text()


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_tool_calls_and_results_are_compact_lines(terminal: bool) -> None:
    shown = _shown(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "metadata": {"tool_calls": [CALL]}},
            {"role": "tool", "content": "sunny,\n21 C", "metadata": {"tool_call_id": "call_1"}},
            {"role": "assistant", "content": "It is sunny.", "metadata": {}},
        ],
        terminal=terminal,
    )
    lines = [line.rstrip() for line in shown.splitlines() if line.strip()]
    assert 'Helper › called tool get_weather({"city":"Paris","unit":"C"})' in lines
    assert "tool result › sunny, 21 C" in lines
    assert "It is sunny." in shown


def test_tool_text_is_text_and_one_line() -> None:
    evil = "[bold red]x[/] \x1b[31mred\x1b[0m " + "y" * 500
    call = {"function": {"name": "[link=http://e]n[/link]", "arguments": "not json"}}
    shown = _shown(
        [
            {"role": "assistant", "content": "", "metadata": {"tool_calls": [call]}},
            {"role": "tool", "content": evil},
        ],
        terminal=True,
    )
    assert "called tool [link=http://e]n[/link](not json)" in shown
    assert "tool result › [bold red]x[/] [31mred[0m y" in shown
    assert "\x1b" not in shown
    [result] = tool_lines({"role": "tool", "content": evil})
    assert len(result) == len("tool result › ") + TOOL_TEXT_CHARS and result.endswith("…")
    assert tool_lines({"role": "assistant", "content": "hi", "metadata": {}}) == []
