"""The upstream through httpx: only when the environment names a proxy for the base URL.

chatmem's own client (providers/http1_pool.py) does not speak to proxies; httpx does
(HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), so a deployment behind one keeps working
as before, at httpx's CPU cost per read. httpx's errors become the seam's
(providers/upstream.py), so the provider maps one error tree whichever client runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx

from chatmem.providers.upstream import (
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    Timeouts,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    WriteTimeout,
)


class HttpxUpstream:
    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        max_connections: int,
        max_keepalive: int = 64,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=dict(headers),
            timeout=_timeout(timeouts),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_keepalive
            ),
        )

    @asynccontextmanager
    async def post(
        self, path: str, body: bytes, timeouts: Timeouts | None = None
    ) -> AsyncIterator[UpstreamResponse]:
        timeout = _timeout(timeouts) if timeouts else httpx.USE_CLIENT_DEFAULT
        try:
            async with self._client.stream("POST", path, content=body, timeout=timeout) as resp:
                yield _Response(resp)
        except httpx.HTTPError as exc:
            raise _mapped(exc) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


class _Response:
    __slots__ = ("_resp",)

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def aread(self) -> bytes:
        return await self._resp.aread()

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._resp.aiter_bytes()


def _timeout(t: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s)


def _mapped(exc: httpx.HTTPError) -> UpstreamError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectTimeout(text)
    if isinstance(exc, httpx.ReadTimeout):
        return ReadTimeout(text)
    if isinstance(exc, httpx.WriteTimeout):
        return WriteTimeout(text)
    if isinstance(exc, httpx.PoolTimeout):
        return PoolTimeout(text)
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        return UpstreamConnectError(text)
    return UpstreamError(text)
