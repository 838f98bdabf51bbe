"""The access log holds no message text and no credentials.

uvicorn logs every request's path with its query string; the seed-002 route takes the
user's message as `GET /chat/stream?message=…`, and clients put keys in query strings
(`?api_key=…`) whatever the docs say. So the query string is rewritten before it is
logged: the values of the parameters that carry ids and numbers (`ACCESS_LOG_PARAMS`)
stay readable, every other value (`message`, `api_key`, anything unknown) becomes
`[redacted]`. chatmem's own logs never hold message text either.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
# Query parameters of chatmem's routes whose values are ids or numbers.
ACCESS_LOG_PARAMS = frozenset(
    {"limit", "before", "offset", "user_id", "session_id", "character_id", "role"}
    | {"new_size", "new_ttl"}
)
_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")


def redact_target(target: str) -> str:
    """A request target (`/path?query`) with the values of unlisted parameters redacted."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        if eq and name in ACCESS_LOG_PARAMS:
            parts.append(item)
        elif eq and _NAME.fullmatch(name):
            parts.append(f"{name}={REDACTED}")
        elif item:
            parts.append(REDACTED)
    return f"{path}?{'&'.join(parts)}"


class RedactQueryFilter(logging.Filter):
    """On uvicorn's access logger: its records' args are
    (client address, method, path with query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_target(args[2]), *args[3:])
        return True


def install_access_log_redaction() -> None:
    """Put the filter on uvicorn's access logger (once; uvicorn's logging config, applied
    before or after, keeps a logger's filters)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
        logger.addFilter(RedactQueryFilter())
