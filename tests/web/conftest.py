"""What the page tests share: one server and one browser per test module, a fresh
browser context (so a fresh localStorage, with a user id of its own) per test, and
helpers that drive the page as a user does.

The helpers are imported by the test modules; the fixtures come to them as fixtures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect, sync_playwright

from chatmem.config import ModelPrice
from tests.api_support import make_test_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DEFAULT_REPLY = "Hello! I am the fake model, streaming this reply to you one word at a time."
LUNA_GREETING = "Hey, it's Luna! How's your day going? I'm all ears."


WEB_REPLY = Reply(text=DEFAULT_REPLY, delay_s=0.03)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The page's model streams DEFAULT_REPLY word by word unless a test says otherwise
    (the `fake` fixture of tests/conftest.py reads the marker)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("fake_model") is None:
            item.add_marker(pytest.mark.fake_model(default=WEB_REPLY))


def web_settings(redis_url: str, fake: FakeOpenAI, data_dir: Path, **kwargs: Any) -> Any:
    prices = {"fake-model": ModelPrice(input_per_1m=2.5, output_per_1m=10.0)}
    return make_test_settings(redis_url, fake.base_url, data_dir, llm={"prices": prices}, **kwargs)


@pytest.fixture(scope="module")
def server(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = web_settings(redis_url, fake_model, tmp_path_factory.mktemp("web"))
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (make chromium installs Debian's)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("CHATMEM_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class PageWatch:
    """What a page did that it must not: native dialogs and uncaught script errors."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def context(browser: Browser, fake: FakeOpenAI) -> Iterator[BrowserContext]:
    fake.reset()
    ctx = browser.new_context(viewport={"width": 1100, "height": 720})
    ctx.set_default_timeout(10_000)
    # Each test its own user, as if it had set one on the page ("Change" in the sidebar);
    # without one the page is the server's default user (tests/web/test_identity.py).
    ctx.add_init_script(
        f"if (!localStorage.getItem('chatmem.user')) "
        f"localStorage.setItem('chatmem.user', 'web-test-{uuid.uuid4().hex[:12]}')"
    )
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext, server: LiveServer) -> Iterator[Page]:
    p = context.new_page()
    watch = PageWatch(p)
    open_page(p, server.url)
    yield p
    assert watch.dialogs == [], "the page opened a native dialog"
    assert watch.errors == [], "the page threw"


def open_page(page: Page, url: str, path: str = "/") -> None:
    page.goto(url + path)
    page.wait_for_selector("body[data-ready=true]")


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def turns_done(page: Page) -> int:
    return int(page.evaluate("document.body.dataset.turns || '0'"))


def chat(page: Page, text: str) -> None:
    """Send a message and wait until its turn is over (reply, error or refusal)."""
    before = turns_done(page)
    send(page, text)
    # (wait_for_function would need 'unsafe-eval', which the page's CSP rightly refuses)
    expect(page.locator("body")).to_have_attribute("data-turns", str(before + 1))
    wait_idle(page)


def wait_idle(page: Page) -> None:
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()


def user_id(page: Page) -> str:
    uid: str = page.evaluate("localStorage.getItem('chatmem.user')")
    return uid


def api(server: LiveServer, page: Page, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"X-User-Id": user_id(page)}
    return httpx.request(method, server.url + path, headers=headers, timeout=10, **kwargs)


def new_chat_with(page: Page, character_id: str) -> None:
    page.select_option("#character", character_id)
    page.click("#new-session")
    expect(page.locator("#messages .message.greeting")).to_have_count(1)
