"""The background worker every chatmem process runs (SPEC §2b): it takes jobs from the
Redis stream (store/jobs.py) and runs their handlers, one job at a time.

Each loop: queue the retries that are due, take over the jobs of consumers idle past
`claim_idle_ms` (a process that died), refresh the gauges, then wait for a new job.
A handler that raises is retried with exponential backoff, and after `max_attempts`
goes to the dead letter; a handler that finishes acknowledges its job. While a job runs
it is touched every third of `claim_idle_ms`, so no live worker's job is taken.

On the embedded model (one model, one core's worth of tokens), background work waits
while this process has an interactive generation running (`interactive_busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from chatmem.config import JobSettings
from chatmem.metrics import Metrics
from chatmem.store.jobs import Job, JobQueue, now_ms

log = logging.getLogger(__name__)

Handler = Callable[[Job], Awaitable[None]]
# How often a waiting job looks again whether the interactive turns are done.
YIELD_POLL_S = 0.05


class JobWorker:
    def __init__(
        self,
        queue: JobQueue,
        settings: JobSettings,
        metrics: Metrics,
        *,
        interactive_busy: Callable[[], bool] = lambda: False,
        consumer: str | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self.interactive_busy = interactive_busy
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.handlers: dict[str, Handler] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_housekeeping = 0.0

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    async def enqueue(self, kind: str, args: dict[str, Any], *, dedupe: str = "") -> bool:
        """Queue a job of `kind` (registered); False if an equal one is queued already."""
        if kind not in self.handlers:
            raise ValueError(f"no handler for job kind {kind!r}")
        return await self.queue.enqueue(Job(kind, args, dedupe=dedupe))

    async def start(self) -> None:
        await self.queue.ensure_group()
        self._task = asyncio.create_task(self._loop(), name="background jobs")

    async def close(self) -> None:
        # A flag as well as the cancel: a Redis call may turn the cancel into its own error.
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while not self._closing:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closing:
                    return
                log.exception("background jobs: the worker loop failed; retrying in 1 s")
                await asyncio.sleep(1)

    async def step(self) -> None:
        """One turn of the loop (the tests drive it directly too)."""
        s = self.settings
        if time.monotonic() >= self._next_housekeeping:
            self._next_housekeeping = time.monotonic() + s.housekeeping_ms / 1000
            await self.queue.promote_due()
            stale = await self.queue.claim_stale(
                self.consumer, min_idle_ms=s.claim_idle_ms, count=10
            )
            for entry_id, job in stale:
                log.info("background jobs: took over %s job %s", job.kind, job.job_id)
                await self._process(entry_id, job)
            stats = await self.queue.stats()
            for state, n in stats.to_dict().items():
                self.metrics.jobs.labels(state).set(n)
        block_ms = min(s.poll_block_ms, s.housekeeping_ms)
        for entry_id, job in await self.queue.read(self.consumer, count=1, block_ms=block_ms):
            await self._process(entry_id, job)

    async def _process(self, entry_id: str, job: Job) -> None:
        while self.interactive_busy():  # noqa: ASYNC110 - a poll: turns end in any task
            await asyncio.sleep(YIELD_POLL_S)
        handler = self.handlers.get(job.kind)
        heartbeat = asyncio.create_task(self._heartbeat(entry_id))
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r} in this process")
            await handler(job)
        except asyncio.CancelledError:
            raise  # shutting down: the job stays pending, another worker takes it
        except Exception as exc:
            s = self.settings
            backoff = min(s.backoff_max_ms, s.backoff_base_ms * 2**job.attempt)
            outcome = await self.queue.fail(
                entry_id, job, repr(exc), backoff_ms=backoff, max_attempts=s.max_attempts
            )
            self.metrics.jobs_failed.labels(job.kind, outcome).inc()
            log.warning(
                "background job %s %s failed (attempt %d): %r → %s",
                job.kind,
                job.job_id,
                job.attempt + 1,
                exc,
                outcome,
            )
        else:
            await self.queue.ack(entry_id, job)
            self.metrics.jobs_done.labels(job.kind).inc()
            self.metrics.job_lag.labels(job.kind).observe(max(0, now_ms() - job.enqueued_ms) / 1000)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, entry_id: str) -> None:
        while True:
            await asyncio.sleep(self.settings.claim_idle_ms / 3000)
            try:
                await self.queue.touch(self.consumer, entry_id)
            except Exception:
                log.warning("background jobs: could not touch job %s", entry_id)
