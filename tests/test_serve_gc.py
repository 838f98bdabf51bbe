"""`chatmem serve` settles the garbage collector once the app has started
(cli/collector.py `SettledGC`): start-up's objects frozen, the young generations
collected briefly, full collections by a timer — a full collection with 1 000 streams
open stopped every stream for up to 1.5 s (docs/performance.md)."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from chatmem.cli import collector, serve
from chatmem.config import Settings
from tests.support import eventually


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
            assert settled == ["collect", "freeze", f"threshold {collector.GC_THRESHOLDS}"]
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

    wrapped = collector.SettledGC(app)
    await wrapped({"type": "http"}, nothing, record)  # requests pass through untouched
    assert settled == [] and sent == [{"type": "http.response.start", "status": 204, "headers": []}]
    sent.clear()
    await wrapped({"type": "lifespan"}, nothing, record)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen == ["http", "lifespan"]
    assert len(settled) == 3  # once


def test_full_collections_are_rarer_than_pythons() -> None:
    young, middle, old = collector.GC_THRESHOLDS
    assert young * middle * old > 700 * 10 * 10 * 100


async def test_a_full_collection_every_period_until_shutdown(
    settled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector, "FULL_COLLECTION_S", 0.05)

    ran_s = 0.0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal ran_s
        await send({"type": "lifespan.startup.complete"})
        started = time.monotonic()
        # The server runs until two periods' collections were made (not a fixed 0.3 s,
        # which a loaded box can stall through); the first is settle_gc's own.
        await eventually(lambda: settled.count("collect") - 1 >= 2, "two full collections")
        ran_s = time.monotonic() - started
        await send({"type": "lifespan.shutdown.complete"})

    async def nothing() -> Message:
        return {"type": "lifespan.startup"}

    async def sent(message: Message) -> None:
        pass

    await collector.SettledGC(app)({"type": "lifespan"}, nothing, sent)
    full = settled.count("collect") - 1
    assert 2 <= full <= ran_s / 0.05 + 1  # one a period, no more
    await asyncio.sleep(0.15)
    assert settled.count("collect") - 1 == full  # none after the lifespan ended


def test_serve_runs_the_settled_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(app=app))
    serve.run_server(Settings(data_dir=tmp_path, redis={"url": "redis://127.0.0.1:1/0"}))
    assert isinstance(seen["app"], collector.SettledGC)


def test_workers_run_the_settled_app_too(clean_env: Path) -> None:
    module, _, name = serve.APP_FACTORY.partition(":")
    assert module == serve.__name__
    assert isinstance(getattr(serve, name)(), collector.SettledGC)
