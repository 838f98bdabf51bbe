"""The one error tree. Domain code raises these; `api/errors.py` maps them to HTTP.

ChatmemError
├── InvalidInput                 bad value from a client
│   └── InvalidId                an id that fails the safe pattern
├── NotFound
│   ├── SessionNotFound          missing, expired, or another user's
│   ├── CharacterNotFound
│   └── UserNotFound
├── Conflict
│   ├── SessionBusy              another turn holds the session
│   └── AlreadyExists
├── Unauthenticated              no or bad credential
├── Forbidden                    authenticated, not allowed (admin routes)
├── RateLimited                  carries retry_after_s
├── StoreUnavailable             Redis cannot be reached in time
│   └── NotReplicated            written on the master, too few replicas confirmed it
└── ProviderError                the model upstream failed
    ├── ProviderAuthError
    ├── ProviderRateLimited
    ├── ProviderBadRequest
    ├── ProviderUnavailable
    └── ProviderTimeout
"""

from __future__ import annotations


class ChatmemError(Exception):
    code = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        if code is not None:
            self.code = code


class InvalidInput(ChatmemError):
    """The request is not valid."""

    code = "invalid_input"


class InvalidId(InvalidInput):
    """An id must be 1-128 characters of letters, digits, '-', '_' or '.'."""

    code = "invalid_id"


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


class StoreUnavailable(ChatmemError):
    """The memory store (Redis) is unavailable."""

    code = "store_unavailable"


class NotReplicated(StoreUnavailable):
    """The write reached the Redis master but too few replicas confirmed it in time."""

    code = "store_not_replicated"

    def __init__(self, message: str = "", *, acked: int = 0, wanted: int = 0) -> None:
        super().__init__(message)
        self.acked = acked
        self.wanted = wanted


class ProviderError(ChatmemError):
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
