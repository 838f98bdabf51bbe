"""`chatmem serve` settles the garbage collector once the app has started (cli/serve.py
`SettledGC`): start-up's objects frozen, collections rarer — a full collection with
1 000 streams open stopped every stream for up to 1.5 s (docs/performance.md)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from chatmem.cli import serve
from chatmem.config import Settings


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What settle_gc did, without doing it to the test process."""
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: calls.append(f"threshold {t}"))
    return calls


async def test_the_collector_is_settled_once_start_up_is_complete(settled: list[str]) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        if scope["type"] == "lifespan":
            await send({"type": "lifespan.startup.complete"})
            assert settled == ["collect", "freeze", f"threshold {serve.GC_THRESHOLDS}"]
            await send({"type": "lifespan.shutdown.complete"})
        else:
            await send({"type": "http.response.start", "status": 204, "headers": []})

    sent: list[Message] = []

    async def record(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            assert settled == []  # not before the server has the message
        sent.append(message)

    async def nothing() -> Message:
        return {"type": "lifespan.startup"}

    wrapped = serve.SettledGC(app)
    await wrapped({"type": "http"}, nothing, record)  # requests pass through untouched
    assert settled == [] and sent == [{"type": "http.response.start", "status": 204, "headers": []}]
    sent.clear()
    await wrapped({"type": "lifespan"}, nothing, record)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen == ["http", "lifespan"]
    assert len(settled) == 3  # once


def test_thresholds_are_rarer_than_pythons() -> None:
    pythons = (700, 10, 10)
    assert all(ours > theirs for ours, theirs in zip(serve.GC_THRESHOLDS, pythons, strict=True))


def test_serve_runs_the_settled_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(app=app))
    serve.run_server(Settings(data_dir=tmp_path, redis={"url": "redis://127.0.0.1:1/0"}))
    assert isinstance(seen["app"], serve.SettledGC)


def test_workers_run_the_settled_app_too(clean_env: Path) -> None:
    module, _, name = serve.APP_FACTORY.partition(":")
    assert module == serve.__name__
    assert isinstance(getattr(serve, name)(), serve.SettledGC)
