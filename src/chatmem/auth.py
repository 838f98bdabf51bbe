"""Who is calling: credentials in, a `Principal` out. Pure: no HTTP, no Redis.

Modes, chosen by `AuthSettings`:

- **Open** (no keys, no JWT secret; the local default). The user comes from the
  `X-User-Id` header, validated as an id; without one the caller is `OPEN_MODE_USER_ID`
  ("local"). Everyone is an admin: open mode is for one person on their own machine,
  where admin routes (users, stats) are theirs anyway. `warn_if_exposed` flags a bind
  beyond loopback in this mode.
- **Auth on** (keys and/or a JWT secret). `Authorization: Bearer <credential>` is
  required; `X-User-Id` is ignored, never trusted.
  - Static keys (`CHATMEM_AUTH_KEYS="key=user_id,key2=user_id2:admin"`) are matched in
    constant time against every configured key.
    Every key has at least `MIN_API_KEY_CHARS` characters: building the `Authenticator`
    (which `create_app` and `chatmem serve` do before anything starts) refuses shorter
    ones, so a server never runs with a guessable key.
  - Otherwise, when a JWT secret (at least `JWT_MIN_SECRET_BYTES`) is set, the credential
    must be an HS256 JWT signed with it (any other algorithm, `none` included, is
    refused). `sub` is the user id and `exp` is required (a token without one would be
    valid forever), both checked with `jwt_leeway_s` of clock skew; a token with an `aud`
    claim is refused, since no audience is configured. The caller is an admin exactly
    when the claim named by `jwt_admin_claim` is `true`: no other claim (`role`,
    `roles`, ...) grants it.

Wrong credentials are throttled per client address by `chatmem.auth_throttle`.

Authorization helpers: `require_admin` (Forbidden) and `resolve_user` for routes that
name a user, which answers `UserNotFound` rather than Forbidden for someone else's id,
as for any object the caller does not own (SPEC §4).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import jwt

from chatmem.config import AuthSettings
from chatmem.errors import Forbidden, InvalidInput, Unauthenticated, UserNotFound
from chatmem.ids import validate_id

log = logging.getLogger(__name__)

OPEN_MODE_USER_ID = "local"
ADMIN_SUFFIX = ":admin"
JWT_ALGORITHM = "HS256"
MIN_API_KEY_CHARS = 16
# RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits).
JWT_MIN_SECRET_BYTES = 32
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class _ApiKey:
    digest: bytes
    principal: Principal


def _digest(secret: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest's timing independent of length.
    return hashlib.sha256(secret.encode()).digest()


def parse_api_keys(spec: str) -> list[tuple[str, Principal]]:
    """`key=user_id[:admin]` entries, comma-separated; raises InvalidInput naming the
    entry by position (never echoing a key)."""
    entries: list[tuple[str, Principal]] = []
    seen: set[str] = set()
    for position, raw in enumerate(spec.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        # Split at the last '=': keys may end in base64 padding, ids cannot hold '='.
        key, sep, owner = entry.rpartition("=")
        key, owner = key.strip(), owner.strip()
        if not sep or not key:
            raise InvalidInput(f"auth keys entry #{position}: expected key=user_id[:admin]")
        is_admin = owner.endswith(ADMIN_SUFFIX)
        user_id = owner.removesuffix(ADMIN_SUFFIX) if is_admin else owner
        try:
            validate_id(user_id, "user id")
        except InvalidInput as exc:
            raise InvalidInput(f"auth keys entry #{position}: {exc.message}") from exc
        if len(key) < MIN_API_KEY_CHARS:
            raise InvalidInput(
                f"auth keys entry #{position}: the key has {len(key)} characters, "
                f"at least {MIN_API_KEY_CHARS} are required (use a random one, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if key in seen:
            raise InvalidInput(f"auth keys entry #{position}: the same key is listed twice")
        seen.add(key)
        entries.append((key, Principal(user_id, is_admin)))
    return entries


class Authenticator:
    """Turns the `Authorization` and `X-User-Id` headers into a `Principal`."""

    def __init__(self, settings: AuthSettings) -> None:
        self._keys = [_ApiKey(_digest(k), p) for k, p in parse_api_keys(settings.keys)]
        self._jwt_secret = settings.jwt_secret or None
        if self._jwt_secret is not None and len(self._jwt_secret.encode()) < JWT_MIN_SECRET_BYTES:
            raise InvalidInput(
                f"the JWT secret must be at least {JWT_MIN_SECRET_BYTES} bytes "
                "(HS256 needs a 256-bit key)"
            )
        self._admin_claim = settings.jwt_admin_claim
        self._jwt_leeway_s = settings.jwt_leeway_s
        # From the settings, not from what parsed: keys set but empty still means auth on.
        self.enabled = settings.enabled

    def authenticate(self, authorization_header: str | None, x_user_id: str | None) -> Principal:
        if not self.enabled:
            user_id = (x_user_id or "").strip() or OPEN_MODE_USER_ID
            return Principal(validate_id(user_id, "X-User-Id"), is_admin=True)
        credential = self._bearer(authorization_header)
        if (principal := self._match_key(credential)) is not None:
            return principal
        if self._jwt_secret is not None and (not self._keys or credential.count(".") == 2):
            return self._decode_jwt(credential, self._jwt_secret)
        raise Unauthenticated("invalid API key")

    @staticmethod
    def _bearer(header: str | None) -> str:
        if not header or not header.strip():
            raise Unauthenticated("missing credential: send 'Authorization: Bearer <key>'")
        scheme, _, credential = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <key>'")
        return credential.strip()

    def _match_key(self, credential: str) -> Principal | None:
        digest = _digest(credential)
        found: Principal | None = None
        for key in self._keys:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, key.digest):
                found = key.principal
        return found

    def _decode_jwt(self, token: str, secret: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[JWT_ALGORITHM],
                leeway=self._jwt_leeway_s,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthenticated(f"the token must be signed with {JWT_ALGORITHM}") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("the token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        sub = claims["sub"]
        try:
            user_id = validate_id(sub, "user id")
        except InvalidInput as exc:
            raise Unauthenticated(f"the token's subject is not a valid user id: {exc}") from exc
        return Principal(user_id, claims.get(self._admin_claim) is True)


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this needs an admin credential")


def resolve_user(principal: Principal, requested_user_id: str) -> str:
    """The user a route that names one (the seed routes' `user_id`) may act on.

    Admins, and everyone in open mode, get the requested id (validated); anyone else
    only their own, and `UserNotFound` for any other id.
    """
    if principal.is_admin:
        return validate_id(requested_user_id, "user id")
    if requested_user_id != principal.user_id:
        raise UserNotFound(f"user {requested_user_id[:64]!r} not found")
    return principal.user_id


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.startswith(("unix:", "/")):  # a unix socket
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, settings: AuthSettings) -> str | None:
    """A warning (also logged) when the server would listen beyond loopback with auth off."""
    if settings.enabled or _is_loopback(host):
        return None
    warning = (
        f"chatmem is listening on {host!r} with authentication off: anyone who can reach "
        "it can read and erase every conversation and use the admin routes. Bind to "
        "127.0.0.1, or set CHATMEM_AUTH_KEYS / CHATMEM_AUTH_JWT_SECRET."
    )
    log.warning(warning)
    return warning
