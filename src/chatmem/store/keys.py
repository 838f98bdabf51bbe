"""Every Redis key chatmem writes and the limits of the memory store.

All keys of one user carry the hash tag `{u:<user_id>}` so that they share one Redis
Cluster slot and one Lua script can touch all of a session's keys. Ids are validated
before they reach a key, so `}`, `*`, `:` or a newline in an id can never change which
keys are touched; the pattern also excludes `{`, so an id cannot open a second tag.
"""

from __future__ import annotations

import hashlib

from chatmem.ids import ID_MAX_CHARS, validate_id

__all__ = ["ID_MAX_CHARS", "validate_id"]

PREFIX = "cm"

# The global user index lives outside every user's slot (admin listing only).
USERS_INDEX_KEY = f"{PREFIX}:users"

# Limits of the store.
MIN_TTL_S = 60
# Beyond a year a TTL is a mistake, and Redis refuses expiries past 64-bit milliseconds.
MAX_TTL_S = 365 * 24 * 3600
WINDOW_MIN, WINDOW_MAX = 1, 20
PREVIEW_CHARS = 100
MAX_TITLE_CHARS = 200
DISPLAY_NAME_MAX_CHARS = 64
# One append carries at most this many messages (Lua's unpack() has a stack limit).
MAX_APPEND_MESSAGES = 1000
# Rate limits count requests over a sliding window of this length.
RATE_WINDOW_MS = 60_000
# A generation's event stream: at most this many entries (deltas are coalesced, a few per
# 50 ms), kept this long after its end for clients re-attaching late.
EVENTS_MAXLEN = 20_000
EVENTS_TTL_AFTER_END_MS = 5 * 60_000
# Message ids remembered per session for idempotent appends: those of the newest
# min(max_messages, IDEMPOTENCY_WINDOW) stored messages.
IDEMPOTENCY_WINDOW = 1000


def user_tag(user_id: str) -> str:
    """`cm:{u:<id>}`: the start of every key of the user (and their Cluster hash tag)."""
    return f"{PREFIX}:{{u:{validate_id(user_id, 'user id')}}}"


def session_prefix(user_id: str) -> str:
    """`cm:{u:<id>}:s:`: scripts that walk a user's sessions append `<sid>:<kind>`."""
    return f"{user_tag(user_id)}:s:"


def _session(user_id: str, session_id: str) -> str:
    return f"{session_prefix(user_id)}{validate_id(session_id, 'session id')}"


def session_messages_key(user_id: str, session_id: str) -> str:
    """LIST of encoded messages, newest first."""
    return f"{_session(user_id, session_id)}:m"


def session_meta_key(user_id: str, session_id: str) -> str:
    """HASH of the session's meta; its existence is the session's existence."""
    return f"{_session(user_id, session_id)}:h"


def session_ids_key(user_id: str, session_id: str) -> str:
    """STRING `,id,id,…,` of the ids of the newest stored messages (idempotent appends)."""
    return f"{_session(user_id, session_id)}:i"


def session_lock_key(user_id: str, session_id: str) -> str:
    return f"{_session(user_id, session_id)}:lock"


def session_stop_key(user_id: str, session_id: str) -> str:
    """Set by a stop request; the process streaming that session's turn watches it."""
    return f"{_session(user_id, session_id)}:stop"


def user_sessions_key(user_id: str) -> str:
    """ZSET of the user's session ids scored by last activity (ms)."""
    return f"{user_tag(user_id)}:sessions"


def user_totals_key(user_id: str) -> str:
    return f"{user_tag(user_id)}:totals"


def session_events_key(user_id: str, session_id: str) -> str:
    """STREAM of the session's current (or last) generation's events (turn_scripts.py)."""
    return f"{_session(user_id, session_id)}:ev"


def user_profile_key(user_id: str) -> str:
    """HASH of the user's profile (`name`: the display name for `{{user}}`); no TTL,
    erased with the user."""
    return f"{user_tag(user_id)}:profile"


def user_rate_key(user_id: str, budget: str) -> str:
    """ZSET: the user's recent requests of one budget (`turns`, `writes`), sliding window."""
    return f"{user_tag(user_id)}:rate:{budget}"


def user_streams_key(user_id: str) -> str:
    """ZSET of the user's running generations, scored by their lock's expiry (ms)."""
    return f"{user_tag(user_id)}:streams"


def session_keys(user_id: str, session_id: str) -> list[str]:
    """KEYS for the session scripts, in their documented order (see `scripts`)."""
    # Built once per call (this is on every turn); equal to the single-key builders above.
    tag = user_tag(user_id)
    base = f"{tag}:s:{validate_id(session_id, 'session id')}"
    return [f"{base}:m", f"{base}:h", f"{base}:i", f"{tag}:sessions", f"{tag}:totals"]


def turn_keys(user_id: str, session_id: str) -> list[str]:
    """KEYS for the turn scripts, in their documented order (see `turn_scripts`)."""
    tag = user_tag(user_id)
    base = f"{tag}:s:{validate_id(session_id, 'session id')}"
    return [
        f"{base}:m",
        f"{base}:h",
        f"{base}:i",
        f"{tag}:sessions",
        f"{tag}:totals",
        f"{base}:lock",
        f"{base}:ev",
        f"{tag}:rate:turns",
        f"{tag}:streams",
    ]


def characters_key() -> str:
    """HASH of API-created characters: id → Character JSON (shared by every process)."""
    return f"{PREFIX}:characters"


def auth_failures_key(address: str) -> str:
    """STRING: failed authentications from one client address in the current window."""
    # Hashed: an address (IPv6, or what a trusted proxy forwarded) may hold any character.
    return f"{PREFIX}:authfail:{hashlib.sha256(address.encode()).hexdigest()[:32]}"


# Background jobs (store/jobs.py): one stream for every process, under one hash tag so
# that a script can move a job between its keys on Redis Cluster too.
JOBS_TAG = f"{PREFIX}:{{jobs}}"
JOBS_STREAM_KEY = f"{JOBS_TAG}:q"
JOBS_GROUP = "workers"
# ZSET of jobs waiting for a retry, scored by when they are due (ms).
JOBS_DELAYED_KEY = f"{JOBS_TAG}:delayed"
# STREAM of jobs that failed JOB_MAX_ATTEMPTS times (the dead letter), capped.
JOBS_DEAD_KEY = f"{JOBS_TAG}:dead"
JOBS_DEAD_MAXLEN = 10_000
# HASH dedupe key → ms until which an equal job counts as queued (one summary job per
# session at a time, not one per turn).
JOBS_DEDUPE_KEY = f"{JOBS_TAG}:dedupe"
JOBS_MAXLEN = 1_000_000

# Long-term memories (SPEC §2b): own sliding TTL, at most this many per (user, character).
MEMORIES_MAX = 200
MEMORY_MAX_CHARS = 500
# A session with a rolling summary keeps messages the summary does not cover yet, up to
# this many times max_messages (the hard cap: beyond it the oldest go all the same).
SUMMARY_HARD_CAP_FACTOR = 2


def memories_key(user_id: str, character_id: str) -> str:
    """HASH memory id → memory JSON: the user's long-term memories with one character."""
    return f"{user_tag(user_id)}:mem:{validate_id(character_id, 'character id')}"


def user_memories_prefix(user_id: str) -> str:
    """`cm:{u:<id>}:mem:`: the user's memory hashes (erase and export walk them)."""
    return f"{user_tag(user_id)}:mem:"


def user_memory_index_key(user_id: str) -> str:
    """SET of the character ids the user has memories with (no SCAN on any path)."""
    return f"{user_tag(user_id)}:memchars"
