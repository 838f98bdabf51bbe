"""A response body's `Content-Encoding` (gzip or deflate) undone block by block, within
the caller's bound: a 300 KB gzip bomb of 300 MB is stopped at the bound, never inflated
whole."""

from __future__ import annotations

import zlib

from chatmem.providers.upstream import UpstreamProtocolError


class BodyDecoder:
    __slots__ = ("_unsure", "_z")

    def __init__(self, wbits: int, *, unsure: bool = False) -> None:
        self._z = zlib.decompressobj(wbits)
        # "deflate" is meant zlib-wrapped, but some servers send it raw: if the first
        # block is not zlib, it is taken as raw deflate (as httpx does).
        self._unsure = unsure

    @classmethod
    def for_encoding(cls, encoding: str) -> BodyDecoder | None:
        """The decoder for a `Content-Encoding` value; None: the body is as sent."""
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            return cls(16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return cls(zlib.MAX_WBITS, unsure=True)
        return None

    def decode(self, block: bytes, room: int, *, last: bool) -> bytes:
        """`block` decoded, at most `room` bytes of it (the caller refuses the body when
        it gets that many: it asks for one past its bound); `last`: the body is over."""
        unsure, self._unsure = self._unsure, False
        try:
            out = self._z.decompress(block, room)
            if last:
                out += self._z.flush()
            return out
        except zlib.error as exc:
            if unsure:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.decode(block, room, last=last)
            raise UpstreamProtocolError(f"undecodable compressed body: {exc}") from None
