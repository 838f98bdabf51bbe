"""Failed authentication, throttled per client address.

After `max_failures` wrong credentials from one address within `failure_window_s`, that
address gets 429 with Retry-After until the window ends, whatever it sends (a right key
too: otherwise guessing would simply go on at full speed).

The count lives in Redis (`FailureCounter`, implemented in `chatmem.store`), so every
process behind one Redis adds to the same count. Only failures cost a round trip: a
process remembers the addresses it saw go over the limit and refuses them without
asking Redis, so requests with a valid credential are not slowed at all. The price is
that a process learns of a block at its own first failure from that address past the
limit: with P processes an address gets at most P - 1 answers beyond the limit per
window. While Redis cannot be reached, failures are counted in the process instead.

Which address: the peer address as the server gives it (`request.client`). Behind a
reverse proxy that is the proxy, unless the server is told to trust its
X-Forwarded-For (`CHATMEM_SERVER_TRUSTED_PROXIES`, applied by `chatmem serve`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from chatmem.errors import RateLimited, StoreFull, StoreUnavailable

log = logging.getLogger(__name__)

# Addresses remembered in a process (blocks, and counts while Redis is unreachable):
# bounded, so that a flood from many addresses cannot grow memory without end.
MAX_TRACKED_ADDRESSES = 10_000


class FailureCounter(Protocol):
    async def add_failure(self, address: str, window_ms: int) -> tuple[int, int]:
        """Count one failure of `address`: (failures in its current window, ms left in it).

        The window starts at the address's first failure. Raises StoreUnavailable or
        StoreFull.
        """
        ...


class _Expiring:
    """address -> (value, expires at), oldest dropped first when full."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._items: dict[str, tuple[int, float]] = {}

    def get(self, address: str) -> tuple[int, float] | None:
        item = self._items.get(address)
        if item is not None and item[1] <= self._clock():
            del self._items[address]
            return None
        return item

    def put(self, address: str, value: int, expires_at: float) -> None:
        if address not in self._items and len(self._items) >= MAX_TRACKED_ADDRESSES:
            now = self._clock()
            self._items = {a: i for a, i in self._items.items() if i[1] > now}
            if len(self._items) >= MAX_TRACKED_ADDRESSES:
                del self._items[next(iter(self._items))]
        self._items[address] = (value, expires_at)


class LocalFailureCounter:
    """The in-process `FailureCounter`: used while Redis cannot be reached."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts = _Expiring(clock)

    async def add_failure(self, address: str, window_ms: int) -> tuple[int, int]:
        now = self._clock()
        count, ends_at = self._counts.get(address) or (0, now + window_ms / 1000)
        self._counts.put(address, count + 1, ends_at)
        return count + 1, max(1, round((ends_at - now) * 1000))


class AuthThrottle:
    def __init__(
        self,
        counter: FailureCounter,
        *,
        max_failures: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counter = counter
        self._fallback = LocalFailureCounter(clock)
        self.max_failures = max_failures
        self._window_ms = int(window_s * 1000)
        self._clock = clock
        self._blocked = _Expiring(clock)
        self._counting_here = False

    def check(self, address: str) -> None:
        """Raise RateLimited if `address` is known here to be over the limit."""
        if self.max_failures <= 0:
            return
        if (blocked := self._blocked.get(address)) is not None:
            raise self._refusal(blocked[1] - self._clock())

    async def failed(self, address: str) -> None:
        """Count a wrong credential from `address`; raise RateLimited past the limit."""
        if self.max_failures <= 0:
            return
        try:
            count, left_ms = await self._counter.add_failure(address, self._window_ms)
            if self._counting_here:
                self._counting_here = False
                log.info("failed authentication is counted in redis again")
        except (StoreUnavailable, StoreFull) as exc:
            if not self._counting_here:
                self._counting_here = True
                log.warning("counting failed authentication in this process: %s", exc.message)
            count, left_ms = await self._fallback.add_failure(address, self._window_ms)
        if count >= self.max_failures:
            self._blocked.put(address, count, self._clock() + left_ms / 1000)
        if count > self.max_failures:
            raise self._refusal(left_ms / 1000)

    def _refusal(self, retry_after_s: float) -> RateLimited:
        return RateLimited(
            f"too many failed authentication attempts from this address "
            f"({self.max_failures} in {self._window_ms // 1000} s); try again later",
            retry_after_s=max(1.0, retry_after_s),
        )
