"""Security headers: the page's Content-Security-Policy as an HTTP header (a meta tag
cannot say `frame-ancestors`), and no framing, sniffing or referrers on any response."""

from __future__ import annotations

import re

import httpx
import pytest

from chatmem.api.app import WEB_DIR
from chatmem.api.security_headers import DOCS_CSP, PAGE_CSP

EVERY = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def meta_policy() -> str:
    html = (WEB_DIR / "index.html").read_text()
    found = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', html)
    assert found, "index.html lost its CSP meta tag"
    return found.group(1)


def test_the_header_is_the_meta_tags_policy_plus_frame_ancestors() -> None:
    assert meta_policy() + "; frame-ancestors 'none'" == PAGE_CSP


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/static/app.js"])
async def test_the_page_carries_its_policy_as_a_header(
    client: httpx.AsyncClient, path: str
) -> None:
    """The page's CSP was only a meta tag, and no response said X-Frame-Options or
    nosniff: the page could be framed (clickjacking) and a response content-sniffed."""
    r = await client.get(path)
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == PAGE_CSP
    assert {k: r.headers.get(k) for k in EVERY} == EVERY


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/v1/sessions"),
        ("GET", "/nope"),
        ("POST", "/v1/sessions/x!/stop"),
    ],
)
async def test_every_response_refuses_framing_and_sniffing(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    r = await client.request(method, path)
    assert {k: r.headers.get(k) for k in EVERY} == EVERY
    # The API is not a page: no CSP.
    assert "content-security-policy" not in r.headers


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_the_api_documentation_pages_carry_their_own_policy(
    client: httpx.AsyncClient, path: str
) -> None:
    """Swagger UI and ReDoc run an inline script and chatmem's copy of their assets:
    that and no more (no CDN: the page works offline)."""
    r = await client.get(path)
    assert r.status_code == 200
    policy = r.headers["content-security-policy"]
    assert policy == DOCS_CSP and "frame-ancestors 'none'" in policy
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    assert {k: r.headers.get(k) for k in EVERY} == EVERY


async def test_a_stream_carries_them_too(client: httpx.AsyncClient) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["session"]["session_id"]
    async with client.stream(
        "POST", f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert {k: r.headers.get(k) for k in EVERY} == EVERY
        assert "event: done" in "".join([chunk async for chunk in r.aiter_text()])
