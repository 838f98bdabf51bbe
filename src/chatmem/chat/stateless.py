"""A turn without a session (the OpenAI route without `X-Session-Id`, SPEC §4): stateless,
as OpenAI is. The client's messages are the context exactly as sent; nothing is stored
in any session; the usage is added to the user's totals. It runs as a generation of its
own (chat/generation.py: streamed, stopped on disconnect) under a key no session has,
so no lock is taken and unrelated conversations never meet."""

from __future__ import annotations

import logging

from chatmem.chat.generation import Generation, Reading, TurnDone
from chatmem.chat.reconcile import ClientMessage, check_tool_results
from chatmem.chat.replies import reply_usage
from chatmem.chat.turns import Adjuster, Turns
from chatmem.context import AssembledContext
from chatmem.errors import StoreUnavailable
from chatmem.metrics import Metrics
from chatmem.models import Character, Message, Role, SessionMeta, new_id
from chatmem.providers.base import ChatProvider
from chatmem.store.usage import UsageLedger

log = logging.getLogger(__name__)


class StatelessTurns:
    """The GenerationHost of session-less generations."""

    def __init__(self, turns: Turns, ledger: UsageLedger) -> None:
        self.turns = turns
        self.ledger = ledger

    @property
    def provider(self) -> ChatProvider:
        return self.turns.provider

    @property
    def metrics(self) -> Metrics:
        return self.turns.metrics

    async def prepare(
        self,
        user_id: str,
        character: Character,
        messages: list[ClientMessage],
        *,
        relay: bool,
        adjust: Adjuster | None = None,
    ) -> Generation:
        """Start a generation whose context is `messages`, exactly as the client sent
        them (InvalidInput first if a tool message answers no call)."""
        check_tool_results([], messages)
        key = f"stateless-{new_id()}"
        tokens = sum(m.token_count for m in messages)
        sent = [m.to_llm() for m in messages]
        context = AssembledContext(sent, [], 0, tokens, 0, tokens, 0, 0, 0)
        gen = Generation(
            host=self,
            user_id=user_id,
            meta=SessionMeta(key, user_id, character.id),
            character=character,
            user_message=Message(Role.USER, "", msg_id=""),
            context=context,
            params=self.turns.prompter.params(character),
            lock_token="",
            reply_id=new_id(),
            generation_id=key,
            relay=relay,
            degraded=True,  # nothing of it is in Redis: no lock to renew, no stop to poll
            on_disconnect="stop",
        )
        if adjust is not None:
            adjust(gen)
        async with self.turns.inflight.reserve((user_id, key)) as slot:
            self.turns.inflight.run(slot, gen)
        return gen

    async def persist(self, gen: Generation, reading: Reading) -> TurnDone | None:
        if reading.error is not None and not reading.text:
            raise reading.error
        completion = reading.reply_tokens()
        usage = reply_usage(gen, reading, completion, self.turns.settings.llm.prices)
        metadata = reading.reply_metadata(usage=usage.to_dict())
        if reading.finish_reason:
            metadata["finish_reason"] = reading.finish_reason
        reply = Message(Role.ASSISTANT, reading.text, completion, gen.reply_id, metadata=metadata)
        memory = "ok"
        try:
            await self.ledger.add(gen.user_id, usage)
        except StoreUnavailable:
            log.warning("usage of a stateless turn not counted: redis is unavailable")
            memory = "degraded"
        self.metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(usage.completion_tokens)
        if reading.error is not None:
            raise reading.error
        return TurnDone(reply, None, usage, memory=memory)
