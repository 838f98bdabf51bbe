"""Every Redis key chatmem writes, and the id rule that keeps keys safe.

All keys of one user carry the hash tag `{u:<user_id>}` so that they share one Redis
Cluster slot and one Lua script can touch all of a session's keys. Ids are validated
before they reach a key, so `}`, `*`, `:` or a newline in an id can never change which
keys are touched; the pattern also excludes `{`, so an id cannot open a second tag.
"""

from __future__ import annotations

import re

from chatmem.errors import InvalidId

PREFIX = "cm"
ID_MAX_CHARS = 128
_ID_RE = re.compile(r"[A-Za-z0-9_.@-]{1,128}")

# The global user index lives outside every user's slot (admin listing only).
USERS_INDEX_KEY = f"{PREFIX}:users"


def validate_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        shown = value[:40] + "…" if isinstance(value, str) and len(value) > 40 else value
        raise InvalidId(
            f"invalid {what} {shown!r}: use 1-{ID_MAX_CHARS} characters of letters, "
            "digits, '-', '_', '.' or '@'"
        )
    return value


def _user(user_id: str) -> str:
    return f"{PREFIX}:{{u:{validate_id(user_id, 'user id')}}}"


def session_messages_key(user_id: str, session_id: str) -> str:
    return f"{_user(user_id)}:s:{validate_id(session_id, 'session id')}:m"


def session_meta_key(user_id: str, session_id: str) -> str:
    return f"{_user(user_id)}:s:{validate_id(session_id, 'session id')}:h"


def session_lock_key(user_id: str, session_id: str) -> str:
    return f"{_user(user_id)}:s:{validate_id(session_id, 'session id')}:lock"


def user_sessions_key(user_id: str) -> str:
    """ZSET of the user's session ids scored by last activity (ms)."""
    return f"{_user(user_id)}:sessions"


def user_totals_key(user_id: str) -> str:
    return f"{_user(user_id)}:totals"


def user_rate_key(user_id: str, window: int) -> str:
    return f"{_user(user_id)}:rate:{window}"


def user_streams_key(user_id: str) -> str:
    return f"{_user(user_id)}:streams"


def session_keys(user_id: str, session_id: str) -> list[str]:
    """KEYS for the session scripts, in their documented order."""
    return [
        session_messages_key(user_id, session_id),
        session_meta_key(user_id, session_id),
        user_sessions_key(user_id),
        user_totals_key(user_id),
    ]


def session_stop_key(user_id: str, session_id: str) -> str:
    """Set by a stop request; the process streaming that session's turn watches it."""
    return f"{_user(user_id)}:s:{validate_id(session_id, 'session id')}:stop"


def characters_key() -> str:
    """HASH of API-created characters: id → Character JSON (shared by every process)."""
    return f"{PREFIX}:characters"
