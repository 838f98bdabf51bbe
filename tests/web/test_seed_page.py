"""Seed 002's own page, cut out of its document, in a real headless Chromium against chatmem.

The document gives the page's HTML (the `chat-container`) and its `sendMessage()` (an
`EventSource` on `/chat/stream`, the picked role sent with every message); both are cut
out of `../shared/seeds/002_*.txt` at run time (tests/seed_docs.py), never copied here.
The few things it uses but never defines are supplied below, as the document's reader
would write them: `userId`, `currentSessionId`, `startNewChat()` (`POST /chat/start`),
`addMessage()`, the typing indicator and `scrollToBottom()`. The page is served from
chatmem's own origin (a Playwright route), so its relative URLs reach the real server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.fake_openai import FakeOpenAI
from tests.live_server import LiveServer
from tests.seed_docs import one_block, require_seed_document
from tests.web.conftest import WEB_REPLY, PageWatch

pytestmark = pytest.mark.browser

PAGE_PATH = "/seed-002-page.html"
USER_ID = "seed_page_user"
REPLY = WEB_REPLY.text
ROLE_PROMPTS = {
    "assistant": "你是一个友善、专业的AI助手",
    "teacher": "你是一位经验丰富的老师",
    "programmer": "你是一位资深的程序员",
}

# What the document's page uses and never defines.
HELPERS = """
const userId = %(user)s;
let currentSessionId = null;

function addMessage(role, content) {
    const el = document.createElement('div');
    el.className = 'message ' + role;
    el.textContent = content;
    document.getElementById('chatMessages').appendChild(el);
    return el;
}
const typing = () => document.getElementById('typingIndicator');
function showTypingIndicator() { typing().style.display = 'block'; }
function hideTypingIndicator() { typing().style.display = 'none'; }
function scrollToBottom() {
    const box = document.getElementById('chatMessages');
    box.scrollTop = box.scrollHeight;
}
async function startNewChat() {
    const res = await fetch(`/chat/start?user_id=${userId}`, {method: 'POST'});
    const data = await res.json();
    currentSessionId = data.session_id;
    document.getElementById('sessionId').textContent = currentSessionId;
    addMessage('assistant', data.welcome_message);
}
"""


def seed_page() -> str:
    doc = require_seed_document("002")
    html = one_block(doc, "html", 'class="chat-container"', 'id="roleSelect"')
    script = one_block(doc, "javascript", "async function sendMessage()", "EventSource")
    helpers = HELPERS % {"user": json.dumps(USER_ID)}
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>seed 002</title>'
        "<style>#typingIndicator { display: none; }</style></head><body>"
        f"{html}<script>{helpers}\n{script}</script></body></html>"
    )


@pytest.fixture
def seed_page_tab(context: BrowserContext, server: LiveServer, fake: FakeOpenAI) -> Iterator[Page]:
    page_html = seed_page()
    fake.reset(default=WEB_REPLY)  # streamed word by word (`context` resets the fake)
    tab = context.new_page()
    tab.route(
        server.url + PAGE_PATH,
        lambda route: route.fulfill(body=page_html, content_type="text/html; charset=utf-8"),
    )
    watch = PageWatch(tab)
    tab.goto(server.url + PAGE_PATH)
    yield tab
    assert watch.errors == [], "the document's page threw"


def fetch_json(tab: Page, method: str, path: str) -> Any:
    """A request from the page itself (same origin, as its own code makes them)."""
    return tab.evaluate(
        "async ([m, p]) => { const r = await fetch(p, {method: m});"
        " return {status: r.status, body: await r.json()}; }",
        [method, path],
    )


def test_seed002_page_start_send_with_each_role_history_delete(
    seed_page_tab: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    tab = seed_page_tab
    tab.click("#startButton")
    expect(tab.locator("#sessionId")).not_to_have_text("未连接")
    sid = tab.locator("#sessionId").text_content() or ""
    expect(tab.locator(".message.assistant")).to_have_text(
        ["你好！我是你的AI助手，有什么可以帮助你的吗？"]
    )

    # One session; the user picks each role in turn, as the page's selector lets them.
    for n, role in enumerate(("assistant", "teacher", "programmer"), start=1):
        tab.select_option("#roleSelect", role)
        tab.fill("#messageInput", f"第{n}个问题")
        tab.click("#sendButton")
        expect(tab.locator("#messageInput")).to_have_value("")
        replies = tab.locator(".message.assistant")
        expect(replies).to_have_count(1 + n)
        # Streamed into the page chunk by chunk, until the `end` frame.
        expect(replies.nth(n)).to_have_text(REPLY)
        expect(tab.locator("#typingIndicator")).to_be_hidden()
        sent = fake.chat_bodies[-1]["messages"]
        assert sent[0]["role"] == "system"
        assert sent[0]["content"].startswith(ROLE_PROMPTS[role]), (role, sent[0])
        assert sent[-1] == {"role": "user", "content": f"第{n}个问题"}
        assert len(sent) == 1 + 1 + 2 * (n - 1) + 1  # system, greeting, earlier turns, new
    expect(tab.locator(".message.user")).to_have_text(["第1个问题", "第2个问题", "第3个问题"])

    history = fetch_json(tab, "GET", f"/chat/history?user_id={USER_ID}&session_id={sid}")
    assert history["status"] == 200
    assert [(m["role"], m["content"]) for m in history["body"]["messages"]] == [
        ("assistant", "你好！我是你的AI助手，有什么可以帮助你的吗？"),
        ("user", "第1个问题"),
        ("assistant", REPLY),
        ("user", "第2个问题"),
        ("assistant", REPLY),
        ("user", "第3个问题"),
        ("assistant", REPLY),
    ]
    sessions = fetch_json(tab, "GET", f"/chat/sessions?user_id={USER_ID}")["body"]["sessions"]
    assert [(s["session_id"], s["role"]) for s in sessions] == [(sid, "programmer")]

    deleted = fetch_json(tab, "DELETE", f"/chat/session/{sid}?user_id={USER_ID}")
    assert deleted == {"status": 200, "body": {"message": "会话已删除", "session_id": sid}}
    assert fetch_json(tab, "GET", f"/chat/sessions?user_id={USER_ID}")["body"]["total"] == 0
    gone = fetch_json(tab, "GET", f"/chat/history?user_id={USER_ID}&session_id={sid}")
    assert gone == {"status": 200, "body": {"session_id": sid, "messages": [], "total": 0}}
