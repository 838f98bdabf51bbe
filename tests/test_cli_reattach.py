"""`chatmem chat --session` shows the reply the server is still writing (SPEC §3.5, §3.6).

A real uvicorn, Redis and fake model; the chat runs in-process (typer's CliRunner). The
real app (`GET /v1/sessions/{sid}/stream`, a disconnect that does not stop the
generation) is served behind tests/stream_tap.py, which passes every request on and
records the `Last-Event-ID` the app receives (and can end a send's response after a
given number of events), as in tests/web/test_reattach.py.
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
from tests.stream_tap import StreamTap

LONG_REPLY = " ".join(f"w{i}" for i in range(60))
USER = "cli-reattach"


@pytest.fixture
def live(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> Iterator[tuple[LiveServer, StreamTap]]:
    tap = StreamTap(create_app(make_test_settings(redis_url, fake.base_url, tmp_path)))
    with LiveServer(app=tap) as server:
        yield server, tap


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
    live: tuple[LiveServer, StreamTap], fake: FakeOpenAI
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
    live: tuple[LiveServer, StreamTap], fake: FakeOpenAI
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
    live: tuple[LiveServer, StreamTap], fake: FakeOpenAI
) -> None:
    server, tap = live
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
    assert [i for i in tap.last_event_ids if i is not None] != [], "no resume"


def test_a_dropped_reply_resumes_after_the_last_event_id(
    live: tuple[LiveServer, StreamTap], fake: FakeOpenAI
) -> None:
    """The send's response ends after 3 events, before the reply's end: the chat resumes
    where it was cut, with the last event's id as Last-Event-ID, and prints every delta
    exactly once."""
    server, tap = live
    sid = new_session(server.url)
    tap.cut_after_events = 3
    fake.script(Reply(text=LONG_REPLY, delay_s=0.02))
    out = chat(server.url, sid, "go on\n/quit\n")
    assert out.count(LONG_REPLY) == 1 and f"Luna › {LONG_REPLY}" in out, out
    last = stored(server.url, sid)[-1]
    assert last["content"] == LONG_REPLY and not last["metadata"].get("interrupted")
    assert len(tap.cut_at_ids) == 1, "the response was not cut"
    resumed_from = [i for i in tap.last_event_ids if i is not None]
    assert resumed_from == tap.cut_at_ids, (tap.last_event_ids, tap.cut_at_ids)
