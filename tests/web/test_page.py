"""The web page in a real headless Chromium, against a real uvicorn, Redis and fake model.

One server and one browser for the module, a fresh browser context per test
(tests/web/conftest.py). Re-attaching to a running reply: tests/web/test_reattach.py.
Screenshots go to $CHATMEM_SCREENSHOTS (e.g. docs/screenshots) when it is set.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.support import wait_until
from tests.web.conftest import (
    DEFAULT_REPLY,
    LUNA_GREETING,
    PageWatch,
    api,
    chat,
    new_chat_with,
    open_page,
    send,
    wait_idle,
    web_settings,
)

XSS = "<img src=x onerror=alert(1)>"
API_KEY = "web-test-key-0123456789"

pytestmark = pytest.mark.browser


# --- tests ------------------------------------------------------------------------------


def test_page_is_served_at_both_addresses(server: LiveServer) -> None:
    for path in ("/", "/static/index.html"):
        res = httpx.get(server.url + path)
        assert res.status_code == 200
        assert "<title>chatmem</title>" in res.text
        # Everything it loads comes from chatmem itself.
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", res.text)
    assert httpx.get(server.url + "/static/app.js").status_code == 200


def test_reply_streams_in_with_typing_indicator(
    page: Page, server: LiveServer, fake: FakeOpenAI, shots: Path
) -> None:
    # The model "thinks" before its first token: the typing indicator shows meanwhile.
    fake.script(Reply(text=DEFAULT_REPLY, delay_s=0.05, headers_delay_s=0.8))
    new_chat_with(page, "luna")
    page.fill("#input", "first line")
    page.press("#input", "Shift+Enter")
    page.type("#input", "second line")
    assert page.input_value("#input") == "first line\nsecond line", "Shift+Enter sends"
    page.press("#input", "Enter")

    expect(page.locator("#typing")).to_be_visible()
    expect(page.locator("#typing")).to_contain_text("Luna is typing")
    expect(page.locator("#stop")).to_be_visible()
    streaming = page.locator(".message.assistant.streaming .bubble")
    expect(streaming).to_have_text(re.compile(r"\S"))
    partial = streaming.text_content() or ""
    assert 0 < len(partial) < len(DEFAULT_REPLY), "the reply arrived all at once"
    page.screenshot(path=str(shots / "chat-streaming.png"))

    wait_idle(page)
    last = page.locator(".message.assistant").last
    expect(last.locator(".bubble")).to_have_text(DEFAULT_REPLY)
    user_msgs = page.locator(".message.user .bubble")
    expect(user_msgs).to_have_text(["first line\nsecond line"])
    expect(page.locator("#usage-tokens")).not_to_have_text("0 tokens")
    expect(page.locator("#usage-cost")).to_have_text(re.compile(r"\$"))
    # The sidebar preview follows the last message.
    expect(page.locator(".session .session-preview").first).to_contain_text("Hello! I am")


def test_stop_really_stops_and_the_partial_reply_survives_reload(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    long_reply = " ".join(f"w{i}" for i in range(400))
    fake.script(Reply(text=long_reply, delay_s=0.05))
    send(page, "tell me a long story")
    bubble = page.locator(".message.assistant.streaming .bubble")
    expect(bubble).to_have_text(re.compile(r"w5 "))
    page.click("#stop")
    wait_idle(page)

    stopped = page.locator(".message.assistant").last
    expect(stopped.locator(".tag")).to_have_text("stopped")
    shown = stopped.locator(".bubble").text_content() or ""
    assert shown.startswith("w0 w1") and len(shown) < len(long_reply)
    request = fake.chat_requests[-1]
    # The fake model records how the reply ended in its own thread, once it has seen the
    # connection close: the page can be idle (the partial reply stored) before that.
    wait_until(lambda: request.outcome != "pending", "the fake model to see the reply end")
    assert request.outcome == "client_closed", "the upstream generation went on"
    assert request.chunks_sent < 300

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    restored = page.locator(".message.assistant").last
    expect(restored).to_have_class(re.compile(r"\binterrupted\b"))
    expect(restored.locator(".bubble")).to_have_text(shown.strip())
    expect(page.locator(".message.user .bubble").last).to_have_text("tell me a long story")


def test_switch_characters_and_sessions_and_rename(
    page: Page, server: LiveServer, shots: Path
) -> None:
    page.select_option("#character", "luna")
    expect(page.locator("#character-greeting")).to_have_text(LUNA_GREETING)
    page.click("#new-session")
    expect(page.locator("#messages .message.greeting .bubble")).to_have_text(LUNA_GREETING)
    expect(page.locator("#session-title")).to_have_text("Luna")
    chat(page, "I love hiking in the Alps.")

    teacher = api(server, page, "GET", "/v1/characters/teacher").json()
    new_chat_with(page, "teacher")
    expect(page.locator("#messages .message.greeting .bubble")).to_have_text(teacher["greeting"])
    expect(page.locator("#messages .message.user")).to_have_count(0)
    expect(page.locator("#session-list .session")).to_have_count(2)

    # Back to Luna's session: its history comes back.
    # (titled by its first message: tests/web/test_page_defaults.py)
    page.locator(".session", has_text="Luna").locator(".session-open").click()
    expect(page.locator("#session-title")).to_have_text("I love hiking in the Alps.")
    expect(page.locator(".message.user .bubble")).to_have_text(["I love hiking in the Alps."])

    luna_item = page.locator(".session", has_text="Luna")
    luna_item.locator(".rename").click()
    page.fill(".rename-input", "Trip plans")
    page.press(".rename-input", "Enter")
    expect(page.locator("#session-title")).to_have_text("Trip plans")
    expect(page.locator("#session-character")).to_have_text("with Luna")
    expect(page.locator(".session[aria-current=true] .session-title")).to_have_text("Trip plans")
    sid = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    assert api(server, page, "GET", f"/v1/sessions/{sid}").json()["title"] == "Trip plans"
    page.screenshot(path=str(shots / "sidebar-sessions.png"))


def test_delete_session(page: Page, server: LiveServer) -> None:
    new_chat_with(page, "luna")
    new_chat_with(page, "programmer")
    items = page.locator("#session-list .session")
    expect(items).to_have_count(2)
    current = page.evaluate("localStorage.getItem('chatmem.sessionId')")

    delete = page.locator(f'.session[data-session-id="{current}"] .delete')
    delete.click()
    expect(delete).to_have_text("Delete?")
    delete.click()
    expect(items).to_have_count(1)
    assert api(server, page, "GET", f"/v1/sessions/{current}").status_code == 404
    # The page moved on to the remaining session.
    expect(page.locator("#session-title")).to_have_text("Luna")

    page.locator("#session-list .session .delete").click()
    page.locator("#session-list .session .delete").click()
    expect(items).to_have_count(0)
    expect(page.locator("#sessions-empty")).to_be_visible()
    expect(page.locator("#welcome")).to_be_visible()


def test_long_history_loads_older_pages(page: Page, server: LiveServer, fake: FakeOpenAI) -> None:
    fake.script(*[Reply(text=f"reply {i}") for i in range(30)])
    sid = api(server, page, "POST", "/v1/sessions", json={"character_id": "luna"}).json()[
        "session"
    ]["session_id"]
    for i in range(30):
        res = api(server, page, "POST", f"/v1/sessions/{sid}/messages", json={"content": f"m{i}"})
        assert res.status_code == 200, res.text
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    messages = page.locator("#messages .message")
    expect(messages).to_have_count(50)
    expect(messages.last.locator(".bubble")).to_have_text("reply 29")
    page.click("#load-older")
    expect(messages).to_have_count(61)  # the greeting and 30 turns
    expect(messages.first.locator(".bubble")).to_have_text(LUNA_GREETING)
    expect(page.locator("#load-older")).to_be_hidden()


def test_html_in_messages_titles_and_cards_renders_as_text(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    evil_reply = "<b>bold?</b><script>alert(2)</script><img src=y onerror=alert(3)>"
    fake.script(Reply(text=evil_reply, chunks=3))
    card = {
        "id": "xss-card",
        "name": "<img src=z onerror=alert(4)>",
        "greeting": "<svg onload=alert(5)>hi</svg>",
        "description": "<iframe src=javascript:alert(6)>",
    }
    assert api(server, page, "POST", "/v1/characters", json=card).status_code == 201
    try:
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        new_chat_with(page, "xss-card")
        chat(page, XSS)
        page.locator(".session .rename").first.click()
        page.fill(".rename-input", "<img src=t onerror=alert(7)>")
        page.press(".rename-input", "Enter")
        expect(page.locator("#session-title")).to_have_text("<img src=t onerror=alert(7)>")

        expect(page.locator(".message.user .bubble")).to_have_text([XSS])
        expect(page.locator(".message.assistant .bubble").last).to_have_text(evil_reply)
        expect(page.locator("#character-greeting")).to_have_text(card["greeting"])
        expect(page.locator("#character option:checked")).to_have_text(card["name"])
        for tag in ("img", "script", "svg", "iframe", "b"):
            assert page.locator(f"body {tag}").count() == 0, f"a <{tag}> got into the page"
        page.reload()  # and once more from history
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator(".message.user .bubble")).to_have_text([XSS])
        assert page.locator("body img").count() == 0
    finally:
        api(server, page, "DELETE", "/v1/characters/xss-card")


def test_phone_width_has_no_horizontal_scroll(
    browser: Browser, server: LiveServer, shots: Path
) -> None:
    ctx = browser.new_context(
        viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True
    )
    try:
        page = ctx.new_page()
        open_page(page, server.url)
        sidebar = page.locator("#sidebar")
        expect(sidebar).not_to_be_in_viewport()
        chat(page, "https://example.org/" + "a-very-long-unbroken-path-segment" * 8)
        chat(page, "Short one.")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width} px wide at 375"
        assert page.evaluate("document.body.scrollWidth") <= 375
        page.screenshot(path=str(shots / "phone.png"))

        page.click("#open-sidebar")
        expect(sidebar).to_be_in_viewport(ratio=1)  # slid all the way in
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=str(shots / "phone-sidebar.png"))
        page.locator("#session-list .session-open").first.click()
        expect(sidebar).not_to_be_in_viewport()
    finally:
        ctx.close()


def test_model_down_and_busy_session_are_explained(
    context: BrowserContext, server: LiveServer, fake: FakeOpenAI
) -> None:
    page = context.new_page()
    open_page(page, server.url)
    fake.script(Reply(status=503, error_message="upstream overloaded"))
    chat(page, "are you there?")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("model is not available")
    page.click("#error-close")
    expect(page.locator("#error")).to_be_hidden()

    # A second tab of the same user sends to the session while a reply is streaming.
    fake.script(Reply(text="slow " * 200, delay_s=0.05))
    send(page, "long answer please")
    expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    other = context.new_page()
    open_page(other, server.url)
    send(other, "me too")
    expect(other.locator("#error-text")).to_contain_text("still answering")
    assert other.input_value("#input") == "me too", "a refused message is given back"
    expect(other.locator(".message.user .bubble", has_text="me too")).to_have_count(0)
    page.click("#stop")
    wait_idle(page)


def test_api_key_is_asked_once_and_kept(
    browser: Browser,
    redis_url: str,
    fake: FakeOpenAI,
    tmp_path: Path,
) -> None:
    settings = web_settings(redis_url, fake, tmp_path, auth_keys=f"{API_KEY}=keyuser")
    with LiveServer(settings) as live:
        ctx = browser.new_context()
        try:
            page = ctx.new_page()
            watch = PageWatch(page)
            page.goto(live.url + "/")
            dialog = page.locator("#key-dialog")
            expect(dialog).to_be_visible()
            page.fill("#key-input", "wrong-key")
            page.press("#key-input", "Enter")
            expect(page.locator("#key-reason")).to_contain_text("did not accept")
            page.fill("#key-input", API_KEY)
            page.click("#key-save")
            page.wait_for_selector("body[data-ready=true]")
            expect(dialog).to_be_hidden()
            expect(page.locator("#identity")).to_have_text("Signed in with an API key")
            chat(page, "hello with a key")
            sessions = httpx.get(
                live.url + "/v1/sessions", headers={"Authorization": f"Bearer {API_KEY}"}
            ).json()["sessions"]
            assert [s["message_count"] for s in sessions] == [3]  # greeting, message, reply

            page.reload()
            page.wait_for_selector("body[data-ready=true]")
            expect(dialog).to_be_hidden()
            expect(page.locator(".message.user .bubble")).to_have_text(["hello with a key"])
            assert watch.dialogs == [] and watch.errors == []
        finally:
            ctx.close()
