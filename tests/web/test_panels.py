"""The open chat's panels in a real Chromium: settings (title, memory window, TTL), the
context inspector (what the model sees, with a budget bar), and export / import of one
chat or all of them from the page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.web.conftest import api, chat, user_id, wait_idle

pytestmark = pytest.mark.browser


def current_sid(page: Page) -> str:
    sid: str = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    return sid


def test_chat_settings_change_window_ttl_and_title(page: Page, server: LiveServer) -> None:
    expect(page.locator("#open-settings")).to_be_hidden()  # no chat yet
    chat(page, "hello")
    page.click("#open-settings")
    expect(page.locator("#settings-dialog")).to_be_visible()
    expect(page.locator("#settings-window")).to_be_focused()
    page.fill("#settings-name", "Tea talk")
    page.fill("#settings-window", "3")
    page.fill("#settings-ttl", "90")
    page.click("#settings-save")
    expect(page.locator("#settings-dialog")).to_be_hidden()
    expect(page.locator("#session-title")).to_have_text("Tea talk")
    meta = api(server, page, "GET", f"/v1/sessions/{current_sid(page)}").json()
    assert (meta["window_size"], meta["ttl_s"], meta["title"]) == (3, 5400, "Tea talk")

    # The browser refuses an out-of-range window; Escape closes without a change.
    page.click("#open-settings")
    expect(page.locator("#settings-window")).to_have_value("3")
    page.fill("#settings-window", "50")
    page.click("#settings-save")
    expect(page.locator("#settings-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#settings-dialog")).to_be_hidden()
    meta = api(server, page, "GET", f"/v1/sessions/{current_sid(page)}").json()
    assert meta["window_size"] == 3


def test_context_inspector_shows_what_the_model_sees(
    page: Page, server: LiveServer, fake: FakeOpenAI, shots: Path
) -> None:
    chat(page, "Remember: my cat is called <b>Miso</b>")
    page.click("#open-context")
    dialog = page.locator("#context-dialog")
    expect(dialog).to_be_visible()
    items = dialog.locator(".context-message")
    expect(items.last).to_contain_text("the fake model")
    expect(dialog.locator(".context-message.user")).to_contain_text("my cat is called <b>Miso</b>")
    view = api(server, page, "GET", f"/v1/sessions/{current_sid(page)}/context").json()
    expect(items).to_have_count(len(view["messages"]))
    tokens = view["tokens"]
    expect(page.locator("#context-figures")).to_contain_text(
        f"{tokens['total']:,} of {tokens['budget']:,} tokens"
    )
    width = page.locator("#budget-history").bounding_box()
    assert width is not None and width["width"] > 0, "the budget bar shows the history"
    page.screenshot(path=str(shots / "context.png"))
    page.click("#context-close")
    expect(dialog).to_be_hidden()


def test_export_a_chat_and_everything_then_import(page: Page, server: LiveServer) -> None:
    chat(page, "first chat")
    first = current_sid(page)
    page.click("#new-session")
    chat(page, "second chat")

    with page.expect_download() as info:
        page.click("#export-all")
    everything = json.loads(Path(info.value.path()).read_text())
    assert {s["meta"]["session_id"] for s in everything["sessions"]} >= {first, current_sid(page)}
    assert len(everything["sessions"]) == 2

    page.click("#open-settings")
    with page.expect_download() as info:
        page.click("#export-chat")
    one = json.loads(Path(info.value.path()).read_text())
    assert [s["meta"]["session_id"] for s in one["sessions"]] == [current_sid(page)]
    assert info.value.suggested_filename.endswith(".json")

    # Delete both chats, then import the file of everything: they come back.
    for s in everything["sessions"]:
        api(server, page, "DELETE", f"/v1/sessions/{s['meta']['session_id']}")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".session")).to_have_count(0)
    dump = Path(info.value.path()).with_name("everything.json")
    dump.write_text(json.dumps(everything))
    page.set_input_files("#import-file", str(dump))
    expect(page.locator("#error")).to_contain_text("Imported 2 chats")
    expect(page.locator(".session")).to_have_count(2)
    assert {
        s["session_id"] for s in api(server, page, "GET", "/v1/sessions").json()["sessions"]
    } == {s["meta"]["session_id"] for s in everything["sessions"]}
    assert user_id(page) == everything["sessions"][0]["meta"]["user_id"]

    # A file that is not an export: said so, nothing changes.
    bad = dump.with_name("bad.json")
    bad.write_text('{"format": "something else"}')
    page.set_input_files("#import-file", str(bad))
    expect(page.locator("#error")).to_contain_text("not a chatmem export")
    expect(page.locator(".session")).to_have_count(2)


def test_a_slow_first_token_says_how_much_history_the_model_reads(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    """While the model reads a long prompt (the local model takes seconds), the typing
    indicator says so instead of "typing"; a short one just types."""
    fake.script(Reply(text="ok"), Reply(text="Read it all.", headers_delay_s=2.5))
    chat(page, " ".join(f"word{i}" for i in range(400)))
    page.fill("#input", "and so?")
    page.press("#input", "Enter")
    typing = page.locator("#typing")
    expect(typing).to_contain_text(re.compile(r"is reading [\d,]+ tokens of history"))
    n = int(typing.get_attribute("data-reading") or "0")
    view = api(server, page, "GET", f"/v1/sessions/{current_sid(page)}/context").json()
    assert 400 <= n <= view["tokens"]["total"]
    wait_idle(page)
    expect(page.locator(".message.assistant .bubble").last).to_have_text("Read it all.")

    fake.script(Reply(text="Quick.", headers_delay_s=1.2))
    page.click("#new-session")
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    expect(typing).to_be_visible()
    page.wait_for_timeout(900)
    expect(typing).to_contain_text("is typing")
    wait_idle(page)
