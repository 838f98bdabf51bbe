"""How messages and meta are laid out inside Redis.

Messages are compact JSON with one-letter members and the id first (the append script
reads ids by that prefix). Meta is a flat HASH of short field names. Both stay private
to the memory package: everything else sees `Message` and `SessionMeta`.
"""

from __future__ import annotations

from typing import Any

import orjson

from chatmem.models import Message, Role, SessionMeta, SessionState, Usage

_ROLE_CODES = {Role.USER: "u", Role.ASSISTANT: "a", Role.SYSTEM: "s"}
_CODE_ROLES = {v: k for k, v in _ROLE_CODES.items()}


def encode_message(msg: Message) -> str:
    doc: dict[str, Any] = {
        "i": msg.msg_id,
        "r": _ROLE_CODES[msg.role],
        "c": msg.content,
        "t": msg.timestamp,
        "n": msg.token_count,
    }
    if msg.metadata:
        doc["m"] = msg.metadata
    return orjson.dumps(doc).decode()


def decode_message(raw: str | bytes, seq: int = 0) -> Message:
    doc = orjson.loads(raw)
    return Message(
        role=_CODE_ROLES[doc["r"]],
        content=doc["c"],
        token_count=doc["n"],
        msg_id=doc["i"],
        timestamp=doc["t"],
        metadata=doc.get("m") or {},
        seq=seq,
    )


def decode_messages(raw: list[Any], first_seq: int) -> list[Message]:
    return [decode_message(item, first_seq + i) for i, item in enumerate(raw)]


def meta_fields(
    *, user_id: str, character_id: str, title: str, window_size: int
) -> dict[str, str | int]:
    """The fields a new session's meta starts with (the script adds counters and times)."""
    return {"uid": user_id, "cid": character_id, "title": title, "window": window_size}


def decode_meta(session_id: str, flat: list[Any], *, pttl_ms: int, stored: int) -> SessionMeta:
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    return SessionMeta(
        session_id=session_id,
        user_id=h["uid"],
        character_id=h["cid"],
        title=h.get("title", ""),
        state=SessionState(h.get("state", "ACTIVE")),
        created_at=int(h.get("created", 0)) / 1000,
        last_active_at=int(h.get("active", 0)) / 1000,
        message_count=int(h.get("count", 0)),
        total_tokens=int(h.get("tokens", 0)),
        usage=Usage(
            prompt_tokens=int(h.get("ptok", 0)),
            completion_tokens=int(h.get("ctok", 0)),
            cost_usd=float(h.get("cost", 0)),
        ),
        ttl_s=int(h.get("ttl", 0)),
        window_size=int(h.get("window", 10)),
        preview=h.get("preview", ""),
        preview_role=h.get("prole", ""),
        ttl_remaining_s=max(0, (pttl_ms + 999) // 1000),
        stored_messages=stored,
    )
