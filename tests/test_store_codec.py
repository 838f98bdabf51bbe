"""The storage encoding: compact, lossless, and id-first (the id index relies on it)."""

from __future__ import annotations

import json

import orjson

from chatmem.models import Message, Role, SessionState, Usage
from chatmem.store.codec import decode_message, decode_meta, decode_window, encode_message


def test_message_round_trips_every_field() -> None:
    for role in Role:
        m = Message(
            role,
            'multi\nline "quoted" 你好 🙂',
            17,
            msg_id="m-1",
            timestamp=1_700_000_000.123,
            metadata={"emotion": "happy", "usage": {"prompt_tokens": 3}, "interrupted": True},
        )
        back = decode_message(encode_message(m), seq=9)
        assert back.to_dict() == {**m.to_dict(), "seq": 9}
        window = "[" + ",".join([encode_message(m)] * 2) + "]"  # as window_lua.py joins them
        assert decode_window(window, 4)[1].to_dict() == {**m.to_dict(), "seq": 5}
        assert decode_window(window, last_seq=7)[0].seq == 6


def test_encoding_is_compact_and_id_first() -> None:
    m = Message(Role.ASSISTANT, "hello", 2, msg_id="abc", timestamp=1.5)
    raw = encode_message(m)
    assert raw == '{"i":"abc","r":"a","c":"hello","t":1.5,"n":2}'
    # Smaller than the message as the API returns it.
    api = {k: v for k, v in m.to_dict().items() if k != "seq"}
    assert len(raw) < len(json.dumps(api))
    # No raw control characters: JSON escapes them, so one encoded message is one line.
    assert "\n" not in encode_message(Message(Role.USER, "a\nb\r\x00"))
    assert orjson.loads(encode_message(Message(Role.USER, "a\nb\r\x00")))["c"] == "a\nb\r\x00"


def test_meta_decodes_from_the_flat_hash() -> None:
    flat = [
        "uid", "alice", "cid", "teacher", "title", "T", "state", "ENDED",
        "created", "1700000000000", "active", "1700000001500", "ttl", "600",
        "count", "4", "tokens", "40", "seq", "9", "ptok", "10", "ctok", "20",
        "cost", "0.25", "preview", "p", "prole", "user", "window", "3",
        "fork", "s0", "forkmsg", "m7", "temp", "0.3",
    ]  # fmt: skip
    meta = decode_meta("s1", flat, pttl_ms=1_001, stored=2)
    assert meta.to_dict() == {
        "session_id": "s1",
        "user_id": "alice",
        "character_id": "teacher",
        "title": "T",
        "state": "ENDED",
        "created_at": 1_700_000_000.0,
        "last_active_at": 1_700_000_001.5,
        "message_count": 4,
        "stored_messages": 2,
        "total_tokens": 40,
        "usage": Usage(10, 20, 0.25).to_dict(),
        "ttl_s": 600,
        "ttl_remaining_s": 2,
        "window_size": 3,
        "preview": "p",
        "preview_role": "user",
        "forked_from": "s0",
        "forked_at": "m7",
        "memory": True,
        "temperature": 0.3,
    }
    assert meta.state is SessionState.ENDED
    assert decode_meta("s1", flat, pttl_ms=-2, stored=0).ttl_remaining_s == 0
