"""How the terminal chat shows a reply as it streams in.

Not a terminal (a pipe, a log, a test): the text as it comes, after "Luna › ". A
terminal: Markdown rendered by rich as it comes — the last screenful is redrawn live,
and the whole reply is printed, rendered, when it ends (code blocks highlighted, tables
drawn, lists indented).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.text import Text

# Redraws of the live part at most this often (each renders the Markdown again).
REFRESH_S = 0.08


def markdown(text: str) -> Markdown:
    return Markdown(text, code_theme="monokai", hyperlinks=False)


class _Tail:
    """The rendered Markdown's last lines that fit the screen (a live display taller
    than the screen would leave copies of itself in the scrollback)."""

    def __init__(self, view: ReplyView) -> None:
        self._view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(markdown(self._view.text), options, pad=False)
        room = max(1, console.size.height - 2)
        for line in lines[-room:]:
            yield from line
            yield Segment.line()


class ReplyView:
    def __init__(self, console: Console, name: str) -> None:
        self.console = console
        self.name = name
        self.text = ""
        self.rendered = console.is_terminal
        self._started = False
        self._live: Live | None = None
        self._drawn_at = 0.0
        self._ended = False

    @property
    def started(self) -> bool:
        return self._started

    def begin(self) -> None:
        if self._started:
            return
        self._started = True
        if not self.rendered:
            self.console.print(Text(f"{self.name} › ", "bold"), end="")
            return
        self.console.print(Text(f"{self.name} ›", "bold"))
        self._live = Live(_Tail(self), console=self.console, auto_refresh=False, transient=True)
        self._live.start()

    def add(self, chunk: str) -> None:
        self.begin()
        self.text += chunk
        if self._live is None:
            self.console.print(Text(chunk), end="", soft_wrap=True)
        elif time.monotonic() - self._drawn_at >= REFRESH_S:
            self._drawn_at = time.monotonic()
            self._live.refresh()

    def end(self, marks: Iterable[Text] = ()) -> None:
        """The reply is complete (or stopped): show it whole, then its marks (once)."""
        if self._ended:
            return
        self._ended = True
        if self._live is not None:
            self._live.stop()
            self._live = None
            if self.text.strip():
                self.console.print(markdown(self.text))
            for mark in marks:
                self.console.print(mark)
            return
        for mark in marks:
            self.console.print(mark, end="")
        self.console.print()
