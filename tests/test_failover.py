"""Sentinel failover under a stream of writes: the master SIGKILLed, writes resume on the
promoted replica within down-after + 3 s, and with `wait_replicas=1` (strict) no
acknowledged write is lost.

A master, one replica and three Sentinels of their own (the failover changes who is
master), `down-after-milliseconds 1000`; writers append through RedisMemoryStore on a
`redis+sentinel://` URL, each retrying a failed message (same id) until it is
acknowledged, as a client would. Just before the kill the replica is cut off for a
moment (paused, its link closed by the master), so that the master alone holds the last
writes: without a write concern they are acknowledged and then lost, which shows that
the window the write concern closes is really there.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from chatmem.config import RedisSettings
from chatmem.errors import StoreUnavailable
from chatmem.models import Message, Role
from chatmem.store.client import make_redis
from chatmem.store.conversations import RedisMemoryStore
from tests.redis_servers import RedisProcess, SentinelProcesses
from tests.support import eventually

# redis-py drops some connections during a Sentinel failover without closing them: their
# Connections, StreamWriters and sockets complain when collected (seen once warnings became errors;
# creation stacks traced to redis/asyncio/sentinel.py and connection.py under the writes
# below). Not chatmem's to fix: each test collects them at its end, where this module's
# filter applies, rather than in whichever later test the collector happens to run.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <(function (StreamWriter|_SelectorTransport|AbstractConnection)"
    "[.]__del__|socket[.]socket):pytest.PytestUnraisableExceptionWarning"
)

DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
RESUME_BUDGET_S = DOWN_AFTER_MS / 1000 + 3
WRITERS = 4
TIMEOUT_S = 0.5  # the client's socket and connect timeouts
RETRY_PAUSE_S = 0.02
WRITES_BEFORE = 20  # acknowledged by each writer before the replica is cut off
WRITES_AFTER = 5  # acknowledged by each writer on the new master before the end


@pytest.fixture(autouse=True)
def _collect_dropped_connections() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SentinelProcesses]:
    servers = SentinelProcesses(tmp_path).start()
    try:
        for s in servers.sentinels:
            with redis.Redis(port=s.port) as c:
                c.sentinel_set(servers.MASTER_NAME, "down-after-milliseconds", DOWN_AFTER_MS)
                c.sentinel_set(servers.MASTER_NAME, "failover-timeout", FAILOVER_TIMEOUT_MS)
        yield servers
    finally:
        servers.stop()


def master_ports(rig: SentinelProcesses) -> set[int]:
    """The master's port as each Sentinel sees it (they agree a moment after a failover:
    the leader switches first, the others learn it from its hello messages)."""
    ports = set()
    for s in rig.sentinels:
        with redis.Redis(port=s.port, decode_responses=True) as c:
            _, port = c.sentinel_get_master_addr_by_name(rig.MASTER_NAME)
        ports.add(int(port))
    return ports


async def promoted(rig: SentinelProcesses, old_port: int, timeout_s: float) -> int:
    """Wait until every Sentinel names a new master; returns its port."""

    async def new_master() -> int | None:
        ports = await asyncio.to_thread(master_ports, rig)
        return ports.pop() if old_port not in ports and len(ports) == 1 else None

    return await eventually(new_master, "every Sentinel to name a new master", timeout_s=timeout_s)


def cut_off_replica(rig: SentinelProcesses) -> None:
    """Pause the replica and have the master drop its link: it cannot resync meanwhile
    (what was sent before stays in its socket and is applied when it resumes)."""
    assert rig.replica.proc is not None
    os.kill(rig.replica.proc.pid, signal.SIGSTOP)
    with redis.Redis(port=rig.master.port) as c:
        c.client_kill_filter(_type="replica")


@dataclass
class Writes:
    acked: dict[str, list[str]] = field(default_factory=dict)  # session → ids, in order
    ack_times: dict[str, list[float]] = field(default_factory=dict)
    last_failure: dict[str, float] = field(default_factory=dict)
    failures: int = 0

    def resumed_after(self, t: float) -> float | None:
        """When the last writer had a write acknowledged after `t` (None: not yet)."""
        firsts = [next((x for x in ts if x > t), None) for ts in self.ack_times.values()]
        return None if None in firsts else max(x for x in firsts if x is not None)

    def acked_after(self, t: float, n: int) -> bool:
        """Whether every writer has had `n` writes acknowledged after `t`."""
        return all(sum(x > t for x in ts) >= n for ts in self.ack_times.values())

    def answered_after(self, t: float) -> bool:
        """Whether every writer has had a write refused, or two acknowledged, after `t`
        (the first may have been under way before)."""
        return all(
            sum(x > t for x in ts) >= 2 or self.last_failure.get(sid, 0) > t
            for sid, ts in self.ack_times.items()
        )


async def write_until(store: RedisMemoryStore, sid: str, log: Writes, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        msg = Message(Role.USER, f"message {i} of {sid}", 4, msg_id=f"{sid}-{i}")
        try:
            await store.append("alice", sid, [msg])
        except StoreUnavailable:
            log.failures += 1
            log.last_failure[sid] = time.monotonic()
            await asyncio.sleep(RETRY_PAUSE_S)
            continue  # the same message again: appends are idempotent by id
        log.acked[sid].append(msg.msg_id)
        log.ack_times[sid].append(time.monotonic())
        i += 1


async def kill_master_under_writes(
    rig: SentinelProcesses, wait_replicas: int, *, restart_old_master: bool
) -> tuple[Writes, float, RedisMemoryStore, list[str]]:
    """Writers write a while, the master is SIGKILLed; returns the writes, the time
    from the kill until every writer had one acknowledged again, and a store on the new
    master. With `restart_old_master` the old master comes back as the new one's replica
    once Sentinel has promoted (WAIT 1 needs a replica)."""
    settings = RedisSettings(
        url=rig.url,
        socket_timeout_s=TIMEOUT_S,
        connect_timeout_s=TIMEOUT_S,
        pool_timeout_s=TIMEOUT_S,
        wait_replicas=wait_replicas,
        wait_timeout_ms=300,
    )
    client = make_redis(rig.url, settings)
    store = RedisMemoryStore(
        client,
        max_messages=100_000,  # keep every message, to check them all
        wait_replicas=wait_replicas,
        wait_timeout_ms=settings.wait_timeout_ms,
    )
    if store.write_concern is not None:
        # Acknowledged means confirmed here: a write too few replicas confirmed is
        # refused (NotReplicated), and retried as a client would.
        store.write_concern.strict = True
    sids = [f"s{k}" for k in range(WRITERS)]
    for sid in sids:
        await store.create_session("alice", "assistant", session_id=sid)
    log, stop = Writes(), asyncio.Event()
    for sid in sids:
        log.acked[sid], log.ack_times[sid] = [], []
    tasks = [asyncio.create_task(write_until(store, sid, log, stop)) for sid in sids]
    try:
        await eventually(lambda: log.acked_after(0, WRITES_BEFORE), "writes before the kill")
        old_port = rig.master.port
        await asyncio.to_thread(cut_off_replica, rig)
        cut_at = time.monotonic()
        # Every writer has had a write answered by the master alone (acknowledged, or
        # refused as not replicated).
        await eventually(lambda: log.answered_after(cut_at), "writes after the cut")
        rig.master.kill()
        killed_at = time.monotonic()
        assert rig.replica.proc is not None
        os.kill(rig.replica.proc.pid, signal.SIGCONT)
        if restart_old_master:
            new_port = await promoted(rig, old_port, 30)
            workdir = rig.master.workdir.parent
            rig.master = RedisProcess(workdir, f"replicaof 127.0.0.1 {new_port}", port=old_port)
            await asyncio.to_thread(rig.master.start)
        resumed = await eventually(
            lambda: log.resumed_after(killed_at),
            f"writes to resume ({log.failures} failed so far)",
            timeout_s=max(0.0, killed_at + 30 - time.monotonic()),
        )
        # And they go on for a while on the new master.
        await eventually(lambda: log.acked_after(resumed, WRITES_AFTER), "writes after")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await promoted(rig, old_port, 10)
    return log, resumed - killed_at, store, sids


async def stored_ids(store: RedisMemoryStore, sid: str) -> list[str]:
    snap = await store.read("alice", sid, last=100_000)
    return [m.msg_id for m in snap.messages]


async def test_writes_resume_on_the_promoted_replica_within_down_after_plus_3s(
    rig: SentinelProcesses,
) -> None:
    log, resume_s, store, sids = await kill_master_under_writes(rig, 0, restart_old_master=False)
    try:
        lost = 0
        for sid in sids:
            ids = await stored_ids(store, sid)
            assert len(ids) == len(set(ids))  # retries stored nothing twice
            present = set(ids)
            assert ids == [i for i in log.acked[sid] if i in present]  # order kept
            lost += len(set(log.acked[sid]) - present)
        n_acked = sum(map(len, log.acked.values()))
        print(
            f"\nwait_replicas=0: writes resumed {resume_s:.2f} s after the kill "
            f"(budget {RESUME_BUDGET_S:.1f} s); {n_acked} acknowledged, {lost} of them "
            f"lost, {log.failures} failed attempts"
        )
        assert resume_s <= RESUME_BUDGET_S
        # The control: what the master alone acknowledged did not survive the failover.
        assert lost > 0
    finally:
        await store.redis.aclose()


async def test_with_wait_replicas_1_no_acknowledged_write_is_lost(
    rig: SentinelProcesses,
) -> None:
    log, resume_s, store, sids = await kill_master_under_writes(rig, 1, restart_old_master=True)
    try:
        n_acked = 0
        for sid in sids:
            ids = await stored_ids(store, sid)
            assert len(ids) == len(set(ids))
            # Every acknowledged message, in order; after them at most the one that was
            # written but refused as not replicated when the master died.
            assert ids[: len(log.acked[sid])] == log.acked[sid]
            assert len(ids) - len(log.acked[sid]) <= 1
            n_acked += len(log.acked[sid])
        print(
            f"\nwait_replicas=1: {n_acked} acknowledged, none lost; writes resumed "
            f"{resume_s:.2f} s after the kill (the old master back as a replica first); "
            f"{log.failures} failed attempts"
        )
        assert log.failures >= WRITERS  # the cut-off refused writes instead of losing them
    finally:
        await store.redis.aclose()
