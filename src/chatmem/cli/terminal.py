"""The terminal chat's input: prompt_toolkit on a terminal (line editing, arrow keys,
history kept across runs, bracketed pastes of any size), a plain `input()` when stdin is
a pipe. While a reply streams, keys typed are not echoed into it: they wait, and become
the start of the next prompt's line.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import platformdirs
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from rich.console import Console

HISTORY_FILE = "chat_history"
# Escape sequences (arrow keys, bracketed-paste markers) typed ahead during a reply.
_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|O.|.)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def history_path() -> Path:
    """`chat_history` in the data dir (CHATMEM_DATA_DIR, else the user data dir)."""
    base = os.environ.get("CHATMEM_DATA_DIR") or platformdirs.user_data_dir("chatmem")
    return Path(base) / HISTORY_FILE


def _owner_only_history(path: Path) -> History:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)  # what was typed is the user's own: readable by them only
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(path))


def clean_typeahead(raw: str) -> str:
    """Keys typed during a reply as text for the next line: no escape sequences or
    control characters; newlines (Enter) become spaces."""
    text = _ESCAPES.sub("", raw).replace("\r", " ").replace("\n", " ")
    return _CONTROLS.sub("", text)


class LineReader:
    def __init__(self, console: Console, *, interactive: bool | None = None) -> None:
        self._console = console
        self._interactive = (
            sys.stdin.isatty() and sys.stdout.isatty() if interactive is None else interactive
        )
        self._typeahead = ""
        self._session: PromptSession[str] | None = None
        if self._interactive:
            self._session = PromptSession(history=_owner_only_history(history_path()))

    @property
    def interactive(self) -> bool:
        return self._interactive

    def read(self, prompt: str, default: str = "") -> str:
        """One line (a paste may hold several), starting from `default` on a terminal;
        EOFError on Ctrl+D, KeyboardInterrupt on Ctrl+C."""
        if self._session is None:
            return self._console.input(prompt)
        typed, self._typeahead = self._typeahead, ""
        return self._session.prompt(prompt, default=default or typed)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """While a reply streams: no echo of typed keys (Ctrl+C still interrupts)."""
        if not self._interactive:
            yield
            return
        fd = sys.stdin.fileno()
        try:
            saved = termios.tcgetattr(fd)
        except termios.error:
            yield
            return
        quiet = list(saved)
        quiet[3] &= ~(termios.ECHO | termios.ICANON)
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        try:
            yield
        finally:
            self._typeahead += clean_typeahead(_drain(fd))
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def _drain(fd: int) -> str:
    chunks: list[bytes] = []
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")
