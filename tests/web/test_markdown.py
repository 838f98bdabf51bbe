"""Markdown in the page, in a real Chromium: rendered at the end of a reply and from
history, code highlighted with a copy button, and no payload in any Markdown construct
ever runs or reaches the DOM as markup."""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.web.conftest import chat, new_chat_with, open_page

pytestmark = pytest.mark.browser

RICH_REPLY = (
    "Here is **bold**, *italics* and a list:\n\n- one\n- two\n\n"
    "| name | value |\n|---|---|\n| alpha | 1 |\n\n"
    '```python\ndef greet(name):\n    return f"hi {name}"\n```\n\n'
    "See [the docs](https://example.com/docs)."
)

# One payload per Markdown construct; each would set window.pwned or call alert().
XSS_REPLY = "\n\n".join(
    [
        "<script>window.pwned = 1</script>",
        '<img src=x onerror="window.pwned = 2">',
        "[a link](javascript:window.pwned=3)",
        "![an image](javascript:window.pwned=4)",
        '![an image](x "t\\" onerror=\\"window.pwned=5")',
        "| head <img src=x onerror=alert(6)> |\n|---|\n| [cell](javascript:alert(7)) |",
        '```html\n<img src=x onerror="window.pwned=8"><script>alert(9)</script>\n```',
        "`<svg onload=alert(10)>`",
        '<a href="javascript:alert(11)">raw link</a>',
        '**<iframe src="javascript:alert(12)"></iframe>**',
    ]
)


def test_a_reply_is_rendered_when_done_and_from_history(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text=RICH_REPLY, chunks=12))
    new_chat_with(page, "luna")
    chat(page, "show me some markdown")
    check_rich(page)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    check_rich(page)


def check_rich(page: Page) -> None:
    bubble = page.locator(".message.assistant .bubble").last
    expect(bubble).to_have_class("bubble md")
    expect(bubble.locator("strong")).to_have_text("bold")
    expect(bubble.locator("li")).to_have_text(["one", "two"])
    expect(bubble.locator("table td")).to_have_text(["alpha", "1"])
    expect(bubble.locator("a")).to_have_attribute("href", "https://example.com/docs")
    keyword = bubble.locator("pre.code .hl-k").first
    expect(keyword).to_have_text("def")
    colour = keyword.evaluate("e => getComputedStyle(e).color")
    plain = bubble.locator("pre.code").evaluate("e => getComputedStyle(e).color")
    assert colour != plain, "the keyword is not highlighted"
    expect(bubble.locator(".code-lang")).to_have_text("python")
    expect(bubble.locator(".copy-code")).to_have_count(1)


def test_copy_button_copies_the_code(
    context: BrowserContext, server: LiveServer, fake: FakeOpenAI
) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    open_page(page, server.url)
    fake.script(Reply(text=RICH_REPLY))
    new_chat_with(page, "luna")
    chat(page, "code please")
    button = page.locator(".copy-code").last
    button.click()
    expect(button).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == 'def greet(name):\n    return f"hi {name}"'


def test_xss_payloads_in_markdown_never_run(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text=XSS_REPLY, chunks=7))
    new_chat_with(page, "luna")
    chat(page, "[x](javascript:alert(13)) <img src=x onerror=alert(14)>")
    for attempt in range(2):
        bubble = page.locator(".message.assistant .bubble").last
        expect(bubble).to_have_class("bubble md")
        expect(bubble.locator("table")).to_have_count(1)
        expect(bubble.locator("pre.code")).to_have_count(1)
        assert page.evaluate("window.pwned === undefined")
        messages = page.locator("#messages")
        for tag in ("script", "img", "svg", "iframe"):
            assert messages.locator(tag).count() == 0, f"a <{tag}> got into the page"
        hrefs = messages.locator("a").evaluate_all("els => els.map(e => e.href)")
        assert all(h.startswith(("http:", "https:")) for h in hrefs), hrefs
        handlers = messages.evaluate(
            "m => [...m.querySelectorAll('*')].flatMap(e => [...e.attributes]"
            ".map(a => a.name)).filter(n => n.startsWith('on'))"
        )
        assert handlers == []
        # The code block shows the payload as text.
        expect(bubble.locator("pre.code")).to_contain_text("<script>alert(9)</script>")
        if attempt == 0:
            page.reload()  # and once more from history
            page.wait_for_selector("body[data-ready=true]")
