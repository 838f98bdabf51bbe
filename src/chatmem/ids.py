"""The one rule for every id chatmem accepts: users, sessions, characters, messages.

Ids become parts of Redis keys, so the rule keeps out everything that could change which
keys are touched (`}`, `{`, `*`, `:`, whitespace). Auth, the API's schemas, the store's key
builders and the CLI all check ids here; `ID_PATTERN` is the same rule for JSON schemas.
"""

from __future__ import annotations

import re

from chatmem.errors import InvalidId

ID_MAX_CHARS = 128
ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,128}$"
_ID_RE = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


def validate_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        shown = value[:40] + "…" if isinstance(value, str) and len(value) > 40 else value
        raise InvalidId(
            f"invalid {what} {shown!r}: use 1-{ID_MAX_CHARS} characters of letters, "
            "digits, '-', '_', '.' or '@'"
        )
    return value
