"""A local model's tokens to text: byte-level tokens can split a character (an emoji, a
CJK character) across tokens, so the bytes are decoded incrementally. A character the
reply ends in the middle of (cut at max_tokens, stopped) is dropped, never shown as
"�" (U+FFFD); bytes that can never be UTF-8 still are."""

from __future__ import annotations

import codecs


class TokenText:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> str:
        """The text these bytes complete (possibly empty: a character's first bytes)."""
        return self._decoder.decode(data)

    def end(self) -> str:
        """The reply's last text: held bytes are an unfinished character, dropped."""
        held, _ = self._decoder.getstate()
        self._decoder.reset()
        return "" if held else self._decoder.decode(b"", final=True)
