"""ChatService: the one API of the HTTP and CLI layers — sessions, and chat turns.

Turns (SPEC §3) live in chat/turns.py (begin, finish, degraded mode), chat/generation.py
(a turn as a server-owned task), chat/inflight.py (this process's turns in flight, their
lock renewal and stop polls, shutdown) and chat/resume.py (stop and re-attach from any
process, recovery of a generation whose process died); the service delegates to them.
"""

from __future__ import annotations

import logging
from typing import Any

from chatmem.characters import CharacterRegistry
from chatmem.chat.editing import REVISIONS, Editing, greeting_message
from chatmem.chat.generation import Delta, Ended, Generation, NativeEvent, TurnDone, TurnEvent
from chatmem.chat.memory import BackgroundMemory
from chatmem.chat.prompting import Prompter
from chatmem.chat.prompts import context_messages
from chatmem.chat.reconcile import ClientMessage, plan_turn
from chatmem.chat.resume import Attached
from chatmem.chat.sessions import SessionMethods
from chatmem.chat.stateless import StatelessTurns
from chatmem.chat.titles import is_placeholder, title_from_message
from chatmem.chat.turn_shape import TURN_READ_MESSAGES, TurnShape
from chatmem.chat.turns import Adjuster, Turns, idempotent_ids
from chatmem.config import Settings
from chatmem.durability.outbox import OUTBOX_DIR, Outbox
from chatmem.durability.replay import OutboxReplayer
from chatmem.errors import Conflict, StoreUnavailable
from chatmem.metrics import Metrics
from chatmem.models import Message, Role, SessionMeta
from chatmem.providers.base import ChatProvider
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.editing import MessageEdits
from chatmem.store.locks import Coordinator
from chatmem.store.memories import MemoryStore
from chatmem.store.profiles import ProfileStore
from chatmem.store.streams import GenerationStreams
from chatmem.store.turns import HISTORY_CHANGED, TurnStore
from chatmem.store.usage import UsageLedger

# The turn's types are part of what the service answers: importable from here too.
__all__ = [
    "Attached",
    "ChatService",
    "Delta",
    "Ended",
    "Generation",
    "NativeEvent",
    "TurnDone",
    "TurnEvent",
    "idempotent_ids",
]

log = logging.getLogger(__name__)

# A client turn planned from a read that another write changed before it began (a
# concurrent turn or edit of the session) is read and planned again, this many times.
CLIENT_TURN_ATTEMPTS = 3
_REPLANNED = (HISTORY_CHANGED, "edit_conflict")


