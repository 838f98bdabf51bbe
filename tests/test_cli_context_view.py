"""The terminal's /context (cli/slash.py): the table, the summary and the token line,
from the view `GET /v1/sessions/{sid}/context` returns (chat/service.py
`preview_context`), without a server."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from chatmem.cli import slash

VIEW: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You are Luna.", "token_count": 5},
        {"role": "user", "content": "I have a cat called Miso.", "token_count": 8},
    ],
    "tokens": {"total": 13, "budget": 4000, "system": 5, "history": 8, "summary": 20},
    "memory": {
        "summary": {"text": "The user talked about their cat.", "covers_messages": 6},
        "summary_in_context": True,
    },
}


class StubChat:
    """What /context uses of the terminal chat; the API answers `view` at once."""

    def __init__(self, view: dict[str, Any]) -> None:
        self.console = Console(file=io.StringIO(), width=100)
        self.session = {"session_id": "s1"}
        self.portal = self
        self.api = self
        self._view = view

    def call(self, func: Any, *args: Any) -> Any:
        return func(*args)

    def context(self, session_id: str) -> dict[str, Any]:
        assert session_id == "s1"
        return self._view

    def output(self) -> str:
        file = self.console.file
        assert isinstance(file, io.StringIO)
        return file.getvalue()


def test_context_shows_the_messages_the_summary_and_the_budget() -> None:
    chat = StubChat(VIEW)
    assert slash.command(chat, "/context")  # type: ignore[arg-type]
    out = chat.output()
    assert "I have a cat called Miso." in out
    # It was never printed: the text is at memory.summary.text, not view["summary"].
    assert "summary of earlier messages: The user talked about their cat." in out
    assert "13 of 4000 tokens (system 5, history 8)" in out


def test_context_without_a_summary_prints_no_summary_line() -> None:
    chat = StubChat(VIEW | {"memory": {"summary": None}})
    slash.command(chat, "/context")  # type: ignore[arg-type]
    assert "summary of earlier messages" not in chat.output()
