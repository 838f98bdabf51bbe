"""The app for API tests: settings that ignore the environment, the app in-process (real
Redis, real lifespan, httpx.ASGITransport), and the one SSE parser of the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import orjson
from fastapi import FastAPI

from chatmem.api.app import create_app
from chatmem.config import (
    AuthSettings,
    JobSettings,
    LimitSettings,
    LLMSettings,
    MemorySettings,
    RedisSettings,
    Settings,
)

if TYPE_CHECKING:
    from openai import OpenAI


def make_test_settings(
    redis_url: str,
    llm_base_url: str,
    data_dir: Path,
    *,
    auth_keys: str = "",
    jwt_secret: str | None = None,
    llm: dict[str, Any] | None = None,
    memory: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
    jobs: dict[str, Any] | None = None,
) -> Settings:
    """Settings that ignore the environment and .env: tests say everything they need.
    Background jobs are off unless `jobs` says otherwise (they would ask the fake model
    too: tests/test_memory*.py turn them on)."""
    return Settings(
        data_dir=data_dir,
        redis=RedisSettings(url=redis_url, **(redis or {})),
        llm=LLMSettings(
            provider="openai",
            base_url=llm_base_url,
            api_key="test-key",
            model="fake-model",
            max_retries=0,
            **(llm or {}),
        ),
        memory=MemorySettings(**(memory or {})),
        auth=AuthSettings(keys=auth_keys, jwt_secret=jwt_secret, **(auth or {})),
        limits=LimitSettings(
            **(
                {
                    "turns_per_minute": 100_000,
                    "writes_per_minute": 100_000,
                    "streams_per_user": 1000,
                }
                | (limits or {})
            ),
        ),
        jobs=JobSettings(**({"enabled": False} | (jobs or {}))),
        _env_file=None,  # type: ignore[call-arg]
    )


@asynccontextmanager
async def running_app(
    settings: Settings, **client_kwargs: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan run, and a client talking to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://chatmem.test", timeout=30, **client_kwargs
        ) as client:
            yield app, client


# Socket, connect and pool timeouts for tests that stop Redis: short, so that a dead Redis
# costs little time, yet long enough for a loaded machine to connect in time.
REDIS_DOWN_TIMEOUT_S = 1.0
FAST_FAILING_REDIS = {
    "socket_timeout_s": REDIS_DOWN_TIMEOUT_S,
    "connect_timeout_s": REDIS_DOWN_TIMEOUT_S,
    "pool_timeout_s": REDIS_DOWN_TIMEOUT_S,
}


async def new_session(
    client: httpx.AsyncClient, user: str = "alice", expect: int = 201, **body: Any
) -> str:
    r = await client.post("/v1/sessions", json=body, headers={"X-User-Id": user})
    assert r.status_code == expect, r.text
    sid: str = r.json()["session"]["session_id"]
    return sid


# --- server-sent events ------------------------------------------------------------------


class SSEEvent(NamedTuple):
    """One event: its name ("message" when unnamed), its data (JSON-decoded when it is
    JSON, else the text, as `[DONE]`), its id ("" when none)."""

    event: str
    data: Any
    id: str


class _Frame:
    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []
        self.id = ""

    def feed(self, line: str) -> None:
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        # comments (":" first) and unknown fields are skipped, as the spec says

    def done(self) -> SSEEvent | None:
        if not self.data:
            return None
        text = "\n".join(self.data)
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = text
        return SSEEvent(self.event, data, self.id)


def _events(lines: Iterable[str]) -> list[SSEEvent]:
    out, frame = [], _Frame()
    for line in lines:
        if line:
            frame.feed(line)
            continue
        if (event := frame.done()) is not None:
            out.append(event)
        frame = _Frame()
    if (event := frame.done()) is not None:
        out.append(event)
    return out


def sse_events(body: str) -> list[SSEEvent]:
    """Every event of a whole SSE body."""
    return _events(body.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


async def sse_stream(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """The events of a streamed response, each as soon as its blank line arrives."""
    frame = _Frame()
    async for line in response.aiter_lines():
        if line:
            frame.feed(line)
            continue
        if (event := frame.done()) is not None:
            yield event
        frame = _Frame()


def sse_done(body: str) -> dict[str, Any]:
    """The data of a turn's `done` event."""
    for event in sse_events(body):
        if event.event == "done":
            done: dict[str, Any] = event.data
            return done
    raise AssertionError(f"no done event in {body!r}")


# --- a live server's sessions, as a real client sees them (conftest `base_url`) -----


def openai_client(base_url: str, user: str, sid: str | None = None, **kw: Any) -> OpenAI:
    """The `openai` SDK's sync client on a live server's OpenAI-compatible route, as
    `user`, on session `sid` if given; no retries unless `max_retries` says so."""
    from openai import OpenAI  # only the tests that use it pay for its import

    headers = {"X-User-Id": user} | ({"X-Session-Id": sid} if sid else {})
    kw.setdefault("max_retries", 0)
    return OpenAI(
        base_url=f"{base_url}/v1", api_key="open-mode", default_headers=headers, timeout=30, **kw
    )


def stored_messages(base_url: str, user: str, sid: str) -> list[dict[str, Any]]:
    """The messages stored in session `sid` (the native API), the greeting left out."""
    r = httpx.get(f"{base_url}/v1/sessions/{sid}/messages", headers={"X-User-Id": user})
    assert r.status_code == 200, r.text
    msgs: list[dict[str, Any]] = r.json()["messages"]
    return [m for m in msgs if not m["metadata"].get("greeting")]


def sessions_of(base_url: str, user: str) -> list[dict[str, Any]]:
    """`user`'s sessions (the native API), most recently active first."""
    r = httpx.get(f"{base_url}/v1/sessions", headers={"X-User-Id": user})
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["sessions"]
    return out


# --- auth on: the test users' API keys -------------------------------------------------

TEST_KEYS = {
    "alice": "key-alice-0123456789",
    "bob": "key-bob-0123456789ab",
    "root": "key-root-0123456789a",
}
# `auth_keys` of make_test_settings: users alice and bob, and root, an admin.
TEST_AUTH_KEYS = f"{TEST_KEYS['alice']}=alice,{TEST_KEYS['bob']}=bob,{TEST_KEYS['root']}=root:admin"


def bearer(user: str) -> dict[str, str]:
    """The Authorization header of `user`'s key in TEST_KEYS."""
    return {"Authorization": f"Bearer {TEST_KEYS[user]}"}
