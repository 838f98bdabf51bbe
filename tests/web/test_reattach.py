"""The page re-attaches to a reply the server is still writing (SPEC §3.5, §3.6).

Against the real app (`GET /v1/sessions/{sid}/stream`, and a disconnect that does not
stop the generation), behind tests/stream_tap.py, which passes every request on and
records the `Last-Event-ID` the app receives (and can end a send's response after a
given number of events).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from chatmem.api.app import create_app
from tests.cutting_proxy import CuttingProxy
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.stream_tap import StreamTap
from tests.support import wait_until
from tests.web.conftest import PageWatch, chat, open_page, send, user_id, wait_idle, web_settings

pytestmark = pytest.mark.browser

LONG_REPLY = " ".join(f"w{i}" for i in range(60))
ASSISTANT = ".message.assistant:not(.greeting)"
STREAMING = ".message.assistant.streaming .bubble"


@dataclass
class Target:
    live: LiveServer
    tap: StreamTap

    @property
    def url(self) -> str:
        return self.live.url


@pytest.fixture(scope="module")
def target(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    settings = web_settings(redis_url, fake_model, tmp_path_factory.mktemp("web"))
    tap = StreamTap(create_app(settings))
    with LiveServer(app=tap) as live:
        yield Target(live, tap)


@pytest.fixture(autouse=True)
def fresh_tap(target: Target) -> None:
    target.tap.cut_after_events = None
    target.tap.cut_at_ids.clear()
    target.tap.last_event_ids.clear()


@pytest.fixture
def tab(context: BrowserContext, target: Target) -> Iterator[Page]:
    p = context.new_page()
    watch = PageWatch(p)
    open_page(p, target.url)
    yield p
    assert watch.dialogs == [], "the page opened a native dialog"
    assert watch.errors == [], "the page threw"


def stored(target: Target, page: Page) -> list[dict[str, Any]]:
    sid = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    res = httpx.get(
        f"{target.url}/v1/sessions/{sid}/messages",
        headers={"X-User-Id": user_id(page)},
        timeout=10,
    )
    messages: list[dict[str, Any]] = res.json()["messages"]
    return messages


def upstream_outcome(fake: FakeOpenAI) -> str:
    """How the last reply ended, as the fake model saw it. It records that in its own
    thread once it has written the end or seen the connection close, which can be a
    moment after the page is idle: wait for it rather than race it."""
    request = fake.chat_requests[-1]
    wait_until(lambda: request.outcome != "pending", "the fake model to see the reply end")
    return request.outcome


def reload(page: Page) -> None:
    page.reload()
    page.wait_for_selector("body[data-ready=true]")


def start_long_reply(page: Page, fake: FakeOpenAI) -> None:
    fake.script(Reply(text=LONG_REPLY, delay_s=0.05))
    send(page, "tell me a long story")
    expect(page.locator(STREAMING)).to_have_text(re.compile(r"w5 "))


def test_reload_mid_reply_the_reply_continues_and_completes(
    tab: Page, target: Target, fake: FakeOpenAI
) -> None:
    start_long_reply(tab, fake)
    reload(tab)

    # Shown streaming again, from its start, with Stop, while the server writes it.
    streaming = tab.locator(STREAMING)
    expect(streaming).to_have_text(re.compile(r"^w0 w1 "))
    expect(tab.locator("#stop")).to_be_visible()
    assert len(streaming.text_content() or "") < len(LONG_REPLY), "not shown as it streams"

    wait_idle(tab)
    reply = tab.locator(ASSISTANT)
    expect(reply).to_have_count(1)
    expect(reply.locator(".bubble")).to_have_text(LONG_REPLY)
    expect(reply).not_to_have_class(re.compile(r"\binterrupted\b"))
    last = stored(target, tab)[-1]
    assert last["content"] == LONG_REPLY and not last["metadata"].get("interrupted")
    expect(reply).to_have_attribute("data-msg-id", last["msg_id"])
    assert upstream_outcome(fake) == "completed"


def test_stop_works_on_a_reattached_reply(tab: Page, target: Target, fake: FakeOpenAI) -> None:
    start_long_reply(tab, fake)
    reload(tab)
    expect(tab.locator(STREAMING)).to_have_text(re.compile(r"w10 "))
    tab.click("#stop")
    wait_idle(tab)

    reply = tab.locator(ASSISTANT)
    expect(reply).to_have_count(1)
    expect(reply.locator(".tag")).to_have_text("stopped")
    last = stored(target, tab)[-1]
    assert last["metadata"].get("interrupted") is True
    assert 0 < len(last["content"]) < len(LONG_REPLY)
    expect(reply.locator(".bubble")).to_have_text(last["content"])
    assert upstream_outcome(fake) == "client_closed", "the model went on"


def test_a_reply_that_just_ended_is_not_shown_twice(tab: Page, target: Target) -> None:
    """The stream of a reply that ended recently replays it, while the history read just
    before already holds it: the page showed the reply twice."""
    chat(tab, "hello")
    reload(tab)
    expect(tab.locator("body")).to_have_attribute("data-attaches", "1")
    expect(tab.locator(ASSISTANT)).to_have_count(1)
    expect(tab.locator(STREAMING)).to_have_count(0)
    wait_idle(tab)


def test_switching_chats_detaches_and_coming_back_reattaches(
    tab: Page, target: Target, fake: FakeOpenAI
) -> None:
    start_long_reply(tab, fake)
    first = tab.evaluate("localStorage.getItem('chatmem.sessionId')")
    tab.click("#new-session")  # while the reply streams
    expect(tab.locator("#messages .message.greeting")).to_have_count(1)
    expect(tab.locator(STREAMING)).to_have_count(0)
    wait_idle(tab)

    tab.locator(f'.session[data-session-id="{first}"] .session-open').click()
    expect(tab.locator(STREAMING)).to_have_text(re.compile(r"^w0 "))
    wait_idle(tab)
    expect(tab.locator(f"{ASSISTANT} .bubble")).to_have_text([LONG_REPLY])
    assert stored(target, tab)[-1]["content"] == LONG_REPLY


def test_a_connection_cut_mid_reply_resumes_where_it_was_cut(
    context: BrowserContext, target: Target, fake: FakeOpenAI
) -> None:
    with CuttingProxy(target.live.port) as proxy:
        page = context.new_page()
        watch = PageWatch(page)
        open_page(page, proxy.url)
        target.tap.last_event_ids.clear()
        start_long_reply(page, fake)
        proxy.cut()  # the page's connection is reset mid-body

        wait_idle(page)
        reply = page.locator(ASSISTANT)
        expect(reply.locator(".bubble")).to_have_text([LONG_REPLY])  # each delta once
        expect(reply).not_to_have_class(re.compile(r"\binterrupted\b"))
        assert stored(target, page)[-1]["content"] == LONG_REPLY
        assert watch.errors == []
    assert [i for i in target.tap.last_event_ids if i is not None] != [], "no resume"


def test_a_dropped_connection_resumes_after_the_last_event_id(
    context: BrowserContext, target: Target, fake: FakeOpenAI
) -> None:
    """The send's response ends after 5 events, before the reply's end: the page resumes
    where it was cut, with the last event's id as Last-Event-ID, and shows every delta
    exactly once."""
    page = context.new_page()
    open_page(page, target.url)
    tap = target.tap
    tap.cut_after_events = 5
    fake.script(Reply(text=LONG_REPLY, delay_s=0.03))
    send(page, "go")
    wait_idle(page)
    expect(page.locator(f"{ASSISTANT} .bubble")).to_have_text([LONG_REPLY])
    expect(page.locator(ASSISTANT)).not_to_have_class(re.compile(r"\binterrupted\b"))
    assert stored(target, page)[-1]["content"] == LONG_REPLY
    assert len(tap.cut_at_ids) == 1, "the response was not cut"
    resumed_from = [i for i in tap.last_event_ids if i is not None]
    assert resumed_from == tap.cut_at_ids, (tap.last_event_ids, tap.cut_at_ids)
