"""Error bodies carry chatmem's code and message, never an upstream's raw text or an
internal host (SPEC §8; issue 10 item 3). The upstream's text goes to the log, redacted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.errors import ProviderAuthError
from chatmem.redact import redact
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import RedisProcess

API_KEY = "gw-live-SECRETKEY0123456789"  # not `sk-`-shaped: only the key itself matches it
INTERNAL = "llm-gw.internal.corp:8443"
# An upstream 401 that echoes the key and names its host, as some gateways do.
UPSTREAM_TEXT = (
    f"Incorrect API key provided: {API_KEY}. Check it at https://admin:hunter2@{INTERNAL}/keys "
    f"(request sent with Authorization: Bearer {API_KEY})"
)
LEAKS = ("SECRETKEY", "llm-gw", "hunter2", "Incorrect API key", "8443")
H = {"X-User-Id": "alice"}


@pytest.fixture
async def client(
    redis_url: str, redis_client: Any, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir)
    settings.llm = settings.llm.model_copy(update={"api_key": API_KEY})
    async with running_app(settings) as (_, http):
        yield http


def assert_no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} reached the client: {text[:500]}"


async def failing_requests(client: httpx.AsyncClient) -> list[tuple[str, httpx.Response]]:
    """One request per route family, each answered by the upstream's 401."""
    sid = (await client.post("/v1/sessions", json={}, headers=H)).json()["session"]["session_id"]
    path = f"/v1/sessions/{sid}/messages"
    chat = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}
    seed_sid = (await client.post("/chat/start", params={"user_id": "alice"})).json()["session_id"]
    return [
        ("native JSON", await client.post(path, json={"content": "hi"}, headers=H)),
        ("native SSE", await client.post(path, json={"content": "hi", "stream": True}, headers=H)),
        ("seed 000", await client.post("/chat", json={"user_id": "alice", "message": "hi"})),
        (
            "seed 002 SSE",
            await client.get(
                "/chat/stream",
                params={"user_id": "alice", "session_id": seed_sid, "message": "hi"},
            ),
        ),
        (
            "seed 004 SSE",
            await client.post(
                "/api/v1/chat/stream",
                json={"character_id": "assistant", "message": "hi"},
                headers=H,
            ),
        ),
        ("OpenAI JSON", await client.post("/v1/chat/completions", json=chat, headers=H)),
        (
            "OpenAI SSE",
            await client.post("/v1/chat/completions", json={**chat, "stream": True}, headers=H),
        ),
    ]


async def test_upstream_error_text_never_reaches_the_client(
    client: httpx.AsyncClient, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream 401 body echoing its API key and internal host went verbatim into
    JSON, SSE and OpenAI-shaped errors."""
    fake.default = Reply(status=401, error_message=UPSTREAM_TEXT)
    with caplog.at_level(logging.WARNING):
        answers = await failing_requests(client)
    assert fake.request_count == len(answers)
    for route, r in answers:
        assert_no_leak(r.text)
        assert "provider_auth" in r.text, (route, r.text)
        assert ProviderAuthError().message in r.text, (route, r.text)
        if not r.headers["content-type"].startswith("text/event-stream"):
            assert r.status_code == 502, (route, r.status_code)
    # The server's log keeps what the upstream said, its secrets redacted.
    logged = [r.getMessage() for r in caplog.records if "Incorrect API key" in r.getMessage()]
    assert len(logged) == len(answers)  # once per failed request, whichever its route
    assert INTERNAL in logged[0]
    for secret in ("SECRETKEY", "hunter2"):
        assert not any(secret in line for line in logged)


async def test_store_unavailable_names_no_redis_host(
    fake: FakeOpenAI, tmp_data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """503 bodies carried redis-py's text, with the Redis host and port."""
    server = RedisProcess(tmp_path).start()
    settings = make_test_settings(server.url, fake.base_url, tmp_data_dir)
    port = str(server.port)
    try:
        async with running_app(settings) as (_, client):
            sid = (await client.post("/v1/sessions", json={}, headers=H)).json()["session"][
                "session_id"
            ]
            server.kill()
            with caplog.at_level(logging.WARNING):
                for r in (
                    await client.get("/v1/sessions", headers=H),
                    await client.get(f"/v1/sessions/{sid}/messages", headers=H),
                    await client.get("/v1/me", headers=H),
                ):
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "store_unavailable"
                    assert port not in r.text and "127.0.0.1" not in r.text, r.text
            assert port in "\n".join(rec.getMessage() for rec in caplog.records)
    finally:
        server.stop()


def test_redact_takes_out_keys_tokens_and_url_credentials() -> None:
    out = redact(UPSTREAM_TEXT, [API_KEY])
    assert "SECRETKEY" not in out and "hunter2" not in out
    assert INTERNAL in out and "Incorrect API key provided" in out
    assert redact("api_key=abc123&x=1 token: zzz9") == "api_key=[redacted]&x=1 token: [redacted]"
    assert redact("Bearer eyJhbGciOi.x.y") == "Bearer [redacted]"
