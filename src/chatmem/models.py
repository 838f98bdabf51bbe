"""The domain's values: messages, session meta, usage, characters.

Messages and meta are slotted dataclasses because the store builds them on every turn;
characters are pydantic models because they are validated from YAML, JSON and cards.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    # A tool's result, answering one of an assistant message's tool calls (the
    # OpenAI-compatible route's agent loops).
    TOOL = "tool"


# Where a message keeps OpenAI's tool fields: in its metadata, so that the store, the
# outbox, alternatives and export/import carry them as they carry any metadata.
# An assistant message's calls, each `{"id", "type": "function", "function": {"name",
# "arguments"}}`, as the model gave them:
TOOL_CALLS = "tool_calls"
# A tool message's answer to one of them: that call's id.
TOOL_CALL_ID = "tool_call_id"


class SessionState(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    ENDED = "ENDED"


def new_id() -> str:
    return uuid.uuid4().hex


def now_s() -> float:
    return round(time.time(), 3)


@dataclass(slots=True)
class Message:
    role: Role
    content: str
    token_count: int = 0
    msg_id: str = field(default_factory=new_id)
    timestamp: float = field(default_factory=now_s)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Position in the session since it was created (1-based); set by the store on reads.
    seq: int = 0

    def to_llm(self) -> dict[str, Any]:
        """The message as a chat model is sent it (OpenAI's shape, tool fields included)."""
        out: dict[str, Any] = {"role": self.role.value, "content": self.content}
        if self.metadata:
            calls = self.metadata.get(TOOL_CALLS)
            if calls:
                out[TOOL_CALLS] = calls
                out["content"] = self.content or None  # as OpenAI sends a call-only reply
            call_id = self.metadata.get(TOOL_CALL_ID)
            if call_id is not None:
                out[TOOL_CALL_ID] = call_id
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {
            "msg_id": self.msg_id,
            "role": self.role.value,
            "content": self.content,
            "timestamp": self.timestamp,
            "token_count": self.token_count,
            "metadata": self.metadata,
            "seq": self.seq,
        }
        # A reply with alternatives (SPEC §3b): the content is the selected one's.
        alternatives = self.metadata.get("alternatives")
        if alternatives:
            out["alternatives"] = len(alternatives)
            out["selected"] = self.metadata.get("selected", 0)
        return out


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 8),
        }


@dataclass(slots=True)
class SessionSummary:
    """A session's rolling summary (SPEC §2b): what left the context, folded in."""

    text: str = ""
    tokens: int = 0
    # How many of the oldest stored messages it covers (the store keeps this true as it
    # trims and deletes), and how many it ever covered (trimmed ones included).
    covers: int = 0
    covered_total: int = 0
    through_id: str = ""  # the newest message it covers
    stale: bool = False  # a covered message was edited or deleted: to be rebuilt
    version: int = 0  # bumped by every store (compare and swap for its jobs)
    lost: int = 0  # messages trimmed uncovered (the hard cap), not yet reported

    def through_seq(self, meta: SessionMeta) -> int:
        """The seq of the newest covered message in a read that gave `meta` (0: none)."""
        if self.covers <= 0:
            return 0
        return meta.last_seq - meta.stored_messages + self.covers

    def to_dict(self, meta: SessionMeta) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "covers_messages": self.covers,
            "covered_total": self.covered_total,
            "through_seq": self.through_seq(meta),
            "through_msg_id": self.through_id or None,
            "stale": self.stale,
            "version": self.version,
        }


@dataclass(slots=True)
class SessionMeta:
    session_id: str
    user_id: str
    character_id: str
    title: str = ""
    state: SessionState = SessionState.ACTIVE
    created_at: float = 0.0
    last_active_at: float = 0.0
    message_count: int = 0
    total_tokens: int = 0
    usage: Usage = field(default_factory=Usage)
    ttl_s: int = 0
    window_size: int = 10
    preview: str = ""
    preview_role: str = ""
    # The session (and its message) this one was forked from (SPEC §3b).
    forked_from: str = ""
    forked_at: str = ""
    # Memory beyond the window (SPEC §2b): off for the seed routes' implicit sessions;
    # the summary (None until the session's first summary state is written); the seq
    # up to which memories were extracted; the seq of the newest message.
    memory_on: bool = True
    summary: SessionSummary | None = None
    extracted_seq: int = 0
    last_seq: int = 0
    # The chat's own sampling temperature (0-2; None: the character's, else the server's).
    temperature: float | None = None
    # Read-time facts, not stored fields.
    ttl_remaining_s: int = 0
    stored_messages: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "character_id": self.character_id,
            "title": self.title,
            "state": self.state.value,
            "created_at": self.created_at,
            "last_active_at": self.last_active_at,
            "message_count": self.message_count,
            "stored_messages": self.stored_messages,
            "total_tokens": self.total_tokens,
            "usage": self.usage.to_dict(),
            "ttl_s": self.ttl_s,
            "ttl_remaining_s": self.ttl_remaining_s,
            "window_size": self.window_size,
            "preview": self.preview,
            "preview_role": self.preview_role,
            "forked_from": self.forked_from or None,
            "forked_at": self.forked_at or None,
            "memory": self.memory_on,
            "temperature": self.temperature,
        }


class Unchanged(Enum):
    """An update's "leave this field as it is", where None means "clear it"."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0


@dataclass(slots=True)
class SessionSnapshot:
    """A session's meta and some of its messages, oldest first, as one read saw them."""

    meta: SessionMeta
    messages: list[Message]


@dataclass(slots=True)
class UserTotals:
    user_id: str
    message_count: int = 0
    total_tokens: int = 0
    usage: Usage = field(default_factory=Usage)
    session_count: int = 0
    # The stored size of the user's messages now (what the storage cap counts).
    stored_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "message_count": self.message_count,
            "total_tokens": self.total_tokens,
            "usage": self.usage.to_dict(),
            "session_count": self.session_count,
            "stored_bytes": self.stored_bytes,
        }


# A character's `extensions` (mostly the Card V2 it was imported from), serialized.
MAX_EXTENSIONS_BYTES = 512 * 1024


def _unicode_text(value: str) -> str:
    # JSON can carry a lone surrogate ("\ud800"); UTF-8, Redis and orjson cannot.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return value


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        raise ValueError("not storable as JSON (a lone surrogate, or a non-text key)") from None
    if size > MAX_EXTENSIONS_BYTES:
        raise ValueError(f"{size} bytes serialized; the limit is {MAX_EXTENSIONS_BYTES}")
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


class ModelParams(BaseModel):
    # strict: `false` is not a temperature, `0` is not a bool (lax mode would coerce them).
    model_config = ConfigDict(extra="forbid", strict=True)

    model: Text | None = Field(None, max_length=200)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=32_768)


class MemoryPolicy(BaseModel):
    """What a character's sessions remember beyond the window (SPEC §2b)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    summary: bool = True
    memories: bool = True


class Character(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    name: Text = Field(min_length=1, max_length=200)
    system_prompt: Text = Field("", max_length=50_000)
    greeting: Text = Field("", max_length=10_000)
    description: Text = Field("", max_length=10_000)
    params: ModelParams = Field(default_factory=ModelParams)
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy)
    # Instructions appended after the history (Card V2 post_history_instructions).
    post_history_instructions: Text = Field("", max_length=10_000)
    # What a Card V2 import carried that chatmem does not use, kept for export
    # (at most MAX_EXTENSIONS_BYTES serialized).
    extensions: Annotated[dict[str, Any], AfterValidator(_bounded_json)] = Field(
        default_factory=dict
    )
    builtin: bool = False
