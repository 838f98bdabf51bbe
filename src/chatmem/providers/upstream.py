"""The seam between an HTTP provider and its upstream: one POST, its response, its errors.

Two implementations: `http1_pool.Http1Client` (chatmem's own asyncio HTTP/1.1 client,
the default: a tenth of httpx's CPU per read) and `httpx_upstream.HttpxUpstream` (httpx,
used only when the environment names an HTTP(S) proxy for the base URL, see
`proxied`). The provider sees only what is below, whichever runs.

The transport errors, one tree under one root (the provider maps them to its own
`ProviderError`s; their text is for the server's log):

    UpstreamError
     ├── UpstreamConnectError      cannot connect (refused, DNS, TLS handshake)
     ├── UpstreamTimeout
     │    ├── ConnectTimeout       connecting (TCP + TLS) took longer than connect_s
     │    ├── ReadTimeout          no byte of the response for read_s
     │    ├── WriteTimeout         the request could not be sent within write_s
     │    └── PoolTimeout          no connection free within pool_s (max_connections)
     ├── UpstreamDisconnected      the server closed the connection before the
     │                             response's end (or before its first byte)
     └── UpstreamProtocolError     not HTTP/1.1 as expected: a malformed status line,
                                   header or chunk, a head over the size limit
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit


class UpstreamError(Exception):
    """The root of the transport errors."""


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class ConnectTimeout(UpstreamTimeout):
    pass


class ReadTimeout(UpstreamTimeout):
    pass


class WriteTimeout(UpstreamTimeout):
    pass


class PoolTimeout(UpstreamTimeout):
    pass


class UpstreamDisconnected(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: connecting (TCP and TLS), each wait for response bytes, sending the
    request, and waiting for a free connection when all `max_connections` are busy."""

    connect_s: float
    read_s: float
    write_s: float
    pool_s: float


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up by lower-case name."""
        ...

    async def aread(self) -> bytes:
        """The rest of the body (decoded if the server compressed it)."""
        ...

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded if the server compressed it."""
        ...


class Upstream(Protocol):
    def post(
        self, path: str, body: bytes, timeouts: Timeouts | None = None
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """POST `body` (JSON) to the base URL + `path`; the response once its head is
        in. Leaving the block before the body's end closes the connection."""
        ...

    async def aclose(self) -> None: ...


def proxied(base_url: str) -> bool:
    """Whether the environment routes `base_url` through a proxy (HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY, NO_PROXY, in either case, as httpx reads them)."""
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(base_url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return not bypass(parts.hostname or "", proxies)
