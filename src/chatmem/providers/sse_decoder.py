"""SSE framing for an upstream's streamed reply: bytes in, `data` payloads out.

Comments and fields other than `data` are dropped. A line or an event over
MAX_EVENT_BYTES is an `UpstreamProtocolError` (a 502): a server that never ends a line
would otherwise be held in memory, and re-joined at every read (quadratic CPU).
"""

from __future__ import annotations

from chatmem.providers.upstream import UpstreamProtocolError

MAX_EVENT_BYTES = 1024 * 1024


class SSEDecoder:
    __slots__ = ("_data", "_pending", "_size")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._size = 0  # of the `data` lines of the event under way

    def feed(self, block: bytes) -> list[bytes]:
        lines = (self._pending + block).split(b"\n") if self._pending else block.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_EVENT_BYTES:
            raise UpstreamProtocolError(f"an event line over {MAX_EVENT_BYTES} bytes")
        data = self._data
        payloads = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                self._size += len(data[-1])
                if self._size > MAX_EVENT_BYTES:
                    raise UpstreamProtocolError(f"an event over {MAX_EVENT_BYTES} bytes")
            elif not line and data:
                payloads.append(data[0] if len(data) == 1 else b"\n".join(data))
                data.clear()
                self._size = 0
            # else: a comment (`:`), an `event:`/`id:`/`retry:` field, or an idle blank line
        return payloads

    def close(self) -> list[bytes]:
        """Flush an event that the server did not terminate with a blank line."""
        return self.feed(b"\n\n") if self._pending or self._data else []
