"""The rolling summary of a session (SPEC §2b), made by a background job.

When a turn's context leaves out `2 × summary_batch_rounds` messages or more that the
summary does not cover yet (out of the window, or squeezed out by the budget), a
`summary` job is queued (one per session at a time). The job reads the session, finds
what left the context and is not covered, and folds it in a few rounds at a time:
new summary = summarize(old summary, those messages), each stored with a compare and
swap on the summary's version and the id of the newest message it covers. So the job is
idempotent: run twice, the second run finds nothing left to fold (or loses the swap).

A summary marked stale (a covered message was edited or deleted: store/edit_scripts.py)
is rebuilt first: from the covered messages still stored when it covers no trimmed one,
else from the old summary and the covered messages still stored.

The session keeps the messages the summary does not cover yet (the trim waits for it,
store/memory_scripts.py `_KEEP_UNCOVERED`) up to a hard cap; messages the cap trimmed
uncovered are reported here: counted in `chatmem_summary_uncovered_trims_total` and
logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatmem.chat.background import SessionJob, drop_output
from chatmem.chat.prompting import Prompter
from chatmem.context import HEADING_TOKENS
from chatmem.errors import ChatmemError, SessionNotFound
from chatmem.memory_prompts import summary_prompt
from chatmem.models import Character, Message, SessionMeta, SessionSnapshot
from chatmem.store import keys
from chatmem.store.jobs import Job
from chatmem.tokens import count_tokens

log = logging.getLogger(__name__)

SUMMARY_JOB = "summary"
# Passes of one summary job over a session that turns keep adding to.
MAX_PASSES = 20
# Roughly how many words fit a token budget (English averages ~0.75 words a token).
WORDS_PER_TOKEN = 0.6


class SummaryMoved(ChatmemError):
    """The message a new summary would end at is gone: the job is retried on a new read."""


@dataclass(frozen=True, slots=True)
class Evicted:
    """What a read of a session says the summary should fold in next."""

    messages: list[Message]  # left the context, not covered, oldest first
    covered: list[Message]  # covered and still stored (for a rebuild)


def evicted(snap: SessionSnapshot, character: Character, prompter: Prompter) -> Evicted:
    """Messages of `snap` that the next turn's context would leave out, not yet covered
    (the memories' share of the budget is not counted: a few may wait a round more)."""
    meta = snap.meta
    summary = meta.summary
    through = summary.through_seq(meta) if summary is not None else 0
    limits = prompter.limits_for(meta, character)
    block = prompter.block(meta, prompter.policy(meta, character), [])
    # The next turn brings a new user message: its round's tokens are not known yet.
    ctx = prompter.assemble(character, snap.messages, None, limits, extra=block)
    first_kept = ctx.history[0].seq if ctx.history else meta.last_seq + 1
    return Evicted(
        [m for m in snap.messages if through < m.seq < first_kept],
        [m for m in snap.messages if m.seq <= through],
    )


def fit_summary(text: str, max_tokens: int) -> tuple[str, int]:
    """The summary cut at a word to fit `max_tokens` with its heading, and its tokens."""
    room = max(0, max_tokens - HEADING_TOKENS)
    tokens = count_tokens(text)
    while tokens > room and text:
        words = text.split()
        keep = max(0, min(len(words) - 1, int(len(words) * room / max(tokens, 1))))
        text = " ".join(words[:keep])
        tokens = count_tokens(text)
    return text, tokens


class Summarizer(SessionJob):
    """The `summary` job, and when a turn makes it due."""

    kind = SUMMARY_JOB

    @property
    def batch(self) -> int:
        """Messages waiting that make a summary job worth it."""
        return 2 * self.prompter.settings.memory.summary_batch_rounds

    def due(self, meta: SessionMeta, first_kept_seq: int) -> bool:
        """Whether a turn whose context began at `first_kept_seq` leaves enough out."""
        summary = meta.summary
        if summary is None:
            return False
        if summary.stale:
            return True
        return first_kept_seq - 1 - summary.through_seq(meta) >= self.batch

    async def run(self, job: Job) -> None:
        """The `summary` job: args `user_id`, `session_id`. Turns that came while it ran
        queued no other (one job per session at a time): it reads the session again
        and goes on until nothing is left to fold (at most MAX_PASSES times)."""
        for _ in range(MAX_PASSES):
            if not await self._pass(job.args["user_id"], job.args["session_id"]):
                return

    async def _pass(self, uid: str, sid: str) -> bool:
        """Fold what is due now; whether anything was."""
        read_all = self.store.max_messages * keys.SUMMARY_HARD_CAP_FACTOR
        try:
            snap = await self.store.read(uid, sid, last=read_all)
        except SessionNotFound:
            return False  # deleted or expired meanwhile: nothing to summarize
        meta = snap.meta
        character = await self.characters.get(meta.character_id)
        summary = meta.summary
        if summary is None or not self.prompter.policy(meta, character).summary:
            return False
        text, version = summary.text, summary.version
        rebuilt = summary.stale
        if summary.stale:
            covered = [m for m in snap.messages if m.seq <= summary.through_seq(meta)]
            base = "" if summary.covered_total <= summary.covers else summary.text
            if covered:
                text = await self._fold(base, covered, character, meta)
                if not await self._put(meta, version, covered[-1], text, 0, rebuild=True):
                    return False
                version += 1
                snap = await self.store.read(uid, sid, last=read_all)
        todo = evicted(snap, character, self.prompter).messages
        if len(todo) < self.batch:
            return rebuilt
        step = 2 * self.batch  # a few rounds at a time
        for i in range(0, len(todo), step):
            chunk = todo[i : i + step]
            text = await self._fold(text, chunk, character, meta)
            if not await self._put(meta, version, chunk[-1], text, len(chunk), rebuild=False):
                return False
            version += 1
        return True

    async def _fold(
        self, old: str, messages: list[Message], character: Character, meta: SessionMeta
    ) -> str:
        mem = self.prompter.settings.memory
        words = max(20, int(mem.summary_max_tokens * WORDS_PER_TOKEN))
        prompt = summary_prompt(old, messages, character=character.name, words=words)
        text = await self.ask(prompt, character, max_tokens=mem.background_max_tokens)
        if not text:
            drop_output(self.metrics, SUMMARY_JOB, meta.session_id, "an empty summary")
            raise ValueError(f"the model gave an empty summary for session {meta.session_id}")
        return text

    async def _put(
        self,
        meta: SessionMeta,
        version: int,
        through: Message,
        text: str,
        folded: int,
        *,
        rebuild: bool,
    ) -> bool:
        """Store one step; False when another worker stored one meanwhile (it goes on)."""
        text, tokens = fit_summary(text, self.prompter.settings.memory.summary_max_tokens)
        res = await self.summaries.put(
            meta.user_id,
            meta.session_id,
            version=version,
            through_id=through.msg_id,
            text=text,
            tokens=tokens,
            folded=folded,
            rebuild=rebuild,
        )
        if res.lost:
            self.metrics.uncovered_trims.inc(res.lost)
            log.warning(
                "session %s: %d messages were trimmed before the summary covered them "
                "(the hard cap of %d × max_messages)",
                meta.session_id,
                res.lost,
                keys.SUMMARY_HARD_CAP_FACTOR,
            )
        if res.outcome == "moved":
            raise SummaryMoved(f"message {through.msg_id} moved during the summary")
        return res.outcome == "stored"
