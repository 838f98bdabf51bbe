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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from chatmem.models import Message, Role

PlanKind = Literal["append", "answer", "regenerate", "diverge"]


@dataclass(frozen=True, slots=True)
class ClientMessage:
    role: str
    content: str


@dataclass(slots=True)
class Plan:
    kind: PlanKind
    # For `diverge`: the stored greeting to keep first (None: none), then `prior`.
    greeting: Message | None = None
    prior: list[ClientMessage] = field(default_factory=list)


def _agree(client: list[ClientMessage], stored: list[Message]) -> bool:
    """True if the newest messages of both agree as far as both go."""
    n = min(len(client), len(stored))
    return all(
        c.role == s.role.value and c.content == s.content
        for c, s in zip(client[len(client) - n :], stored[len(stored) - n :], strict=True)
    )


def plan_turn(prior: list[ClientMessage], new_text: str, stored: list[Message]) -> Plan:
    """What to do with a client's conversation `prior` + (user) `new_text`, given the
    stored messages (oldest first)."""
    greeting = stored[0] if stored and stored[0].metadata.get("greeting") else None
    conv = stored
    if greeting is not None and not (
        prior and prior[0] == ClientMessage("assistant", greeting.content)
    ):
        conv = stored[1:]
    last_user = ClientMessage("user", new_text)
    if not prior:
        # A client that sends only its new message: the same text as the last user
        # message is taken as that message again (SPEC §4: no duplicate).
        if conv and conv[-1].role is Role.USER and conv[-1].content == new_text:
            return Plan("answer")
        if len(conv) >= 2 and conv[-1].role is Role.ASSISTANT and _agree([last_user], conv[:-1]):
            return Plan("regenerate")
        return Plan("append")
    if _agree(prior, conv):
        return Plan("append")
    if conv and conv[-1].role is Role.USER and _agree([*prior, last_user], conv):
        return Plan("answer")
    if (
        len(conv) >= 2
        and conv[-1].role is Role.ASSISTANT
        and _agree([*prior, last_user], conv[:-1])
    ):
        return Plan("regenerate")
    keep = greeting if conv is not stored else None
    return Plan("diverge", greeting=keep, prior=prior)
