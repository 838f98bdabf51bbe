"""Security headers, as a pure ASGI middleware (streams pass through untouched).

Every response: `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`,
`Referrer-Policy: no-referrer`. The page (`/` and `/static/*`) also gets its
Content-Security-Policy as a header: the policy of the meta tag in web/index.html plus
`frame-ancestors 'none'`, which a meta tag cannot carry. /docs and /redoc (Swagger UI
and ReDoc, their assets served by chatmem, started by an inline script) get a policy of
their own: chatmem's scripts and inline ones (any inline script: the pages are FastAPI's
fixed HTML with no user content), nothing from elsewhere, and no site frames them.
A header the app already set wins.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Keep in step with the meta tag in web/index.html (tests/test_security_headers.py checks).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# The documentation pages: their inline start-up script, their assets (served by chatmem,
# fastapi-offline), nothing from elsewhere.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
EVERY_RESPONSE: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
PAGE: tuple[tuple[bytes, bytes], ...] = (
    *EVERY_RESPONSE,
    (b"content-security-policy", PAGE_CSP.encode()),
)


DOCS: tuple[tuple[bytes, bytes], ...] = (
    *EVERY_RESPONSE,
    (b"content-security-policy", DOCS_CSP.encode()),
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def is_page(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


def headers_for(path: str) -> tuple[tuple[bytes, bytes], ...]:
    if is_page(path):
        return PAGE
    return DOCS if path in DOCS_PATHS else EVERY_RESPONSE


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = headers_for(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
