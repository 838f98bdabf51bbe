"""Memory beyond the window, end to end (SPEC §2b): what a stored reply sets off.

    a turn's reply is stored (chat/turns.py)
      └─ BackgroundMemory.watch → after_turn (a task of its own: the turn is not slowed)
           │  (the first reply's write started the summary state: the trim waits for it)
           ├─ messages left the context, uncovered  → `summary` job  (chat/summary.py)
           ├─ `extract_every_rounds` rounds since   → `memories` job (chat/memories.py)
           └─ the first exchange                    → `title` job    (chat/titles.py)
    any process's JobWorker (chat/jobs.py) runs the job; the next turn's context
    (chat/prompting.py → context.py) holds the summary and the memories.

Nothing here happens for a session whose memory policy is off (the seed routes'
implicit sessions, or a character with `memory: {summary: false, memories: false}`),
nor for a degraded turn (its messages are in the outbox, not yet in Redis).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from chatmem.characters import CharacterRegistry
from chatmem.chat.generation import Generation, TurnDone
from chatmem.chat.jobs import JobWorker
from chatmem.chat.memories import EXTRACT_JOB, Memories
from chatmem.chat.prompting import Prompter
from chatmem.chat.summary import SUMMARY_JOB, Summarizer
from chatmem.chat.titles import TITLE_JOB, TitleWriter
from chatmem.config import Settings
from chatmem.metrics import Metrics
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.jobs import JobQueue
from chatmem.store.memories import MemoryStore
from chatmem.store.summaries import SummaryStore

log = logging.getLogger(__name__)


class BackgroundMemory:
    def __init__(
        self,
        settings: Settings,
        store: RedisMemoryStore,
        characters: CharacterRegistry,
        prompter: Prompter,
        metrics: Metrics,
        *,
        interactive_busy: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.summaries = SummaryStore(store)
        self.memory_store = prompter.memories or MemoryStore(
            store, ttl_s=settings.memory.memory_ttl_s
        )
        self.queue = JobQueue(store.redis)
        self.worker = JobWorker(
            self.queue, settings.jobs, metrics, interactive_busy=interactive_busy
        )
        self.summarizer = Summarizer(store, self.summaries, characters, prompter, metrics)
        self.memories = Memories(store, self.memory_store, characters, prompter, metrics)
        self.titles = TitleWriter(store, self.summaries, characters, prompter, metrics)
        self.worker.register(SUMMARY_JOB, self.summarizer.run)
        self.worker.register(EXTRACT_JOB, self.memories.run)
        self.worker.register(TITLE_JOB, self.titles.run)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.settings.jobs.enabled:
            await self.worker.start()

    async def close(self) -> None:
        await self.worker.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def watch(self, gen: Generation) -> None:
        """Call `after_turn` once `gen`'s reply is stored in Redis."""
        if gen.finished or gen.degraded or gen.task is None:
            return  # a replay (its turn was seen), or the outbox's

        def ended(task: asyncio.Task[TurnDone | None]) -> None:
            if task.cancelled() or task.exception() is not None:
                return
            done = task.result()
            if done is None or done.memory != "ok":
                return
            bg = asyncio.create_task(self.after_turn(gen, done))
            self._tasks.add(bg)
            bg.add_done_callback(self._tasks.discard)

        gen.task.add_done_callback(ended)

    async def after_turn(self, gen: Generation, done: TurnDone) -> None:
        """Queue the jobs the stored turn calls for; never raises (logged instead)."""
        try:
            await self._after_turn(gen, done)
        except Exception:
            log.exception("memory: jobs after the turn of session %s not queued", gen.session_id)

    async def _after_turn(self, gen: Generation, done: TurnDone) -> None:
        if not self.settings.jobs.enabled:
            return  # nothing would do the work: the session keeps its pure window
        meta, uid, sid = gen.meta, gen.user_id, gen.session_id
        policy = self.summarizer.prompter.policy(meta, gen.character)
        args = {"user_id": uid, "session_id": sid}
        # The session's summary state was started by its first reply's write (the
        # turn's finish): a session that has one may be due for a summary.
        if policy.summary and meta.summary is not None:
            history = gen.context.history
            first_kept = history[0].seq if history else gen.user_message.seq
            if self.summarizer.due(meta, first_kept):
                await self.worker.enqueue(SUMMARY_JOB, args, dedupe=f"summary:{uid}:{sid}")
        if policy.memories and self.memories.due(done.message.seq, meta.extracted_seq):
            await self.worker.enqueue(EXTRACT_JOB, args, dedupe=f"memories:{uid}:{sid}")
        first_exchange = meta.message_count <= 2 and not gen.revision
        if meta.memory_on and self.settings.memory.generate_titles and first_exchange:
            await self.worker.enqueue(TITLE_JOB, args, dedupe=f"title:{uid}:{sid}")
