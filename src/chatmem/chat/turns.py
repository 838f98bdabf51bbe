"""Turns: starting, finishing, stopping and re-attaching to generations (SPEC §3).

A turn: validate → reserve the session in this process (InFlight) → **begin** (one round
trip: rate limit, the session's lock, the per-user generation cap, idempotency, the user
message appended, the context read) → the generation runs as a task of its own
(chat/generation.py), renewing its lock → **finish** (one round trip: the reply with
usage and totals, the lock released, the event stream ended).

What begin may find instead of a new turn:
- an idempotent retry (`Idempotency-Key` / `client_message_id`): the stored reply is
  replayed, or the generation still running is re-attached to — found by message id in
  the session's id index, however many messages came after it;
- a busy session: begin is retried until `session_lock_wait_ms`, then 409;
- a generation whose process died (its lock expired, its event stream not ended): what
  the stream holds is stored as its reply, marked interrupted, and the turn goes on.
  A stop or a re-attach that finds one does the same.

When Redis cannot be reached, a turn degrades instead of failing (chat/degraded.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

from chatmem.characters import CharacterRegistry
from chatmem.chat.degraded import DegradedTurns, TurnParts
from chatmem.chat.editing import revised, revision_parts
from chatmem.chat.generation import Generation, Reading, TurnDone
from chatmem.chat.inflight import InFlight
from chatmem.chat.prompting import Prompter
from chatmem.chat.replies import error_payload, reply_usage
from chatmem.chat.resume import Resumer
from chatmem.chat.turn_shape import TurnRequest, TurnShape, follow_character
from chatmem.config import Settings
from chatmem.durability.outbox import Outbox
from chatmem.durability.replay import OutboxReplayer
from chatmem.errors import (
    ChatmemError,
    Conflict,
    NotReplicated,
    SessionBusy,
    SessionNotFound,
    StoreUnavailable,
)
from chatmem.metrics import Metrics
from chatmem.models import Message, Role, SessionMeta, Usage, new_id
from chatmem.providers.base import ChatProvider, GenerationParams
from chatmem.store.streams import GenerationStreams, StreamSnapshot
from chatmem.store.turns import BeginResult, TurnStore, turn_ordinal
from chatmem.tokens import count_tokens

SessionKey = tuple[str, str]
# Changes a generation before it starts (the OpenAI route: its parameters, its prompt).
Adjuster = Callable[[Generation], None]


def idempotent_ids(key: str) -> tuple[str, str]:
    """Message ids for a client's idempotency key: a retry writes nothing new."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"k{digest}", f"k{digest}a"


def same_request(stored: Message, sent: Message) -> None:
    """A retry with an Idempotency-Key must send what the first request sent: a key used
    again for another message is the client's mistake (409), not that message's reply."""
    if sent.content and stored.content != sent.content:
        raise Conflict(
            "this Idempotency-Key was used for another message: use a new key",
            code="idempotency_key_reused",
        )


