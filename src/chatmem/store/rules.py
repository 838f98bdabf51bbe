"""The store's rules for values: TTLs, windows, temperatures, titles, the last-message preview, and
the per-user byte cap's error. Checked before any Redis call (conversations.py and the
turn scripts' callers)."""

from __future__ import annotations

import re

from chatmem.errors import InvalidInput, StorageQuotaExceeded, TooManySessions
from chatmem.models import TEMPERATURE_MAX, TEMPERATURE_MIN, Message
from chatmem.store import keys
from chatmem.store.codec import check_text
from chatmem.store.keys import MAX_TTL_S, MIN_TTL_S, PREVIEW_CHARS, WINDOW_MAX, WINDOW_MIN


def validate_ttl(ttl_s: int, minimum_s: int = MIN_TTL_S) -> int:
    """At least `minimum_s` (MIN_TTL_S but for seed 001's `POST /chat`, which takes any
    TTL of a second or more, as its document does), at most MAX_TTL_S: every write of a
    TTL, an import's too, passes here."""
    if ttl_s < max(1, minimum_s):
        raise InvalidInput(f"ttl must be at least {max(1, minimum_s)} seconds", code="invalid_ttl")
    if ttl_s > MAX_TTL_S:
        raise InvalidInput(f"ttl must be at most {MAX_TTL_S} seconds", code="invalid_ttl")
    return ttl_s


def validate_window(window_size: int) -> int:
    if not WINDOW_MIN <= window_size <= WINDOW_MAX:
        raise InvalidInput(
            f"window_size must be between {WINDOW_MIN} and {WINDOW_MAX}", code="invalid_window"
        )
    return window_size


def validate_temperature(value: float | None) -> float | None:
    """None (the character's or the server's), else a number from 0 to 2."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput("temperature must be a number or null", code="invalid_temperature")
    if not TEMPERATURE_MIN <= value <= TEMPERATURE_MAX:
        raise InvalidInput(
            f"temperature must be between {TEMPERATURE_MIN:g} and {TEMPERATURE_MAX:g}",
            code="invalid_temperature",
        )
    return float(value)


# Control characters (NUL, ESC: a terminal's escapes) and the bidirectional overrides
# and isolates (U+202E shows a list's text reversed); joiners stay (emoji sequences).
_NOT_IN_TITLES = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def without_title_controls(text: str) -> str:
    """`text` with what a title may not hold replaced by spaces (for titles made from
    a message or by the model)."""
    return _NOT_IN_TITLES.sub(" ", text)


def validate_title(title: str) -> str:
    if len(title) > keys.MAX_TITLE_CHARS:
        raise InvalidInput(
            f"title must be at most {keys.MAX_TITLE_CHARS} characters", code="invalid_title"
        )
    if _NOT_IN_TITLES.search(title):
        raise InvalidInput(
            "title must not hold control or text-direction characters", code="invalid_title"
        )
    return check_text(title, "title")


def preview_of(msg: Message) -> str:
    """The preview a write leaves in the session's meta (the turn scripts' too)."""
    # Only the head can show: don't split a 4000-character message to keep 100 of it.
    text = " ".join(msg.content[: 4 * PREVIEW_CHARS].split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def over_quota(max_bytes: int) -> StorageQuotaExceeded:
    return StorageQuotaExceeded(
        f"your stored conversations have reached their limit of {max_bytes} bytes: "
        "delete or clear some sessions to go on"
    )


def too_many_sessions(max_sessions: int) -> TooManySessions:
    return TooManySessions(
        f"you have {max_sessions} sessions, the most allowed: delete some before starting another"
    )
