"""The one error tree. Domain code raises these; `api/errors.py` maps them to HTTP.

ChatmemError
├── InvalidInput                 bad value from a client
│   ├── InvalidId                an id that fails the safe pattern
│   └── TooLarge                 a body, metadata or field past its size limit (413)
├── NotFound
│   ├── SessionNotFound          missing, expired, or another user's
│   ├── CharacterNotFound
│   └── UserNotFound
├── Conflict
│   ├── SessionBusy              another turn holds the session
│   ├── AlreadyExists
│   └── QuotaExceeded            a per-user cap (SPEC §8): delete something first
│       ├── TooManySessions
│       └── StorageQuotaExceeded
├── Unauthenticated              no or bad credential
├── Forbidden                    authenticated, not allowed (admin routes)
├── RateLimited                  carries retry_after_s
├── StoreUnavailable             Redis cannot be reached in time          (opaque)
│   └── NotReplicated            written on the master, too few replicas confirmed it
├── StoreFull                    Redis refused a write: out of memory (maxmemory)
└── ProviderError                the model upstream failed                 (opaque)
    ├── ProviderAuthError
    ├── ProviderRateLimited
    ├── ProviderBadRequest
    ├── ProviderUnavailable
    └── ProviderTimeout

Opaque errors (the store's and the provider's) say what failed in terms of chatmem's
own infrastructure: Redis hosts and ports, upstream URLs and whatever an upstream put in
its error body. The text they are raised with is their `detail`, for the server's log
(it is also `str(exc)`, so tracebacks keep it); `message`, all a client ever sees, is
the class's own sentence.
"""

from __future__ import annotations


class ChatmemError(Exception):
    code = "error"
    # What the server may log but a client must not see (set by opaque errors).
    detail = ""

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        if code is not None:
            self.code = code


class OpaqueError(ChatmemError):
    """An error whose text names chatmem's infrastructure (see the module docstring)."""

    def __init__(self, detail: str = "", *, code: str | None = None, message: str = "") -> None:
        # `message`, if given, must be free of hosts, paths and upstream text.
        super().__init__(message, code=code)
        self.detail = detail
        if detail:
            self.args = (detail,)


class InvalidInput(ChatmemError):
    """The request is not valid."""

    code = "invalid_input"


class InvalidId(InvalidInput):
    """An id must be 1-128 characters of letters, digits, '-', '_' or '.'."""

    code = "invalid_id"


class TooLarge(InvalidInput):
    """The request is too large."""

    code = "too_large"


class NotFound(ChatmemError):
    """Not found."""

    code = "not_found"


class SessionNotFound(NotFound):
    """Session not found (it may have expired)."""

    code = "session_not_found"


class CharacterNotFound(NotFound):
    """Character not found."""

    code = "character_not_found"


class UserNotFound(NotFound):
    """User not found."""

    code = "user_not_found"


class Conflict(ChatmemError):
    """Conflict."""

    code = "conflict"


class SessionBusy(Conflict):
    """Another message is being answered in this session; retry shortly."""

    code = "session_busy"


class AlreadyExists(Conflict):
    """Already exists."""

    code = "already_exists"


class QuotaExceeded(Conflict):
    """A per-user limit is reached."""

    code = "quota_exceeded"


class TooManySessions(QuotaExceeded):
    """Too many sessions: delete some before starting another."""

    code = "too_many_sessions"


class StorageQuotaExceeded(QuotaExceeded):
    """Your stored conversations have reached their size limit: delete or clear some."""

    code = "storage_quota_exceeded"


class Unauthenticated(ChatmemError):
    """A valid credential is required."""

    code = "unauthenticated"


class Forbidden(ChatmemError):
    """Not allowed."""

    code = "forbidden"


class RateLimited(ChatmemError):
    """Too many requests."""

    code = "rate_limited"

    def __init__(
        self, message: str = "", *, retry_after_s: float = 1.0, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class StoreUnavailable(OpaqueError):
    """The memory store is unavailable; retry shortly."""

    code = "store_unavailable"


class NotReplicated(StoreUnavailable):
    """The write reached the Redis master but too few replicas confirmed it in time."""

    code = "store_not_replicated"

    def __init__(self, detail: str = "", *, acked: int = 0, wanted: int = 0) -> None:
        super().__init__(detail)
        self.acked = acked
        self.wanted = wanted


class StoreFull(ChatmemError):
    """The memory store is full; try again later."""

    # Not a StoreUnavailable: Redis answers, so a turn must not degrade into the outbox
    # (its replay would be refused the same way); the client is told to retry later.
    code = "store_full"


class ProviderError(OpaqueError):
    """The model provider failed."""

    code = "provider_error"


class ProviderAuthError(ProviderError):
    """The model provider rejected the credentials."""

    code = "provider_auth"


class ProviderRateLimited(ProviderError):
    """The model provider is rate limiting requests."""

    code = "provider_rate_limited"


class ProviderBadRequest(ProviderError):
    """The model provider rejected the request."""

    code = "provider_bad_request"


class ProviderUnavailable(ProviderError):
    """The model provider is unavailable."""

    code = "provider_unavailable"


class ProviderTimeout(ProviderError):
    """The model provider timed out."""

    code = "provider_timeout"
