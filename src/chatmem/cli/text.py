"""Text from the server as the terminal shows it."""

from __future__ import annotations

import re

# Model output may carry terminal control sequences; only text, newlines and tabs print.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub("", text)
