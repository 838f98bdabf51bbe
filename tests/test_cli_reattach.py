"""`chatmem chat --session` shows the reply the server is still writing (SPEC §3.5, §3.6).

A real uvicorn, Redis and fake model; the chat runs in-process (typer's CliRunner). Each
test runs twice, as tests/web/test_reattach.py does:
- `real-route`: the real app. These need the server side of issue 11 (`GET
  /v1/sessions/{sid}/stream`, a disconnect that does not stop the generation); until it
  lands they FAIL, on purpose (the duplicate check passes either way).
- `standin`: the same app behind tests/standin_stream.py, a TEMPORARY test-only stand-in
  of that contract. Once the server side is merged, delete the parameter, the stand-in
  and the stand-in-only test (the cutting-proxy test covers resume on the real route).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from chatmem.api.app import create_app
from chatmem.cli.commands import app
from tests.api_support import make_test_settings
from tests.cutting_proxy import CuttingProxy
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.standin_stream import StandInStream

LONG_REPLY = " ".join(f"w{i}" for i in range(60))
USER = "cli-reattach"


@pytest.fixture(params=["real-route", "standin"])
def live(
    request: pytest.FixtureRequest, redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> Iterator[tuple[LiveServer, StandInStream | None]]:
    application = create_app(make_test_settings(redis_url, fake.base_url, tmp_path))
    wrapped = StandInStream(application) if request.param == "standin" else None
    with LiveServer(app=wrapped or application) as server:
        yield server, wrapped


def new_session(url: str) -> str:
    res = httpx.post(
        url + "/v1/sessions", json={"character_id": "luna"}, headers={"X-User-Id": USER}
    )
    sid: str = res.json()["session"]["session_id"]
    return sid


def send_and_hang_up(url: str, sid: str, *, after_deltas: int | None) -> None:
    """A streamed send whose client goes away after some deltas (None: reads it all)."""
    deltas = 0
    with httpx.stream(
        "POST",
        f"{url}/v1/sessions/{sid}/messages",
        json={"content": "tell me a long story", "stream": True},
        headers={"X-User-Id": USER},
        timeout=30,
    ) as res:
        assert res.status_code == 200
        for line in res.iter_lines():
            deltas += line.startswith("event: delta")
            if after_deltas is not None and deltas >= after_deltas:
                return


def chat(url: str, sid: str, stdin: str) -> str:
    res = CliRunner().invoke(app, ["chat", "--url", url, "-u", USER, "--session", sid], input=stdin)
    assert res.exit_code == 0, res.output
    return res.stdout


def stored(url: str, sid: str) -> list[dict[str, Any]]:
    res = httpx.get(f"{url}/v1/sessions/{sid}/messages", headers={"X-User-Id": USER})
    messages: list[dict[str, Any]] = res.json()["messages"]
    return messages


def test_chat_opened_on_a_running_reply_shows_it_then_the_prompt(
    live: tuple[LiveServer, StandInStream | None], fake: FakeOpenAI
) -> None:
    server, _ = live
    fake.script(Reply(text=LONG_REPLY, delay_s=0.05))
    sid = new_session(server.url)
    send_and_hang_up(server.url, sid, after_deltas=3)

    out = chat(server.url, sid, "/quit\n")
    assert f"Luna › {LONG_REPLY}" in out, out
    assert out.index(LONG_REPLY) < out.rindex("you › "), "the prompt came before the reply"
    last = stored(server.url, sid)[-1]
    assert last["content"] == LONG_REPLY and not last["metadata"].get("interrupted")


def test_chat_opened_just_after_a_reply_ended_shows_it_once(
    live: tuple[LiveServer, StandInStream | None], fake: FakeOpenAI
) -> None:
    """The stream of a reply that ended recently replays it, while the history shown just
    before holds it already: the chat printed the reply twice."""
    server, _ = live
    fake.script(Reply(text=LONG_REPLY))
    sid = new_session(server.url)
    send_and_hang_up(server.url, sid, after_deltas=None)

    out = chat(server.url, sid, "/quit\n")
    assert out.count(LONG_REPLY) == 1, out


def test_a_connection_cut_mid_reply_resumes_where_it_was_cut(
    live: tuple[LiveServer, StandInStream | None], fake: FakeOpenAI
) -> None:
    server, _ = live
    sid = new_session(server.url)
    fake.script(Reply(text=LONG_REPLY, delay_s=0.05))
    with CuttingProxy(server.port) as proxy:
        cut = threading.Timer(1.0, proxy.cut)  # mid-reply: it takes 3 s
        cut.start()
        try:
            out = chat(proxy.url, sid, "go on\n/quit\n")
        finally:
            cut.cancel()
    assert out.count(LONG_REPLY) == 1 and f"Luna › {LONG_REPLY}" in out, out
    last = stored(server.url, sid)[-1]
    assert last["content"] == LONG_REPLY and not last["metadata"].get("interrupted")


def test_a_dropped_reply_resumes_after_the_last_event_id(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Stand-in only (it cuts the connection): the chat resumes where it was cut, with
    Last-Event-ID, and prints every delta exactly once."""
    wrapped = StandInStream(create_app(make_test_settings(redis_url, fake.base_url, tmp_path)))
    with LiveServer(app=wrapped) as server:
        sid = new_session(server.url)
        wrapped.cut_after_events = 3
        fake.script(Reply(text=LONG_REPLY, delay_s=0.02))
        out = chat(server.url, sid, "go on\n/quit\n")
    assert out.count(LONG_REPLY) == 1 and f"Luna › {LONG_REPLY}" in out, out
    resumed_from = [i for i in wrapped.last_event_ids if i is not None]
    assert resumed_from == wrapped.cut_at_ids, (wrapped.last_event_ids, wrapped.cut_at_ids)