class ChatService(SessionMethods):
    """The service layer: turns here, sessions, users and figures in chat/sessions.py."""

    def __init__(
        self,
        settings: Settings,
        store: RedisMemoryStore,
        provider: ChatProvider,
        characters: CharacterRegistry,
        coordinator: Coordinator,
        metrics: Metrics | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.characters = characters
        self.coordinator = coordinator
        self.metrics = metrics or Metrics()
        self.outbox = outbox or Outbox(settings.data_dir / OUTBOX_DIR)
        turn_store = TurnStore(store, coordinator)
        self.replayer = OutboxReplayer(self.outbox, turn_store, characters)
        self.profiles = ProfileStore(store.redis)
        self.prompter = Prompter(
            settings,
            provider,
            MemoryStore(store, ttl_s=settings.memory.memory_ttl_s),
            self.profiles,
        )
        self.turns = Turns(
            settings,
            turn_store,
            GenerationStreams(store.redis),
            provider,
            characters,
            self.prompter,
            self.metrics,
            self.outbox,
            self.replayer,
        )
        self.stateless = StatelessTurns(self.turns, UsageLedger(store))
        self.editing = Editing(
            MessageEdits(store),
            lock_wait_ms=settings.limits.session_lock_wait_ms,
            validate=self.validate_content,
        )
        local_model = hasattr(provider, "pending")  # one model, one core: turns go first
        self.background = BackgroundMemory(
            settings,
            store,
            characters,
            self.prompter,
            self.metrics,
            interactive_busy=lambda: local_model and bool(self.turns.inflight.running),
        )
        self.memories = self.background.memories

    async def start(self) -> None:
        """Adopt outboxes left by dead processes and start replaying, and start this
        process's background worker (app start-up)."""
        await self.replayer.start()
        await self.background.start()

    async def close(self) -> None:
        """Graceful shutdown: finish or persist the generations in flight, then flush the
        outbox (one last replay; what Redis cannot take now stays on disk). A background
        job cut short stays pending for another process."""
        await self.background.close()
        await self.drain(self.settings.server.shutdown_grace_s)
        await self.replayer.close()

    async def drain(self, grace_s: float = 0.0) -> None:
        """Wait for running generations up to `grace_s`, then stop the rest: their
        partial replies are stored as interrupted."""
        await self.turns.inflight.drain(grace_s)

    # --- sessions --------------------------------------------------------------------

    async def create_session(
        self,
        user_id: str,
        character_id: str | None = None,
        *,
        title: str = "",
        ttl_s: int | None = None,
        window_size: int | None = None,
        session_id: str | None = None,
        ensure: bool = False,
        memory: bool = True,
        temperature: float | None = None,
    ) -> tuple[SessionMeta, Message | None]:
        """`memory`: False for the seed routes' sessions (no summary, memories, titles);
        `temperature`: the chat's own (None: the character's)."""
        character = await self.characters.get(character_id or self.characters.default_id)
        await self.coordinator.check_write_rate(user_id)
        greetings = await self.prompter.greetings(user_id, character)
        greeting = greeting_message(greetings) if greetings else None
        meta = await self.store.create_session(
            user_id,
            character.id,
            session_id=session_id,
            title=title[:200] or character.name,
            ttl_s=ttl_s,
            window_size=window_size,
            greeting=greeting,
            ensure=ensure,
            memory=memory,
            temperature=temperature,
        )
        return meta, greeting

    # --- a turn ----------------------------------------------------------------------

    def validate_content(self, content: str) -> str:
        return self.turns.validate_content(content)

    async def prepare_turn(
        self,
        user_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        stream: bool = False,
        on_disconnect: str = "continue",
        adjust: Adjuster | None = None,
        character_id: str | None = None,
        history_messages: int | None = None,
        new_ttl_s: int | None = None,
        new_window_size: int | None = None,
        turn: TurnShape | None = None,
        figures: bool = False,
    ) -> Generation:
        """Begin a turn: its generation runs (server-owned) when this returns. `stream`:
        its deltas are relayed to subscribers and to its event stream (re-attach).
        `character_id` / `history_messages` / `new_ttl_s` / `new_window_size` (the seed
        routes'), `turn` (the OpenAI route's), `figures` (seed `POST /chat`'s): see
        chat/turn_shape.py."""
        gen = await self.turns.prepare(
            user_id,
            session_id,
            content,
            idempotency_key=idempotency_key,
            metadata=metadata,
            relay=stream,
            on_disconnect=on_disconnect,
            adjust=adjust,
            turn=turn
            or TurnShape(
                character_id, history_messages, new_ttl_s, new_window_size, figures=figures
            ),
        )
        self.background.watch(gen)
        await self._title_from_first_message(gen, content)
        return gen

    async def _title_from_first_message(self, gen: Generation, content: str) -> None:
        meta = gen.meta
        if not is_placeholder(meta.title, gen.character.name, meta.message_count):
            return
        title = title_from_message(content)
        if not title:
            return
        try:
            await self.store.update_session(gen.user_id, meta.session_id, title=title)
        except StoreUnavailable:
            log.info("title: Redis unavailable, session %s keeps its title", meta.session_id)
        else:
            meta.title = title

    async def prepare_revision(
        self,
        user_id: str,
        session_id: str,
        revision: str,
        *,
        stream: bool = False,
        on_disconnect: str = "continue",
        adjust: Adjuster | None = None,
        turn: TurnShape | None = None,
    ) -> Generation:
        """Begin a regenerate or a continue of the session's last reply (SPEC §3b): a
        turn that appends no user message and whose reply replaces the last one (a new
        alternative of it, or its longer text). `turn`: the OpenAI route's."""
        if revision not in REVISIONS:
            raise ValueError(f"unknown revision {revision!r}")
        gen = await self.turns.prepare(
            user_id,
            session_id,
            "",
            relay=stream,
            on_disconnect=on_disconnect,
            revision=revision,
            adjust=adjust,
            turn=turn,
        )
        self.background.watch(gen)
        return gen

    async def prepare_client_turn(
        self,
        user_id: str,
        session_id: str,
        prior: list[ClientMessage],
        new: ClientMessage,
        *,
        idempotency_key: str | None = None,
        stream: bool = False,
        on_disconnect: str = "continue",
        adjust: Adjuster | None = None,
    ) -> Generation:
        """A turn of a client that sends its whole conversation (`prior`, then its new
        message `new`: the user's, or a tool's result): reconciled with the stored one
        (chat/reconcile.py) first, at the cost of one read. The plan holds only if the
        session is still as read when the turn begins (its begin checks the newest
        message): otherwise it is read and planned again. With an idempotency key, a new
        user message is a plain send."""
        opts: dict[str, Any] = {"stream": stream, "on_disconnect": on_disconnect}
        opts["adjust"] = adjust
        if idempotency_key and new.role != Role.TOOL.value:
            return await self.prepare_turn(
                user_id, session_id, new.content, idempotency_key=idempotency_key, **opts
            )
        for attempt in range(1, CLIENT_TURN_ATTEMPTS + 1):
            try:
                return await self._client_turn(user_id, session_id, prior, new, opts)
            except Conflict as exc:
                if exc.code not in _REPLANNED or attempt == CLIENT_TURN_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _client_turn(
        self,
        user_id: str,
        session_id: str,
        prior: list[ClientMessage],
        new: ClientMessage,
        opts: dict[str, Any],
    ) -> Generation:
        snap = await self.store.read(user_id, session_id, last=self.store.max_messages)
        plan = plan_turn(prior, new, snap.messages)
        head = snap.messages[-1].msg_id if snap.messages else ""
        if plan.kind == "answer" or plan.kind == "regenerate":
            shape = TurnShape(expect_head=head)
            return await self.prepare_revision(user_id, session_id, plan.kind, turn=shape, **opts)
        if plan.kind == "diverge":
            keep = [plan.greeting] if plan.greeting is not None else []
            keep += [m.to_message() for m in plan.prior]
            await self.editing.diverge(user_id, session_id, snap, keep)
            head = keep[-1].msg_id if keep else ""
        # A tool's result goes in as a message of its own, with the results before it,
        # under the turn's lock in its begin script; then it is answered as a stored,
        # unanswered message is.
        before = [m.to_message() for m in plan.extra]
        if new.role == Role.TOOL.value:
            shape = TurnShape(before=(*before, new.to_message()), expect_head=head)
            return await self.prepare_revision(user_id, session_id, "answer", turn=shape, **opts)
        shape = TurnShape(before=tuple(before), expect_head=head)
        return await self.prepare_turn(user_id, session_id, new.content, turn=shape, **opts)

    async def complete(self, gen: Generation) -> TurnDone:
        """The generation's final event, once its reply is stored."""
        return await gen.wait()

    async def stop(self, user_id: str, session_id: str) -> bool:
        """Stop the session's generation in progress, in this process or any other."""
        return await self.turns.resumer.stop(user_id, session_id)

    async def attach(
        self, user_id: str, session_id: str, last_event_id: str | None = None
    ) -> Attached | None:
        """Re-attach to the session's running or just-ended generation (None: nothing)."""
        return await self.turns.resumer.attach(user_id, session_id, last_event_id)

    async def chat(self, user_id: str, session_id: str, content: str, **kwargs: Any) -> TurnDone:
        gen = await self.prepare_turn(user_id, session_id, content, **kwargs)
        return await self.complete(gen)

    async def preview_context(
        self, user_id: str, session_id: str, *, show_prompts: bool = True
    ) -> dict[str, Any]:
        """The exact messages the next turn would send, before its new message, with the
        token breakdown; the character's prompts as placeholders unless `show_prompts`
        (admins only: see `chat.prompts`)."""
        snap = await self.store.read(user_id, session_id, last=TURN_READ_MESSAGES)
        character = await self.characters.get(snap.meta.character_id)
        limits = self.prompter.limits_for(snap.meta, character)
        ctx = await self.prompter.assemble_turn(snap.meta, character, snap.messages, None, limits)
        system_tokens, post_history_tokens = await self.prompter.prompt_tokens(user_id, character)
        messages = context_messages(
            ctx,
            character,
            system_tokens=system_tokens,
            post_history_tokens=post_history_tokens,
            show_prompts=show_prompts,
        )
        summary = snap.meta.summary
        return {
            "messages": messages,
            "tokens": ctx.breakdown(),
            "memory": {
                "policy": self.prompter.policy(snap.meta, character).model_dump(),
                "summary": summary.to_dict(snap.meta) if summary is not None else None,
                "summary_in_context": ctx.summary_used,
                "memories_in_context": ctx.memories_used,
                "memories_left_out": ctx.memories_dropped,
            },
        }
