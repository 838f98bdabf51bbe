"""httpx's upstream transport with a connection pool whose bookkeeping is linear.

httpcore (1.0) re-examines its whole pool every time a request starts or ends: for
each idle connection it counts every connection again (a list built inside the loop:
quadratic in the pool's size) and polls the idle connection's socket (a syscall, through
anyio's typed attributes) to see whether the server closed it; then, for each queued
request, it lists the available and idle connections again. With the 32 connections of
32 turns in flight that is ~1 000 `is_idle` calls and ~30 polls per start and per end
of every upstream request (~0.5 ms of CPU per turn), and with 1 000 streams a million
calls each time: the event loop stalls for a good part of a second whenever a stream
starts or ends.

`LeanConnectionPool` does the same work in one pass: closed connections dropped, idle
ones beyond `max_keepalive_connections` closed, and the server-closed check (the poll)
made on the idle connection about to be reused, and on every idle one at most once a
second (so that an unused one past its keep-alive is still closed). HTTP/1.1 only (chatmem's client
never asks for HTTP/2); any other pool (a proxy's) is left as httpx built it.
"""

from __future__ import annotations

import time
from typing import Any

import httpcore
import httpx

_Connection = Any  # httpcore.AsyncConnectionInterface
SWEEP_S = 1.0


class LeanConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, same state and behaviour, linear bookkeeping (see the module)."""

    def _assign_requests_to_connections(self) -> list[_Connection]:
        closing: list[_Connection] = []
        kept: list[_Connection] = []
        idle: list[_Connection] = []
        now = time.monotonic()
        # Idle connections past their keep-alive or closed by the server are swept out
        # at most once a SWEEP_S (one poll each), else found when about to be reused.
        sweep = now >= getattr(self, "_swept_at", 0.0) + SWEEP_S
        if sweep:
            self._swept_at = now
        for connection in self._connections:
            if connection.is_closed():
                continue
            if connection.is_idle():
                if len(idle) >= self._max_keepalive_connections or (
                    sweep and connection.has_expired()
                ):
                    closing.append(connection)
                    continue
                idle.append(connection)
            elif connection.has_expired():  # not idle: no poll, a state check
                closing.append(connection)
                continue
            kept.append(connection)
        self._connections = kept

        for pool_request in [r for r in self._requests if r.is_queued()]:
            origin = pool_request.request.url.origin
            chosen = self._reusable(origin, idle, closing)
            if chosen is None:
                if len(self._connections) >= self._max_connections:
                    if not idle:
                        continue  # stays queued until a connection is released
                    # Make room: close an idle connection to another origin.
                    victim = idle.pop(0)
                    self._connections.remove(victim)
                    closing.append(victim)
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            pool_request.assign_to_connection(chosen)
        return closing

    def _reusable(
        self, origin: httpcore.Origin, idle: list[_Connection], closing: list[_Connection]
    ) -> _Connection | None:
        """The first idle connection to `origin` that the server has not closed."""
        i = 0
        while i < len(idle):
            connection = idle[i]
            if not (connection.can_handle_request(origin) and connection.is_available()):
                i += 1
                continue
            del idle[i]
            if connection.has_expired():  # keep-alive over, or the server closed it
                self._connections.remove(connection)
                closing.append(connection)
                continue
            return connection
        return None


def upstream_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """The transport httpx.AsyncClient would build for these limits, with the lean pool."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    pool = transport._pool
    if type(pool) is httpcore.AsyncConnectionPool and not pool._http2:
        # Same class layout, one method overridden: the pool's state carries over.
        pool.__class__ = LeanConnectionPool
    return transport
