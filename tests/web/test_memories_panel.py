"""The Memories panel in a real Chromium: the long-term memories of the open chat's
character (`/v1/memories`) listed, edited, deleted and added from the page, their text
shown as text, never as HTML."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.live_server import LiveServer
from tests.web.conftest import api, chat

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"


def character_of_chat(page: Page, server: LiveServer) -> str:
    sid = page.evaluate("localStorage.getItem('chatmem.sessionId')")
    cid: str = api(server, page, "GET", f"/v1/sessions/{sid}").json()["character_id"]
    return cid


def memories(server: LiveServer, page: Page, cid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api(
        server, page, "GET", "/v1/memories", params={"character_id": cid}
    ).json()["memories"]
    return found


def test_memories_panel_lists_edits_deletes_and_adds(page: Page, server: LiveServer) -> None:
    chat(page, "hello")
    cid = character_of_chat(page, server)
    made = api(
        server, page, "POST", "/v1/memories", json={"character_id": cid, "text": "Likes green tea"}
    )
    assert made.status_code == 201
    mid = made.json()["memory_id"]

    page.click("#open-memories")
    dialog = page.locator("#memories-dialog")
    expect(dialog).to_be_visible()
    item = dialog.locator(f".memory[data-memory-id='{mid}']")
    expect(item.locator(".memory-text")).to_have_text("Likes green tea")

    # Edit it: the page shows the new text and the server has it.
    item.locator(".memory-edit").click()
    expect(item.locator(".memory-input")).to_be_focused()
    item.locator(".memory-input").fill("Likes jasmine tea")
    item.locator(".memory-save").click()
    expect(item.locator(".memory-text")).to_have_text("Likes jasmine tea")
    assert [m["text"] for m in memories(server, page, cid)] == ["Likes jasmine tea"]

    # Add one from the panel: listed (newest first) and stored for this character.
    page.fill("#memory-new", "Has a sister called Mei")
    page.click("#memory-add")
    expect(dialog.locator(".memory .memory-text")).to_have_text(
        ["Has a sister called Mei", "Likes jasmine tea"]
    )
    assert {m["text"] for m in memories(server, page, cid)} == {
        "Has a sister called Mei",
        "Likes jasmine tea",
    }
    expect(page.locator("#memory-new")).to_have_value("")

    # Delete the first one: gone from the page and from the server.
    item.locator(".memory-delete").click()
    expect(item).to_have_count(0)
    expect(dialog.locator(".memory")).to_have_count(1)
    assert [m["text"] for m in memories(server, page, cid)] == ["Has a sister called Mei"]

    # A server refusal (an empty-after-trim edit is not sent; too long is refused) is
    # said in the panel and changes nothing.
    rest = dialog.locator(".memory").first
    rest.locator(".memory-edit").click()
    rest.locator(".memory-input").evaluate("el => { el.maxLength = 1000; }")
    rest.locator(".memory-input").fill("x" * 600)
    rest.locator(".memory-save").click()
    expect(page.locator("#memories-error")).to_be_visible()
    assert [m["text"] for m in memories(server, page, cid)] == ["Has a sister called Mei"]

    page.click("#memories-close")
    expect(dialog).to_be_hidden()


def test_memory_text_is_shown_as_text_not_html(page: Page, server: LiveServer) -> None:
    chat(page, "hi")
    cid = character_of_chat(page, server)
    api(server, page, "POST", "/v1/memories", json={"character_id": cid, "text": XSS})
    page.click("#open-memories")
    text = page.locator("#memories-dialog .memory-text")
    expect(text).to_have_text(XSS)
    expect(page.locator("#memories-dialog img")).to_have_count(0)
    # (the page fixture fails the test on any native dialog, so alert(1) never ran)
