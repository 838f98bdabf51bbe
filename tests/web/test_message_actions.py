"""Per-message actions on the page (SPEC §3b) in a real Chromium: regenerate with
alternatives to swipe (‹ 2/3 ›), continue (also from the "cut off" mark), edit, delete
and fork; from the keyboard, and on a 375 px screen."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.web.conftest import api, chat, open_page, turns_done, wait_idle

pytestmark = pytest.mark.browser


def history(server: LiveServer, page: Page) -> list[dict[str, object]]:
    sid = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    res = api(server, page, "GET", f"/v1/sessions/{sid}/messages")
    assert res.status_code == 200, res.text
    msgs: list[dict[str, object]] = res.json()["messages"]
    return msgs


def click_and_wait_turn(page: Page, selector: str) -> None:
    before = turns_done(page)
    page.locator(selector).click()
    expect(page.locator("body")).to_have_attribute("data-turns", str(before + 1))
    wait_idle(page)


LAST = ".message-list > .message.assistant:last-child"


def test_regenerate_adds_alternatives_to_swipe_through(
    page: Page, server: LiveServer, fake: FakeOpenAI, shots: Path
) -> None:
    fake.script(Reply(text="First answer."), Reply(text="Second answer."))
    chat(page, "Name a colour")
    last = page.locator(LAST)
    expect(last.locator(".bubble")).to_have_text("First answer.")
    # Regenerate shows on the last reply only.
    expect(page.locator(".message.greeting .regenerate")).to_be_hidden()
    click_and_wait_turn(page, f"{LAST} .regenerate")
    expect(last.locator(".bubble")).to_have_text("Second answer.")
    expect(last.locator(".swipe-count")).to_have_text("2/2")
    assert fake.request_count == 2
    page.screenshot(path=str(shots / "alternatives.png"))

    last.locator(".swipe-prev").click()
    expect(last.locator(".swipe-count")).to_have_text("1/2")
    expect(last.locator(".bubble")).to_have_text("First answer.")
    expect(last.locator(".swipe-prev")).to_be_disabled()
    assert history(server, page)[-1]["content"] == "First answer.", "the selection is stored"

    # The selection survives a reload; swiping on is from the keyboard.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(last.locator(".swipe-count")).to_have_text("1/2")
    last.locator(".swipe-next").focus()
    page.keyboard.press("Enter")
    expect(last.locator(".swipe-count")).to_have_text("2/2")
    expect(last.locator(".bubble")).to_have_text("Second answer.")
    assert page.locator(".message.assistant").count() == 2, "greeting and one reply"


def test_continue_from_the_cut_off_mark_extends_the_reply(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    fake.script(
        Reply(text="Once upon a time", finish_reason="length"),
        Reply(text=" there was a fox."),
    )
    chat(page, "Tell me a story")
    last = page.locator(LAST)
    expect(last.locator(".tag")).to_have_text("cut off")
    click_and_wait_turn(page, f"{LAST} .tag-continue")
    expect(last.locator(".bubble")).to_have_text("Once upon a time there was a fox.")
    expect(last.locator(".tag")).to_have_count(0)
    # The model saw the cut reply as its last, unfinished message.
    sent = fake.chat_bodies[-1]["messages"]
    assert sent[-1] == {"role": "assistant", "content": "Once upon a time"}
    assert history(server, page)[-1]["content"] == "Once upon a time there was a fox."
    assert page.locator(".message").count() == 3


def test_continue_button_on_the_last_reply(page: Page, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="Part one."), Reply(text=" Part two."))
    chat(page, "go")
    click_and_wait_turn(page, f"{LAST} .continue")
    expect(page.locator(f"{LAST} .bubble")).to_have_text("Part one. Part two.")


def test_edit_a_message_from_the_keyboard(page: Page, server: LiveServer) -> None:
    chat(page, "I like tea")
    mine = page.locator(".message.user").last
    mine.locator(".edit").focus()
    page.keyboard.press("Enter")
    box = mine.locator(".edit-input")
    expect(box).to_be_focused()
    expect(box).to_have_value("I like tea")
    # Escape gives up, leaving the message as it was.
    page.keyboard.press("Escape")
    expect(mine.locator(".edit-input")).to_have_count(0)
    expect(mine.locator(".bubble")).to_have_text("I like tea")

    mine.locator(".edit").click()
    box.fill("I like <b>green</b> tea")
    page.keyboard.press("Control+Enter")
    expect(mine.locator(".edit-input")).to_have_count(0)
    expect(mine.locator(".bubble")).to_have_text("I like <b>green</b> tea")
    users = [m for m in history(server, page) if m["role"] == "user"]
    assert users[-1]["content"] == "I like <b>green</b> tea"


def test_delete_a_message_asks_once_more_in_place(page: Page, server: LiveServer) -> None:
    chat(page, "delete me")
    assert len(history(server, page)) == 3
    mine = page.locator(".message.user").last
    delete = mine.locator(".delete")
    delete.click()
    expect(delete).to_have_text("Delete?")
    assert len(history(server, page)) == 3, "one click does not delete"
    delete.click()
    expect(page.locator(".message.user")).to_have_count(0)
    assert [m["role"] for m in history(server, page)] == ["assistant", "assistant"]


def test_fork_opens_a_new_chat_with_the_history_up_to_that_message(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="Answer one."), Reply(text="Answer two."))
    chat(page, "question one")
    chat(page, "question two")
    original = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    expect(page.locator(".session")).to_have_count(1)
    page.locator(".message.assistant").nth(1).locator(".fork").click()
    expect(page.locator(".session")).to_have_count(2)
    expect(page.locator(".message")).to_have_count(3)
    expect(page.locator(".message .bubble").last).to_have_text("Answer one.")
    forked = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    assert forked != original
    meta = api(server, page, "GET", f"/v1/sessions/{forked}").json()
    assert meta["forked_from"] == original
    assert (
        len(api(server, page, "GET", f"/v1/sessions/{original}/messages").json()["messages"]) == 5
    )


def test_actions_fit_a_phone_screen(
    context: BrowserContext, server: LiveServer, fake: FakeOpenAI, shots: Path
) -> None:
    page = context.new_page()
    page.set_viewport_size({"width": 375, "height": 720})
    open_page(page, server.url)
    fake.script(Reply(text="A short answer."), Reply(text="Another answer."))
    chat(page, "hi")
    click_and_wait_turn(page, f"{LAST} .regenerate")
    last = page.locator(LAST)
    expect(last.locator(".swipe-count")).to_have_text("2/2")
    for name in ("swipe-prev", "regenerate", "continue", "edit", "delete", "fork"):
        box = last.locator(f".{name}").bounding_box()
        assert box is not None, name
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, name
        assert box["height"] >= 28, f"{name} is too small to tap"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "the page scrolls sideways"
    page.screenshot(path=str(shots / "actions-375.png"))
