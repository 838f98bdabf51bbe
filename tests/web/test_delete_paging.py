"""Deleting a message on the page, then loading older messages (SPEC §3b): the older
messages' seqs move up by one on a delete, and the page's "load older" cursor follows
them: no message is skipped."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.live_server import LiveServer
from tests.web.conftest import open_page, user_id

pytestmark = pytest.mark.browser

TURNS = 26  # 52 messages and the greeting: more than the page's first 50


def test_load_older_after_a_delete_skips_nothing(page: Page, server: LiveServer) -> None:
    headers = {"X-User-Id": user_id(page)}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        r = http.post("/v1/sessions", json={})
        assert r.status_code == 201, r.text
        sid = r.json()["session"]["session_id"]
        for i in range(TURNS):
            r = http.post(f"/v1/sessions/{sid}/messages", json={"content": f"message {i}"})
            assert r.status_code == 200, r.text
    page.evaluate(f"localStorage.setItem('chatmem.sessionId', '{sid}')")
    open_page(page, server.url)
    msgs = page.locator("#messages .message")
    expect(msgs).to_have_count(50)
    expect(page.locator("#load-older")).to_be_visible()

    delete = page.locator(".message.user").last.locator(".delete")
    delete.click()
    delete.click()  # the second press confirms
    expect(msgs).to_have_count(49)
    page.click("#load-older")
    expect(msgs).to_have_count(2 * TURNS)  # all but the deleted one
    users = page.locator(".message.user .bubble").all_text_contents()
    assert users == [f"message {i}" for i in range(TURNS - 1)]
    expect(msgs.first).to_have_class("message assistant greeting")
