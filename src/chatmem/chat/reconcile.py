"""Reconciling a client's whole conversation with the stored one (SPEC §4, the
OpenAI-compatible route). Pure: values in, a plan out.

Most OpenAI clients send the whole conversation every time; chatmem keeps it too. The
client's messages (system prompts left out) end with its new user message; the ones
before it (`prior`) are compared with the stored messages by role and text, newest
first, as far as both go (a long session's oldest messages may be trimmed from Redis;
a client may have dropped old ones). The stored greeting counts only when the client
has it too. Then:

- `append`: `prior` agrees with the stored messages, or is empty (a client that sends
  only its new message) and the new message is not the last user message again: the
  new message is appended and answered, as a send.
- `answer`: the stored conversation ends with this same user message, unanswered (the
  model failed; the client retries): it is answered, not stored again.
- `regenerate`: the stored conversation ends with this same user message and a reply
  (the client re-sent the request): a new alternative of that reply.
- `diverge`: anything else (the user edited an earlier message): the stored version is
  kept as a fork and the session goes on from the client's version.

Tool calls (an agent loop, SPEC §4) are part of the history like any message: an
assistant message is compared with its tool calls (ids, names, arguments as JSON
values: a client may re-serialize them), a tool message with the id of the call it
answers. The new message may be a tool result instead of a user message; when the
model made several calls, the client's results before the last one are new too (they
follow the stored reply that made the calls): they are the plan's `extra`, appended
before it. Everything new is checked first (`check_tool_results`), so a tool message
that answers no call is refused (400) before anything is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from chatmem.errors import InvalidInput
from chatmem.models import TOOL_CALL_ID, TOOL_CALLS, Message, Role
from chatmem.tokens import count_tokens

PlanKind = Literal["append", "answer", "regenerate", "diverge"]
INVALID_TOOL_MESSAGE = "invalid_tool_message"


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A message as a client sent it; for an assistant message, its tool calls (OpenAI's
    objects); for a tool message, the id of the call it answers."""

    role: str
    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str | None = None

    @classmethod
    def of(cls, msg: Message) -> ClientMessage:
        calls = msg.metadata.get(TOOL_CALLS) or ()
        return cls(msg.role.value, msg.content, tuple(calls), msg.metadata.get(TOOL_CALL_ID))

    @property
    def call_ids(self) -> list[str]:
        return [str(c.get("id")) for c in self.tool_calls]

    def matches(self, stored: Message) -> bool:
        if self.role != stored.role.value or self.content != stored.content:
            return False
        meta = stored.metadata
        if not (self.tool_calls or self.tool_call_id or TOOL_CALLS in meta or TOOL_CALL_ID in meta):
            return True  # most messages: no tool fields on either side
        same_id = self.tool_call_id == meta.get(TOOL_CALL_ID)
        return same_id and _call_keys(self.tool_calls) == _call_keys(meta.get(TOOL_CALLS) or ())

    @property
    def token_count(self) -> int:
        return count_tokens(self.content) + call_tokens(self.tool_calls)

    def to_llm(self) -> dict[str, Any]:
        """The message as the model is sent it (any role: the stateless route's)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out[TOOL_CALLS] = list(self.tool_calls)
            out["content"] = self.content or None
        if self.tool_call_id is not None:
            out[TOOL_CALL_ID] = self.tool_call_id
        return out

    def to_message(self) -> Message:
        """The message to store (a user, assistant or tool message)."""
        metadata: dict[str, Any] = {}
        if self.tool_calls:
            metadata[TOOL_CALLS] = list(self.tool_calls)
        if self.tool_call_id is not None:
            metadata[TOOL_CALL_ID] = self.tool_call_id
        return Message(Role(self.role), self.content, self.token_count, metadata=metadata)


def call_tokens(calls: Sequence[dict[str, Any]]) -> int:
    """What a message's tool calls cost in its context (counted as their JSON)."""
    return count_tokens(orjson.dumps(list(calls)).decode()) if calls else 0


def _call_keys(calls: Sequence[Any]) -> list[tuple[Any, Any, Any]]:
    keys = []
    for call in calls:
        function = call.get("function") or {}
        args = function.get("arguments")
        try:  # LangChain, for one, sends the arguments back re-serialized
            parsed = orjson.loads(args) if isinstance(args, str) else args
        except orjson.JSONDecodeError:
            parsed = args
        keys.append((call.get("id"), function.get("name"), parsed))
    return keys


