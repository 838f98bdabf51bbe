"""The OpenAI route's agent loop on the page (SPEC §4) in a real Chromium: an assistant
message that only calls tools shows "called tool NAME(args)" (no empty bubble), a tool
message a folded "tool result"; both as text: markup in a call's arguments or a tool's
result is shown, never inserted."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai_tools import ToolCall
from tests.live_server import LiveServer
from tests.web.conftest import open_page, user_id

pytestmark = pytest.mark.browser

EVIL_ARGS = '{"city": "<img src=x id=evil-args>"}'
EVIL_RESULT = "<b id=evil-result>sunny</b>, 21 C\n<script>document.title='pwned'</script>"


def _agent_loop(server: LiveServer, page: Page, fake: FakeOpenAI, sid: str) -> None:
    """A tool-calling loop through the OpenAI route, stored in session `sid`."""
    headers = {"X-User-Id": user_id(page), "X-Session-Id": sid}
    call = ToolCall("get_weather", EVIL_ARGS)
    fake.script(
        Reply(text="", tool_calls=[call], finish_reason="tool_calls"), Reply(text="It is sunny.")
    )
    convo: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    url = f"{server.url}/v1/chat/completions"
    for _ in range(2):
        r = httpx.post(url, json={"model": "m", "messages": convo}, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        convo.append(r.json()["choices"][0]["message"])
        if len(convo) == 2:
            convo.append({"role": "tool", "tool_call_id": call.id, "content": EVIL_RESULT})


def test_tool_calls_and_results_show_compact_as_text(
    page: Page, server: LiveServer, fake: FakeOpenAI, shots: Path
) -> None:
    _agent_loop(server, page, fake, "web-tools")
    page.evaluate("localStorage.setItem('chatmem.sessionId', 'web-tools')")
    open_page(page, server.url)
    msgs = page.locator("#messages .message")
    expect(msgs).to_have_count(5)  # greeting, question, calls, result, answer

    calls = msgs.nth(2)
    expect(calls).to_have_class("message assistant")
    expect(calls.locator(".bubble")).to_be_hidden()  # no empty bubble
    expect(calls.locator(".tool-call")).to_have_text(
        'called tool get_weather({"city":"<img src=x id=evil-args>"})'
    )

    result = msgs.nth(3)
    expect(result).to_have_class("message tool")
    summary = result.locator("summary")
    expect(summary).to_contain_text("tool result")
    expect(summary).to_contain_text("<b id=evil-result>sunny</b>, 21 C <script>")
    expect(result.locator(".tool-text")).to_be_hidden()  # folded until opened
    summary.click()
    expect(result.locator(".tool-text")).to_have_text(EVIL_RESULT)
    expect(msgs.nth(4).locator(".bubble")).to_have_text("It is sunny.")

    # Text, never markup: nothing of the arguments or the result became an element.
    assert page.locator("#evil-args, #evil-result, #messages img, #messages b").count() == 0
    assert page.title() != "pwned"
    page.screenshot(path=str(shots / "tool-messages.png"))
