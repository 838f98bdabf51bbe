"""The page with a server whose default character is Luna (as with the bundled local
model): it is preselected; a reply cut at its length limit is marked "cut off"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.web.conftest import chat, web_settings

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = web_settings(redis_url, fake_model, tmp_path_factory.mktemp("web-defaults"))
    settings = settings.model_copy(update={"default_character": "luna"})
    with LiveServer(settings) as live:
        yield live


def test_the_servers_default_character_is_preselected(page: Page) -> None:
    expect(page.locator("#character")).to_have_value("luna")
    page.click("#new-session")
    expect(page.locator("#messages .message.greeting .bubble")).to_contain_text("Luna")
    expect(page.locator("#session-character, #session-title").first).to_contain_text("Luna")


def test_a_reply_cut_at_its_length_limit_is_marked(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    fake.script(
        Reply(text="A complete reply."),
        Reply(text="This reply runs on and on until it", finish_reason="length"),
    )
    chat(page, "hello")
    expect(page.locator(".message.assistant .tag")).to_have_count(0)
    chat(page, "tell me a long story")
    last = page.locator(".message.assistant").last
    expect(last.locator(".tag")).to_have_text("cut off")
    expect(last).to_have_class("message assistant cut-off")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    last = page.locator(".message.assistant").last
    expect(last.locator(".tag")).to_have_text("cut off")
    assert page.locator(".message.assistant .tag").count() == 1


def test_first_message_titles_the_chat_and_search_filters_the_sidebar(
    page: Page, fake: FakeOpenAI
) -> None:
    page.click("#new-session")
    expect(page.locator("#session-title")).to_have_text("Luna")
    chat(page, "Plan a weekend in Kyoto\nwith temples and tea")
    expect(page.locator("#session-title")).to_have_text("Plan a weekend in Kyoto")
    expect(page.locator(".session .session-title").first).to_have_text("Plan a weekend in Kyoto")
    fake.script(Reply(text="Bananas are berries, botanically."))
    page.click("#new-session")
    chat(page, "Tell me a fruit fact")
    sessions = page.locator("#session-list .session")
    expect(sessions).to_have_count(2)

    page.fill("#session-search", "kyoto")  # a title, whatever the case
    expect(sessions.locator(".session-title")).to_have_text(["Plan a weekend in Kyoto"])
    page.fill("#session-search", "berries")  # a preview (the last message)
    expect(sessions.locator(".session-title")).to_have_text(["Tell me a fruit fact"])
    page.fill("#session-search", "no such words")
    expect(sessions).to_have_count(0)
    expect(page.locator("#sessions-empty")).to_have_text("No chats match.")
    page.fill("#session-search", "")
    expect(sessions).to_have_count(2)