def check_tool_results(before: Sequence[ClientMessage], new: Sequence[ClientMessage]) -> None:
    """Refuse (400 `invalid_tool_message`) a tool message in `new` that does not answer,
    by its `tool_call_id`, a call of the assistant message it follows (tool messages
    between them answering the same one), or answers a call twice. `before`: what
    precedes `new` (the stored messages, or nothing)."""
    seq = [*before, *new]
    for i in range(len(before), len(seq)):
        msg = seq[i]
        if msg.role != Role.TOOL.value:
            continue
        if not msg.tool_call_id:
            raise InvalidInput(
                "a tool message needs the tool_call_id of the call it answers",
                code=INVALID_TOOL_MESSAGE,
            )
        j = i - 1
        answered = set()
        while j >= 0 and seq[j].role == Role.TOOL.value:
            answered.add(seq[j].tool_call_id)
            j -= 1
        if j < 0 or msg.tool_call_id not in seq[j].call_ids:
            raise InvalidInput(
                f"tool_call_id {msg.tool_call_id[:64]!r} answers no tool call of the "
                "assistant message before it",
                code=INVALID_TOOL_MESSAGE,
            )
        if msg.tool_call_id in answered:
            raise InvalidInput(
                f"tool call {msg.tool_call_id[:64]!r} is answered twice", code=INVALID_TOOL_MESSAGE
            )


@dataclass(slots=True)
class Plan:
    kind: PlanKind
    # For `diverge`: the stored greeting to keep first (None: none), then `prior`.
    greeting: Message | None = None
    prior: list[ClientMessage] = field(default_factory=list)
    # For `append`: the client's messages to store before the new one (tool results).
    extra: list[ClientMessage] = field(default_factory=list)


def _agree(client: Sequence[ClientMessage], stored: list[Message]) -> bool:
    """True if the newest messages of both agree as far as both go."""
    n = min(len(client), len(stored))
    return all(
        c.matches(s)
        for c, s in zip(client[len(client) - n :], stored[len(stored) - n :], strict=True)
    )


def plan_turn(prior: list[ClientMessage], new: ClientMessage, stored: list[Message]) -> Plan:
    """What to do with a client's conversation `prior` + `new` (a user message or a tool
    result), given the stored messages (oldest first). Raises InvalidInput when what
    would be stored has a tool message that answers no call."""
    plan = _plan(prior, new, stored)
    tool = Role.TOOL.value
    if plan.kind == "append" and any(m.role == tool for m in [*plan.extra, new]):
        conv = [ClientMessage.of(m) for m in stored[-MAX_CALLING_CONTEXT:]]
        check_tool_results(conv, [*plan.extra, new])
    elif plan.kind == "diverge":
        check_tool_results([], [*plan.prior, new])
    return plan


# How far back a new tool result's call is looked for among the stored messages.
MAX_CALLING_CONTEXT = 256


def _plan(prior: list[ClientMessage], new: ClientMessage, stored: list[Message]) -> Plan:
    greeting = stored[0] if stored and stored[0].metadata.get("greeting") else None
    conv = stored
    if greeting is not None and not (prior and prior[0].matches(greeting)):
        conv = stored[1:]
    if not prior:
        # A client that sends only its new message: the same message as the last one
        # is taken as that message again (SPEC §4: no duplicate).
        if conv and conv[-1].role is not Role.ASSISTANT and new.matches(conv[-1]):
            return Plan("answer")
        if len(conv) >= 2 and conv[-1].role is Role.ASSISTANT and _agree([new], conv[:-1]):
            return Plan("regenerate")
        return Plan("append")
    if _agree(prior, conv):
        if not conv and new.role == Role.TOOL.value:
            # A new session whose first message is a tool result: the call it answers
            # (and all before it) is the client's to give.
            return Plan("append", extra=prior)
        return Plan("append")
    if conv and conv[-1].role is not Role.ASSISTANT and _agree([*prior, new], conv):
        return Plan("answer")
    if len(conv) >= 2 and conv[-1].role is Role.ASSISTANT and _agree([*prior, new], conv[:-1]):
        return Plan("regenerate")
    # The model made several calls: the results before the last one are new too.
    for n in range(1, len(prior)):
        if prior[-n].role != Role.TOOL.value:
            break
        if conv and _agree(prior[:-n], conv):
            return Plan("append", extra=prior[-n:])
    keep = greeting if conv is not stored else None
    return Plan("diverge", greeting=keep, prior=prior)
