"""The prompts of background work — summaries, memory extraction, titles — in one place,
versioned (SPEC §2b). Short and extractive, so that small models (the embedded 135M
one) manage them too: names, places, preferences, commitments; no style, no guessing.

Each prompt's first line names its task (`SUMMARY_TASK`, …) so that logs, tests and a
fake model can tell them apart. Bump `PROMPTS_VERSION` with any change of wording: the
warnings about model output dropped as invalid name it (chat/background.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from chatmem.models import Message

PROMPTS_VERSION = "2"

SUMMARY_TASK = "Task: update the conversation summary."
EXTRACT_TASK = "Task: update the memory list."
TITLE_TASK = "Task: title the chat."

_SUMMARY_SYSTEM = f"""{SUMMARY_TASK}
You keep notes of a chat between a user and {{character}}. Rewrite the notes so they
also hold the new messages. Keep every name, place, date, number, preference and
promise. Short factual sentences, no opinions, nothing invented. At most {{words}} words.
Answer with the notes only."""

_EXTRACT_SYSTEM = f"""{EXTRACT_TASK}
You keep a list of short facts about the user (name, family, places, likes, dislikes,
plans, promises made to them). Read the new messages and answer with JSON only:
{{"ops": [{{"op": "add", "text": "..."}}, {{"op": "update", "id": "m1", "text": "..."}},
{{"op": "delete", "id": "m2"}}]}}
add: a new fact. update: a fact that changed. delete: a fact now false.
Facts are one short sentence each, about the user. No facts: {{"ops": []}}."""

# The instruction comes after the chat: the embedded 135M model, asked first, went on
# with the chat as the character instead ("Luna: Kyoto in April is a fantastic …").
_TITLE_SYSTEM = f"""{TITLE_TASK}
You write short titles."""
_TITLE_ASK = "Write a title of three to six words for this chat. Answer with the title only."


def _transcript(messages: Sequence[Message], character: str) -> str:
    names = {"user": "User", "assistant": character, "system": "System"}
    return "\n".join(f"{names.get(m.role.value, m.role.value)}: {m.content}" for m in messages)


def summary_prompt(
    old_summary: str, messages: Sequence[Message], *, character: str, words: int
) -> list[dict[str, str]]:
    """Fold `messages` into `old_summary` (incremental: SPEC §2b)."""
    system = _SUMMARY_SYSTEM.format(character=character, words=words)
    notes = old_summary or "(none yet)"
    user = f"Notes so far:\n{notes}\n\nNew messages:\n{_transcript(messages, character)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def extract_prompt(
    existing: Sequence[tuple[str, str]], messages: Sequence[Message], *, character: str
) -> list[dict[str, str]]:
    """`existing`: (short id, text) of the memories the model may update or delete."""
    listed = "\n".join(f"{sid}: {text}" for sid, text in existing) or "(none)"
    user = f"Facts so far:\n{listed}\n\nNew messages:\n{_transcript(messages, character)}"
    return [{"role": "system", "content": _EXTRACT_SYSTEM}, {"role": "user", "content": user}]


def title_prompt(messages: Sequence[Message], *, character: str) -> list[dict[str, str]]:
    """`messages`: the first exchange (the user's first message and its reply)."""
    user = f"Chat:\n{_transcript(messages, character)}\n\n{_TITLE_ASK}"
    return [{"role": "system", "content": _TITLE_SYSTEM}, {"role": "user", "content": user}]
