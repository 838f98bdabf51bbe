"""Background jobs on a Redis stream (store/jobs.py, chat/jobs.py): at least once, retried
with backoff, a dead letter, a dead consumer's job taken over, equal jobs queued once,
metrics, and background work waiting for interactive turns on the local model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from chatmem.chat.jobs import JobWorker
from chatmem.config import JobSettings
from chatmem.metrics import Metrics
from chatmem.store import keys
from chatmem.store.client import AnyRedis
from chatmem.store.jobs import Job, JobQueue
from tests.support import eventually

FAST = JobSettings(
    housekeeping_ms=20, poll_block_ms=20, backoff_base_ms=20, claim_idle_ms=200, max_attempts=3
)


@pytest.fixture
async def queue(redis_client: AnyRedis) -> JobQueue:
    await redis_client.flushall()
    q = JobQueue(redis_client)
    await q.ensure_group()
    return q


@pytest.fixture
async def worker(queue: JobQueue) -> AsyncIterator[JobWorker]:
    w = JobWorker(queue, FAST, Metrics(), consumer="w1")
    yield w
    await w.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_a_failing_job_is_retried_with_backoff_then_done(worker: JobWorker) -> None:
    times: list[float] = []

    async def flaky(job: Job) -> None:
        times.append(time.monotonic())
        if len(times) < 3:
            raise RuntimeError("model unavailable")

    worker.register("flaky", flaky)
    await worker.enqueue("flaky", {"n": 1})
    await worker.start()
    await eventually(
        lambda: sample(worker.metrics, "chatmem_jobs_done_total", kind="flaky"), "done"
    )
    assert len(times) == 3
    # 20 ms, then 40 ms: exponential (with the housekeeping's granularity on top).
    assert times[1] - times[0] >= 0.02 and times[2] - times[1] >= 0.04
    m = worker.metrics
    assert sample(m, "chatmem_jobs_failed_total", kind="flaky", outcome="retry") == 2
    assert sample(m, "chatmem_job_lag_seconds_count", kind="flaky") == 1
    stats = await worker.queue.stats()
    assert stats.queued == stats.running == stats.delayed == stats.dead == 0


async def test_after_max_attempts_a_job_goes_to_the_dead_letter(worker: JobWorker) -> None:
    async def broken(job: Job) -> None:
        raise ValueError("always")

    worker.register("broken", broken)
    await worker.enqueue("broken", {"x": "y"})
    await worker.start()
    await eventually(lambda: _dead(worker.queue), "the dead letter")
    (job, error), *_ = await worker.queue.dead_letters()
    assert job.kind == "broken" and job.args == {"x": "y"} and job.attempt == FAST.max_attempts
    assert "always" in error
    m = worker.metrics
    assert sample(m, "chatmem_jobs_failed_total", kind="broken", outcome="dead") == 1
    await eventually(lambda: sample(m, "chatmem_jobs", state="dead") == 1, "the dead gauge")


async def _dead(queue: JobQueue) -> int:
    return (await queue.stats()).dead


async def test_an_equal_job_is_queued_once_until_it_is_done(queue: JobQueue) -> None:
    assert await queue.enqueue(Job("summary", {"s": 1}, dedupe="summary:u:s"))
    assert not await queue.enqueue(Job("summary", {"s": 1}, dedupe="summary:u:s"))
    assert await queue.enqueue(Job("summary", {"s": 2}, dedupe="summary:u:t"))
    (entry_id, job), *_ = await queue.read("w", count=1, block_ms=10)
    await queue.ack(entry_id, job)
    assert await queue.enqueue(Job("summary", {"s": 1}, dedupe="summary:u:s"))


async def test_a_dead_consumers_job_is_taken_over(queue: JobQueue, worker: JobWorker) -> None:
    """A consumer that took a job and died (never acknowledged it): once idle past
    `claim_idle_ms`, a live worker runs it."""
    done: list[Job] = []

    async def handler(job: Job) -> None:
        done.append(job)

    worker.register("k", handler)
    await worker.enqueue("k", {"v": 1})
    taken = await queue.read("dead-consumer", count=1, block_ms=10)
    assert len(taken) == 1 and (await queue.stats()).running == 1
    await worker.start()
    await eventually(lambda: done, "the job taken over")
    assert done[0].args == {"v": 1}

    async def acknowledged() -> bool:
        # The handler runs before the worker acknowledges the job (a script round trip,
        # two when Redis has to load it first): wait for that rather than race it.
        stats = await queue.stats()
        return stats.running == 0 and stats.queued == 0

    acked: bool = await eventually(acknowledged, "the job taken over to be acknowledged")
    assert acked


async def test_a_long_job_is_touched_so_no_one_takes_it(queue: JobQueue) -> None:
    runs: list[str] = []
    release = asyncio.Event()
    a = JobWorker(queue, FAST, Metrics(), consumer="a")
    b = JobWorker(queue, FAST, Metrics(), consumer="b")

    async def slow(job: Job) -> None:
        runs.append("started")
        await release.wait()

    for w in (a, b):
        w.register("slow", slow)
    await a.enqueue("slow", {})
    await a.start()
    await eventually(lambda: runs, "the job started")
    await b.start()
    await asyncio.sleep(FAST.claim_idle_ms * 3 / 1000)  # well past the idle limit
    release.set()
    await eventually(lambda: sample(a.metrics, "chatmem_jobs_done_total", kind="slow"), "done")
    assert runs == ["started"]
    await a.close()
    await b.close()


async def test_background_work_waits_while_an_interactive_turn_runs(queue: JobQueue) -> None:
    busy = True
    done: list[float] = []
    worker = JobWorker(queue, FAST, Metrics(), interactive_busy=lambda: busy)

    async def handler(job: Job) -> None:
        done.append(time.monotonic())

    worker.register("k", handler)
    await worker.enqueue("k", {})
    await worker.start()
    await asyncio.sleep(0.3)
    assert done == []  # held back by the turn
    busy = False
    await eventually(lambda: done, "the job after the turn")
    await worker.close()


async def test_the_stream_is_created_with_its_group_by_any_worker(redis_client: AnyRedis) -> None:
    await redis_client.flushall()
    q = JobQueue(redis_client)
    assert await q.read("w", count=1, block_ms=10) == []  # no group yet: created
    groups = await redis_client.xinfo_groups(keys.JOBS_STREAM_KEY)
    assert [g["name"] for g in groups] == [keys.JOBS_GROUP]
