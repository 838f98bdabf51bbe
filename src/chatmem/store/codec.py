"""How messages and meta are laid out inside Redis.

Messages are compact JSON with one-letter members and the id first (the append script
can rebuild its id index from that prefix). Meta is a flat HASH of short field names.
Both stay private to the memory package: everything else sees `Message` and
`SessionMeta`. Decoding runs for every message of every context read, so it builds `Message`
positionally (tests/test_store_codec.py round-trips every field to catch a reordered model).
"""

from __future__ import annotations

from typing import Any

import orjson

from chatmem.errors import InvalidInput
from chatmem.models import Message, Role, SessionMeta, SessionState, SessionSummary, Usage

_ROLE_CODES = {Role.USER: "u", Role.ASSISTANT: "a", Role.SYSTEM: "s", Role.TOOL: "o"}
_CODE_ROLES = {v: k for k, v in _ROLE_CODES.items()}
_STATES = {s.value: s for s in SessionState}
_loads = orjson.loads


def encode_message(msg: Message, ordinal: int = 0) -> str:
    """`ordinal` (0: none) goes right after the role: the turn scripts read it there."""
    doc: dict[str, Any] = {"i": msg.msg_id, "r": _ROLE_CODES[msg.role]}
    if ordinal:
        doc["o"] = ordinal
    doc |= {
        "c": msg.content,
        "t": msg.timestamp,
        "n": msg.token_count,
    }
    if msg.metadata:
        doc["m"] = msg.metadata
    try:
        return orjson.dumps(doc).decode()
    except orjson.JSONEncodeError as exc:  # a lone surrogate, or metadata that is not JSON
        raise InvalidInput(f"message cannot be stored: {exc}", code="invalid_message") from None


def check_text(value: str, what: str) -> str:
    """Refuse a string Redis cannot take (a lone surrogate: valid in JSON, not in UTF-8)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode text", code="invalid_text") from None
    return value


def decode_message(raw: str | bytes, seq: int = 0) -> Message:
    doc = _loads(raw)
    return Message(
        _CODE_ROLES[doc["r"]],
        doc["c"],
        doc["n"],
        doc["i"],
        doc["t"],
        doc.get("m") or {},
        seq,
    )


def decode_window(raw: str | bytes, first_seq: int = 0, *, last_seq: int = 0) -> list[Message]:
    """Messages a script returned as one JSON array, oldest first (window_lua.py); their
    seqs from the oldest's, or back from the newest's (`last_seq`)."""
    roles = _CODE_ROLES
    out = []
    docs = _loads(raw)
    seq = last_seq - len(docs) + 1 if last_seq else first_seq
    for doc in docs:
        out.append(
            Message(
                roles[doc["r"]], doc["c"], doc["n"], doc["i"], doc["t"], doc.get("m") or {}, seq
            )
        )
        seq += 1
    return out


def meta_fields(
    *, user_id: str, character_id: str, title: str, window_size: int
) -> dict[str, str | int]:
    """The fields a new session's meta starts with (the script adds counters and times)."""
    return {"uid": user_id, "cid": character_id, "title": title, "window": window_size}


def encode_temperature(value: float | None) -> str:
    """The meta's `temp` field: "" for none (an update can only set fields)."""
    return "" if value is None else repr(float(value))


def decode_temperature(raw: str | None) -> float | None:
    return float(raw) if raw else None


def decode_meta(session_id: str, flat: list[Any], *, pttl_ms: int, stored: int) -> SessionMeta:
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    get = h.get
    return SessionMeta(
        session_id=session_id,
        user_id=h["uid"],
        character_id=h["cid"],
        title=get("title", ""),
        state=_STATES[get("state", "ACTIVE")],
        created_at=int(get("created", 0)) / 1000,
        last_active_at=int(get("active", 0)) / 1000,
        message_count=int(get("count", 0)),
        total_tokens=int(get("tokens", 0)),
        usage=Usage(
            prompt_tokens=int(get("ptok", 0)),
            completion_tokens=int(get("ctok", 0)),
            cost_usd=float(get("cost", 0)),
        ),
        ttl_s=int(get("ttl", 0)),
        window_size=int(get("window", 10)),
        preview=get("preview", ""),
        preview_role=get("prole", ""),
        forked_from=get("fork", ""),
        forked_at=get("forkmsg", ""),
        memory_on=get("mem", "1") != "0",
        summary=decode_summary(h),
        extracted_seq=int(get("memseq", 0)),
        last_seq=int(get("seq", 0)),
        temperature=decode_temperature(get("temp")),
        ttl_remaining_s=max(0, (pttl_ms + 999) // 1000),
        stored_messages=stored,
    )


def decode_summary(h: dict[str, Any]) -> SessionSummary | None:
    """The summary fields of a meta hash (scripts in memory_scripts.py write them)."""
    if "sumn" not in h:
        return None
    get = h.get
    return SessionSummary(
        text=get("sum", ""),
        tokens=int(get("sumtok", 0)),
        covers=int(h["sumn"]),
        covered_total=int(get("sumcov", 0)),
        through_id=get("sumthru", ""),
        stale=get("sumstale", "0") == "1",
        version=int(get("sumv", 0)),
        lost=int(get("sumlost", 0)),
    )
