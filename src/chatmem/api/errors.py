"""Map the domain error tree to HTTP: `{"error": {"code", "message"}}` with the right status.

Only an error's `message` reaches a client; an opaque error's `detail` (a Redis host, an
upstream's own text) is logged here, redacted, with the request id, and goes no further.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatmem import errors as e
from chatmem.api.responses import JSONBytes as JSONResponse
from chatmem.redact import redact

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of gives its status.
STATUS: list[tuple[type[e.ChatmemError], int]] = [
    (e.TooLarge, 413),
    (e.InvalidInput, 400),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.Unauthenticated, 401),
    (e.Forbidden, 403),
    (e.RateLimited, 429),
    (e.StoreUnavailable, 503),
    (e.StoreFull, 503),
    (e.ProviderTimeout, 504),
    (e.ProviderUnavailable, 503),
    (e.ProviderError, 502),
]


def status_for(exc: e.ChatmemError) -> int:
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def log_detail(exc: e.ChatmemError) -> None:
    """Log what the client is not told (every route that answers an error calls this)."""
    if exc.detail:
        log.warning("%s answered to the client; the cause: %s", exc.code, redact(exc.detail))


def error_response(exc: e.ChatmemError) -> JSONResponse:
    log_detail(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, e.RateLimited):
        # Rounded up: a client that waits as told must not come back too early.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, e.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        error_body(exc.code, exc.message), status_code=status_for(exc), headers=headers
    )


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.ChatmemError)
    return error_response(exc)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in exc.errors()]
    loc = details[0]["loc"] if details else []
    msg = str(details[0]["msg"]) if details else "invalid request"
    where = ".".join(str(p) for p in loc if p != "body")
    return JSONResponse(
        error_body("invalid_request", f"{where}: {msg}" if where else msg, details=details),
        status_code=422,
    )


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.ChatmemError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
