"""Background jobs on Redis itself: a Stream with a consumer group (SPEC §2b).

Why not a job library (arq, rq, celery, dramatiq, taskiq): chatmem already runs one
Redis and one asyncio loop per process; the jobs need at-least-once delivery that
survives a dead process, a retry with backoff, a dead letter and a lag figure — which a
Stream's consumer group gives in five commands (XADD, XREADGROUP, XACK, XAUTOCLAIM,
XPENDING) and four short scripts (job_scripts.py). A library would bring a second
connection model, its own serializer and worker process, and its own key layout to
erase, size and monitor. The effects of every job are idempotent (chat/summary.py,
chat/memories.py, chat/titles.py say how), so at-least-once is enough.

A job's life: `enqueue` (XADD; an equal job already queued is not added twice) → a
worker's `read` (XREADGROUP: pending with that consumer) → `ack` (done, removed), or
`fail` (acknowledged and put in the delayed ZSET, due after its backoff; `promote_due`
queues it again), or after `max_attempts` the dead letter. A worker that dies leaves its
jobs pending; `claim_stale` (XAUTOCLAIM) hands those idle longer than `claim_idle_ms` to
a live worker, and a worker still busy with a long job `touch`es it so it is not taken.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis.exceptions as rex

from chatmem.store import job_scripts, keys
from chatmem.store.client import AnyRedis, redis_errors

_KEYS = [keys.JOBS_STREAM_KEY, keys.JOBS_DELAYED_KEY, keys.JOBS_DEAD_KEY, keys.JOBS_DEDUPE_KEY]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Job:
    kind: str
    args: dict[str, Any]
    attempt: int = 0
    enqueued_ms: int = field(default_factory=now_ms)
    dedupe: str = ""
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def encode(self) -> str:
        doc = {"k": self.kind, "a": self.args, "n": self.attempt, "q": self.enqueued_ms}
        doc |= {"d": self.dedupe, "i": self.job_id}
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, raw: str | bytes) -> Job:
        d = orjson.loads(raw)
        return cls(d["k"], d["a"], int(d["n"]), int(d["q"]), d.get("d", ""), d.get("i", ""))


@dataclass(frozen=True, slots=True)
class JobStats:
    queued: int  # in the stream, not yet taken by a worker
    running: int  # taken by a worker, not yet acknowledged
    delayed: int  # waiting for a retry
    dead: int  # in the dead letter

    def to_dict(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "running": self.running,
            "delayed": self.delayed,
            "dead": self.dead,
        }


Entry = tuple[str, Job]


def _entries(raw: Any) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in raw or []:
        if not fields:  # deleted meanwhile (XAUTOCLAIM reports those as nil)
            continue
        out.append((entry_id, Job.decode(fields["j"])))
    return out


class JobQueue:
    def __init__(self, redis: AnyRedis, *, dedupe_ttl_ms: int = 10 * 60_000) -> None:
        self.redis = redis
        self.dedupe_ttl_ms = dedupe_ttl_ms
        self._enqueue = redis.register_script(job_scripts.ENQUEUE_JOB)
        self._ack = redis.register_script(job_scripts.ACK_JOB)
        self._fail = redis.register_script(job_scripts.FAIL_JOB)
        self._promote = redis.register_script(job_scripts.PROMOTE_DUE)

    async def ensure_group(self) -> None:
        """The consumer group, created with the stream if missing (every worker calls it)."""
        with redis_errors("jobs_group"):
            try:
                await self.redis.xgroup_create(
                    keys.JOBS_STREAM_KEY, keys.JOBS_GROUP, id="0", mkstream=True
                )
            except rex.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def enqueue(self, job: Job) -> bool:
        """Queue `job`; False if an equal one (same `dedupe`) is queued already."""
        args: list[Any] = [job.encode(), job.dedupe, self.dedupe_ttl_ms, now_ms(), keys.JOBS_MAXLEN]
        with redis_errors("jobs_enqueue"):
            res = await self._enqueue(keys=_KEYS, args=args)
        return bool(res)

    async def read(self, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
        with redis_errors("jobs_read"):
            try:
                res = await self.redis.xreadgroup(
                    keys.JOBS_GROUP,
                    consumer,
                    {keys.JOBS_STREAM_KEY: ">"},
                    count=count,
                    block=block_ms,
                )
            except rex.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group()
                return []
        return _entries(cast(Any, res)[0][1]) if res else []

    async def claim_stale(self, consumer: str, *, min_idle_ms: int, count: int) -> list[Entry]:
        """Jobs of consumers idle longer than `min_idle_ms` (dead, most likely), now ours."""
        with redis_errors("jobs_claim"):
            res = await self.redis.xautoclaim(
                keys.JOBS_STREAM_KEY, keys.JOBS_GROUP, consumer, min_idle_ms, "0-0", count=count
            )
        return _entries(res[1])

    async def touch(self, consumer: str, entry_id: str) -> None:
        """Reset a running job's idle time, so that `claim_stale` leaves it with us."""
        with redis_errors("jobs_touch"):
            await self.redis.xclaim(
                keys.JOBS_STREAM_KEY, keys.JOBS_GROUP, consumer, 0, [entry_id], justid=True
            )

    async def ack(self, entry_id: str, job: Job) -> bool:
        with redis_errors("jobs_ack"):
            res = await self._ack(keys=_KEYS, args=[keys.JOBS_GROUP, entry_id, job.dedupe])
        return bool(res)

    async def fail(
        self, entry_id: str, job: Job, error: str, *, backoff_ms: int, max_attempts: int
    ) -> str:
        """'retry' (due after `backoff_ms`), 'dead' (after `max_attempts`), or 'gone'."""
        nxt = Job(job.kind, job.args, job.attempt + 1, job.enqueued_ms, job.dedupe, job.job_id)
        dead = "1" if nxt.attempt >= max_attempts else "0"
        args: list[Any] = [keys.JOBS_GROUP, entry_id, nxt.encode(), now_ms() + backoff_ms, dead]
        args += [error[:500], now_ms(), keys.JOBS_DEAD_MAXLEN, job.dedupe]
        with redis_errors("jobs_fail"):
            res = await self._fail(keys=_KEYS, args=args)
        return res.decode() if isinstance(res, bytes) else str(res)

    async def promote_due(self, *, limit: int = 100) -> int:
        with redis_errors("jobs_promote"):
            n = await self._promote(keys=_KEYS, args=[now_ms(), limit, keys.JOBS_MAXLEN])
        return int(n)

    async def stats(self) -> JobStats:
        with redis_errors("jobs_stats"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(keys.JOBS_STREAM_KEY)
                pipe.zcard(keys.JOBS_DELAYED_KEY)
                pipe.xlen(keys.JOBS_DEAD_KEY)
                length, delayed, dead = await pipe.execute()
            try:
                pending = await self.redis.xpending(keys.JOBS_STREAM_KEY, keys.JOBS_GROUP)
                running = int(pending["pending"])
            except rex.ResponseError:
                running = 0  # no group yet
        # Acknowledged entries are deleted: what the stream holds is queued or running.
        return JobStats(max(0, int(length) - running), running, int(delayed), int(dead))

    async def dead_letters(self, count: int = 100) -> list[tuple[Job, str]]:
        with redis_errors("jobs_dead"):
            raw = await self.redis.xrevrange(keys.JOBS_DEAD_KEY, count=count)
        return [(Job.decode(f["j"]), str(f.get("e", ""))) for _, f in cast(Any, raw)]
