"""The local model's runaway guard: a small model loops easily (the same sentence again
and again, or one character up to the token cap). llama.cpp's repeat penalty makes a
loop less likely; this guard ends a reply that loops anyway.

Pure: it is fed the reply's text as it is generated and says when to stop.
"""

from __future__ import annotations

from collections import Counter

# llama.cpp's penalty on tokens seen in the last 64 (1.0: off). SmolLM2's card suggests
# about 1.1-1.2; higher and it avoids the words a reply needs.
REPEAT_PENALTY = 1.15
# A line (of MIN_LINE_CHARS or more, compared without case and spacing) seen this many
# times in one reply ends it. Short lines (`}`, `-`, a code fence) repeat legitimately.
MAX_LINE_REPEATS = 3
MIN_LINE_CHARS = 12
# The reply's end is one unit of up to MAX_UNIT_CHARS repeated to at least MIN_RUN_CHARS
# characters (and MIN_RUN_REPEATS times): "；；；；…", "ha ha ha ha …".
MAX_UNIT_CHARS = 32
MIN_RUN_CHARS = 48
MIN_RUN_REPEATS = 6


class RunawayGuard:
    """Fed a reply piece by piece; `feed` answers True once the reply is looping."""

    def __init__(self) -> None:
        self._line = ""
        self._tail = ""
        self._lines: Counter[str] = Counter()

    def feed(self, piece: str) -> bool:
        self._tail = (self._tail + piece)[-MAX_UNIT_CHARS * MIN_RUN_REPEATS * 2 :]
        *done, self._line = (self._line + piece).split("\n")
        for line in done:
            key = " ".join(line.lower().split())
            if len(key) >= MIN_LINE_CHARS:
                self._lines[key] += 1
                if self._lines[key] >= MAX_LINE_REPEATS:
                    return True
        return _ends_in_a_run(self._tail)


def _ends_in_a_run(text: str) -> bool:
    for size in range(1, min(MAX_UNIT_CHARS, len(text)) + 1):
        unit = text[-size:]
        if not unit.strip():
            continue  # blank space runs (indentation) are not a loop
        repeats = max(MIN_RUN_REPEATS, -(-MIN_RUN_CHARS // size))
        if text.endswith(unit * repeats):
            return True
    return False
