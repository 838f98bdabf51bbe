"""Markdown to safe HTML (chatmem/rendering.py) and POST /v1/render."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from chatmem.rendering import highlight_css, render_markdown

H = {"X-User-Id": "render-user"}
WEB = Path(__file__).resolve().parent.parent / "src" / "chatmem" / "web"

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[relative](/v1/me)",
    "[protocol-relative](//evil.example/x)",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![pic](javascript:alert(1))",
    '![pic](http://example.com/x.png "t\\" onerror=\\"alert(1)")',
    "| a | <img src=x onerror=alert(1)> |\n|---|---|\n| <script>x</script> | [l](vbscript:x) |",
    "```html\n<script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "<a href='javascript:alert(1)'>x</a>",
    "<svg onload=alert(1)>",
    "<iframe src=//evil.example></iframe>",
    "<div style='background:url(javascript:alert(1))'>x</div>",
]


SAFE_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s",
    "code", "pre", "blockquote", "ul", "ol", "li", "a", "span",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_no_markup_from_a_message_survives(payload: str) -> None:
    parser = Elements()
    parser.feed(render_markdown(payload))
    for tag, attrs in parser.found:
        assert tag in SAFE_TAGS
        assert set(attrs) <= {"href", "title", "rel", "class", "start", "data-lang"}
        href = (attrs.get("href") or "").strip().lower()
        assert tag != "a" or href.startswith(("http:", "https:", "mailto:"))


def test_markdown_is_rendered() -> None:
    html = render_markdown(
        "# Title\n\n**bold** *it* ~~gone~~ `code`\n\n- one\n- two\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n[site](https://example.com)"
    )
    for part in ("<h1>Title</h1>", "<strong>bold</strong>", "<em>it</em>", "<s>gone</s>",
                 "<code>code</code>", "<li>one</li>", "<table>", "<td>1</td>"):  # fmt: skip
        assert part in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">site</a>' in html


def test_code_is_highlighted_and_escaped() -> None:
    html = render_markdown('```python\ndef f():\n    return "<b>"\n```')
    assert '<pre class="code" data-lang="python">' in html
    assert '<span class="hl-k">def</span>' in html
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_unknown_language_is_plain_escaped_code() -> None:
    html = render_markdown("```nosuchlang\n<x> & y\n```")
    assert "&lt;x&gt; &amp; y" in html and "hl-" not in html


def test_images_become_links() -> None:
    html = render_markdown("![a cat](https://example.com/cat.png)")
    assert "<img" not in html
    assert 'class="image-link" href="https://example.com/cat.png"' in html


def test_highlight_css_is_the_generated_one() -> None:
    assert (WEB / "highlight.css").read_text() == highlight_css()


async def test_render_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/render", json={"texts": ["**a**", "<script>x</script>"]}, headers=H)
    assert r.status_code == 200
    escaped = "<p>&lt;script&gt;x&lt;/script&gt;</p>\n"
    assert r.json() == {"html": ["<p><strong>a</strong></p>\n", escaped]}


@pytest.mark.parametrize(
    "body", [{"texts": ["a"] * 101}, {"texts": "a"}, {"texts": [1]}, {"text": ["a"]}, {}]
)
async def test_render_route_refuses_bad_bodies(client: httpx.AsyncClient, body: object) -> None:
    r = await client.post("/v1/render", json=body, headers=H)
    assert r.status_code == 422
    assert "error" in r.json()
