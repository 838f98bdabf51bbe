"""One identity in open mode: the page, `chatmem chat` and `chatmem sessions` are the
server's default user unless told otherwise; the page lets the user set another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.fake_openai import FakeOpenAI
from tests.live_server import LiveServer
from tests.web.conftest import PageWatch, chat, open_page

pytestmark = pytest.mark.browser

ALICE = f"alice-{uuid.uuid4().hex[:8]}"  # the test Redis is shared: a user of its own


@pytest.fixture
def plain_page(browser: Browser, server: LiveServer, fake: FakeOpenAI) -> Iterator[Page]:
    """A page as a first-time visitor has it: no user id set."""
    fake.reset()
    ctx = browser.new_context(viewport={"width": 1100, "height": 720})
    ctx.set_default_timeout(10_000)
    page = ctx.new_page()
    watch = PageWatch(page)
    open_page(page, server.url)
    yield page
    assert watch.dialogs == [] and watch.errors == []
    ctx.close()


def cli_session_ids(url: str, *user: str) -> set[str]:
    """`chatmem sessions` in a process of its own (Playwright's loop holds this thread)."""
    cmd = [sys.executable, "-m", "chatmem", "sessions", "--url", url, "--json", *user]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert res.returncode == 0, res.stderr
    return {s["session_id"] for s in json.loads(res.stdout)}


def test_page_cli_and_server_share_the_default_user(plain_page: Page, server: LiveServer) -> None:
    page = plain_page
    expect(page.locator("#identity")).to_have_text("You are local")
    chat(page, "hello from the page")
    sid = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    assert sid in cli_session_ids(server.url)  # `chatmem sessions`, no --user

    # Another id, set on the page: its own chats; kept across a reload.
    page.click("#change-user")
    page.fill("#user-input", "bad id!")
    page.click("#user-save")
    expect(page.locator("#user-form")).to_be_visible()  # refused, nothing changed
    page.fill("#user-input", ALICE)
    page.click("#user-save")
    expect(page.locator("#identity")).to_have_text(f"You are {ALICE}")
    expect(page.locator("#session-list .session")).to_have_count(0)
    chat(page, "hello as alice")
    alice_sid = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    assert cli_session_ids(server.url, "--user", ALICE) == {alice_sid}
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#identity")).to_have_text(f"You are {ALICE}")

    # Empty: back to the default user and its chat.
    page.click("#change-user")
    page.fill("#user-input", "")
    page.click("#user-save")
    expect(page.locator("#identity")).to_have_text("You are local")
    expect(page.locator(f'#session-list .session[data-session-id="{sid}"]')).to_have_count(1)