class Turns:
    def __init__(
        self,
        settings: Settings,
        turn_store: TurnStore,
        streams: GenerationStreams,
        provider: ChatProvider,
        characters: CharacterRegistry,
        prompter: Prompter,
        metrics: Metrics,
        outbox: Outbox,
        replayer: OutboxReplayer,
    ) -> None:
        self.turn_store, self.streams, self._provider = turn_store, streams, provider
        self.degraded = DegradedTurns(
            TurnParts(settings, characters, prompter, metrics, outbox, replayer)
        )
        self.settings, self.characters, self.prompter = settings, characters, prompter
        self._metrics, self.outbox, self.replayer = metrics, outbox, replayer
        limits = settings.limits
        self.inflight = InFlight(
            turn_store.coordinator,
            replayer,
            lock_wait_ms=limits.session_lock_wait_ms,
            starts=limits.starts_in_flight,
        )
        self.resumer = Resumer(turn_store, streams, self.inflight, metrics)

    @property
    def provider(self) -> ChatProvider:
        return self._provider

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    def validate_content(self, content: str) -> str:
        return self.prompter.validate_content(content)

    # --- starting a turn ---------------------------------------------------------------

    async def prepare(
        self,
        user_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        relay: bool = False,
        on_disconnect: str = "continue",
        adjust: Adjuster | None = None,
        revision: str = "",
        turn: TurnShape | None = None,
    ) -> Generation:
        """Begin a turn; its generation is running (or, for a retry, done) on return.

        `turn`: what a seed route or the OpenAI route asks more (chat/turn_shape.py). Errors
        here are the client's to see. Degrades when Redis cannot be reached, but for a
        `revision` (regenerate, continue: chat/editing.py), which needs the history.
        """
        turn = turn or TurnShape()
        if revision:
            user_msg = Message(Role.USER, "", msg_id="")  # a revision appends none
        else:
            text = self.validate_content(content)
            user_msg = Message(Role.USER, text, count_tokens(text), metadata=dict(metadata or {}))
        reply_id = new_id()
        if idempotency_key:
            user_msg.msg_id, reply_id = idempotent_ids(idempotency_key)
            local = self.inflight.local((user_id, session_id))
            if local is not None and local.user_message.msg_id == user_msg.msg_id:
                same_request(local.user_message, user_msg)
                return local  # a retry of the generation running here: re-attach
        async with self.inflight.reserve((user_id, session_id)) as slot:
            gen: Generation | None = None
            opts: dict[str, Any] = {"relay": relay, "on_disconnect": on_disconnect}
            opts["ordinal"], opts["shape"] = turn_ordinal(time.time()), turn
            if revision:
                opts["revision"] = revision
            req = TurnRequest(
                user_id, session_id, user_msg, reply_id, bool(idempotency_key), opts, turn
            )
            if not self.replayer.is_down(user_id):
                try:
                    gen = await self._redis_turn(req)
                except NotReplicated:
                    raise  # strict: refused (its writes are on the master: no outbox)
                except StoreUnavailable as exc:
                    self.replayer.mark_down(exc, user_id)
            if gen is None and (revision or turn.before):
                raise StoreUnavailable("redis is unavailable: the history cannot be revised")
            if gen is None:
                gen = await self.degraded.turn(self, req)
            if adjust is not None:
                adjust(gen)
            if not gen.finished:
                self.inflight.run(slot, gen)
            return gen

    async def _redis_turn(self, req: TurnRequest) -> Generation:
        if self.outbox.has_pending(req.user_id, req.session_id):
            await self.degraded.replay_first(req.user_id, req.session_id)
        res = await self._begin(req)
        if isinstance(res, Generation):
            return res
        try:
            return await self._generation(req, res)
        except BaseException as exc:
            # Begun but never run: end the turn now, or its lock would hold the session
            # until its TTL (the lost release of issue 16).
            await self._abandon(req.user_id, req.session_id, res.token, req.reply_id, exc)
            raise

    async def _begin(self, req: TurnRequest) -> BeginResult | Generation:
        """The begin round trip, until the session is ours (or a retry's reply is found:
        its replayed generation). A session this process still holds records for in its
        outbox exists for the client: they are stored first, then it is begun again."""
        user_id, session_id, reply_id, turn = req.user_id, req.session_id, req.reply_id, req.shape
        token = self.turn_store.coordinator.new_token()
        gen_id = reply_id  # unique per turn: it names the generation's events too
        deadline = time.monotonic() + self.settings.limits.session_lock_wait_ms / 1000
        delay = 0.01
        restored = False
        while True:
            try:
                res = await self.turn_store.begin(
                    user_id,
                    session_id,
                    req.user_msg,
                    reply_id=reply_id,
                    generation_id=gen_id,
                    token=token,
                    idempotent=req.idempotent,
                    read_last=turn.read_messages,
                    ordinal=req.opts["ordinal"],
                    expect_head=turn.expect_head,
                    before=turn.before,
                    memories=self.prompter.memories_read(user_id, turn.character_id),
                )
            except SessionNotFound:
                if restored or not self.outbox.holds(user_id, session_id):
                    raise
                restored = True
                await self.degraded.replay_first(user_id, session_id, applied_too=True)
                continue
            except NotReplicated:
                # Strict: refused. Its writes are on the master: the lock is released
                # there, nothing goes to the outbox.
                await self._abandon(user_id, session_id, token, reply_id, None)
                raise
            except StoreUnavailable:
                # The script may have taken the lock before the connection failed.
                self.replayer.defer_release(user_id, session_id, token)
                raise
            if res.kind == "ok":
                res.token = token
                return res
            if res.kind == "orphan":
                await self.resumer.recover(
                    user_id, session_id, StreamSnapshot(True, False, res.entries)
                )
                continue
            if res.kind == "replay":
                assert res.user_message is not None
                same_request(res.user_message, req.user_msg)
                if res.reply is not None:
                    done = TurnDone(res.reply, res.user_message, Usage(), replayed=True)
                    return await self._replayed(user_id, session_id, done, token, gen_id)
                if not res.running:
                    raise Conflict("that message was stored without a reply", code="turn_lost")
                # Its generation runs in another process: wait for its end, then replay.
                await self.resumer.wait_end(user_id, session_id)
                continue
            if time.monotonic() + delay > deadline:
                raise SessionBusy()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _abandon(
        self, user_id: str, session_id: str, token: str, gen_id: str, exc: BaseException | None
    ) -> None:
        """End a begun turn that will not run: its lock released, its stream ended."""
        error = exc if isinstance(exc, ChatmemError) else None
        try:
            await self.turn_store.abandon(user_id, session_id, token, gen_id, error)
        except StoreUnavailable:
            self.replayer.defer_release(user_id, session_id, token)

    async def _generation(self, req: TurnRequest, res: BeginResult) -> Generation:
        assert res.meta is not None
        user_id, reply_id, opts, turn = req.user_id, req.reply_id, req.opts, req.shape
        token, gen_id = res.token, reply_id
        msgs = res.messages
        if not opts.get("revision"):
            stored_user, history, last = msgs[-1], msgs[:-1], msgs[-1]
        else:
            stored_user, opts["revises"], history, last = revision_parts(opts["revision"], msgs)
        if res.ordinal:
            opts["ordinal"] = res.ordinal  # raised past a clock that ran ahead
        character = await self.characters.get(turn.character_id or res.meta.character_id)
        await follow_character(self.turn_store.store, res.meta, character)
        self.degraded.remember_character(req.key, character)
        self.prompter.note(character)
        limits = self.prompter.limits_for(res.meta, character, turn.history_messages)
        # The memories the begin read, if they are this character's (else read now).
        read = res.memories[1] if res.memories and res.memories[0] == character.id else None
        context = await self.prompter.assemble_turn(
            res.meta, character, history, last, limits, memories=read
        )
        return Generation(
            host=self,
            user_id=user_id,
            meta=res.meta,
            character=character,
            user_message=stored_user,
            context=context,
            params=self.prompter.params(character, res.meta),
            lock_token=token,
            reply_id=reply_id,
            generation_id=gen_id,
            unconfirmed=not res.confirmed,
            **opts,
        )

    async def _replayed(
        self, user_id: str, session_id: str, done: TurnDone, token: str, gen_id: str
    ) -> Generation:
        character = await self.degraded.character_of((user_id, session_id))
        meta = SessionMeta(session_id, user_id, character.id)
        limits = self.prompter.limits_for(meta, character)
        return Generation.replayed(
            self,
            done,
            user_id=user_id,
            meta=meta,
            character=character,
            user_message=done.user_message or done.message,
            context=self.prompter.assemble(character, [], None, limits),
            params=GenerationParams(),
            lock_token=token,
            reply_id=done.message.msg_id,
            generation_id=gen_id,
        )

    # --- finishing a turn (GenerationHost) ---------------------------------------------

    async def persist(self, gen: Generation, reading: Reading) -> TurnDone | None:
        """Store the reply and end the turn (the finish round trip); raise the turn's
        error instead of a reply when it failed before any text."""
        reply: Message | None = None
        usage = Usage()
        if reading.error is None or reading.text:
            completion = reading.reply_tokens()  # its tool calls too
            usage = reply_usage(gen, reading, completion, self.settings.llm.prices)
            model = gen.params.model or self.provider.info.name
            metadata = reading.reply_metadata(model=model, usage=usage.to_dict())
            if reading.finish_reason:
                metadata["finish_reason"] = reading.finish_reason
            if reading.interrupted:
                metadata["interrupted"] = True
            reply = Message(
                Role.ASSISTANT, reading.text, completion, msg_id=gen.reply_id, metadata=metadata
            )
            # The turn lock holds the session, so the reply directly follows the user message.
            reply.seq = gen.user_message.seq + 1 if gen.user_message.seq else 0
            if gen.revises is not None:
                reply = revised(gen.revision, gen.revises, reply)
        degraded = gen.degraded
        done = TurnDone(reply, gen.user_message, usage) if reply is not None else None
        if not degraded:
            if gen.appending is not None:
                await gen.appending.wait()  # the tick's append first: deltas stay in order
            end = error_payload(reading) if reading.error or done is None else done.payload()
            try:
                finished = await self.turn_store.finish(
                    gen.user_id,
                    gen.session_id,
                    reply,
                    usage,
                    token=gen.lock_token,
                    generation_id=gen.generation_id,
                    tail=gen.take_unflushed() if gen.relay else None,
                    end_payload=end,
                    replaces=gen.revises.msg_id if gen.revises is not None else "",
                    ordinal=gen.ordinal,
                    user_message=gen.user_message if gen.revises is None else None,
                    figures=gen.shape.figures,
                    start_summary=gen.meta.summary is None
                    and self.prompter.policy(gen.meta, gen.character).summary,
                )
                gen.unconfirmed = gen.unconfirmed or not finished.confirmed
                if done is not None:
                    done.figures = finished.figures
            except NotReplicated:
                raise  # strict: the client is told; the reply is on the master
            except StoreUnavailable as exc:
                # Redis went away during the turn: the reply is kept all the same.
                self.replayer.mark_down(exc, gen.user_id)
                self.replayer.defer_release(gen.user_id, gen.session_id, gen.lock_token)
                self.metrics.degradations.labels("reply_write").inc()
                degraded = True
        if gen.revises is None and (degraded or gen.unconfirmed):
            await self.degraded.keep_turn(gen, reply, usage, in_redis=not degraded)
        if reply is not None:
            self.metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
            self.metrics.tokens.labels("completion").inc(usage.completion_tokens)
        if reading.error is not None:
            # The partial reply (if any) is stored, interrupted; the client sees the error.
            raise reading.error
        assert done is not None
        done.memory = "degraded" if degraded else "unconfirmed" if gen.unconfirmed else "ok"
        return done
