"""The chat settings panel's newer fields in a real Chromium: the chat's temperature
(what the model receives) and the user's display name (what `{{user}}` becomes in
greetings and prompts), also on a 375 px screen."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.fake_openai import FakeOpenAI
from tests.live_server import LiveServer
from tests.web.conftest import api, chat, new_chat_with, open_page
from tests.web.test_panels import current_sid

pytestmark = pytest.mark.browser


def save_settings(page: Page, **fields: str) -> None:
    page.click("#open-settings")
    expect(page.locator("#settings-dialog")).to_be_visible()
    for name, value in fields.items():
        page.fill(f"#settings-{name.replace('_', '-')}", value)
    page.click("#settings-save")
    expect(page.locator("#settings-dialog")).to_be_hidden()


def test_the_chat_temperature_reaches_the_model(
    page: Page, server: LiveServer, fake: FakeOpenAI
) -> None:
    chat(page, "hello")
    default = fake.chat_bodies[-1]["temperature"]
    page.click("#open-settings")
    expect(page.locator("#settings-temperature")).to_have_value("")  # the character's
    page.keyboard.press("Escape")

    save_settings(page, temperature="1.3")
    meta = api(server, page, "GET", f"/v1/sessions/{current_sid(page)}").json()
    assert meta["temperature"] == 1.3
    chat(page, "again")
    assert fake.chat_bodies[-1]["temperature"] == 1.3
    page.click("#open-settings")
    expect(page.locator("#settings-temperature")).to_have_value("1.3")
    # Out of range: the browser refuses it and nothing is sent.
    page.fill("#settings-temperature", "2.5")
    page.click("#settings-save")
    expect(page.locator("#settings-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    meta = api(server, page, "GET", f"/v1/sessions/{current_sid(page)}").json()
    assert meta["temperature"] == 1.3

    save_settings(page, temperature="")  # empty: back to the character's
    meta = api(server, page, "GET", f"/v1/sessions/{current_sid(page)}").json()
    assert meta["temperature"] is None
    chat(page, "and now")
    assert fake.chat_bodies[-1]["temperature"] == default


def test_your_name_greets_and_prompts(page: Page, server: LiveServer, fake: FakeOpenAI) -> None:
    cid = f"pip-{uuid.uuid4().hex[:6]}"
    pip = {
        "id": cid,
        "name": "Pip",
        "system_prompt": "You are {{char}}, talking with {{user}}.",
        "greeting": "Hi {{user}}, I am {{char}}.",
    }
    assert api(server, page, "POST", "/v1/characters", json=pip).status_code == 201
    try:
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        new_chat_with(page, cid)
        expect(page.locator(".message.greeting .bubble")).to_have_text("Hi User, I am Pip.")
        page.click("#open-settings")
        name = page.locator("#settings-display-name")
        expect(name).to_have_value("")
        expect(name).to_have_attribute("placeholder", "User")
        page.keyboard.press("Escape")

        expect(page.locator("#character-greeting")).to_have_text("Hi User, I am Pip.")
        save_settings(page, display_name="  Ada <b>L</b> ")
        assert api(server, page, "GET", "/v1/me").json()["display_name"] == "Ada <b>L</b>"
        # The picker's preview of the greeting says it too.
        expect(page.locator("#character-greeting")).to_have_text("Hi Ada <b>L</b>, I am Pip.")
        new_chat_with(page, cid)
        greeting = page.locator(".message.greeting .bubble")
        expect(greeting).to_have_text("Hi Ada <b>L</b>, I am Pip.")  # text, never markup
        assert page.locator(".message.greeting b").count() == 0
        chat(page, "hello")
        assert fake.chat_bodies[-1]["messages"][0]["content"] == (
            "You are Pip, talking with Ada <b>L</b>."
        )
        # Kept across a reload; a refused name says why and changes nothing.
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        page.click("#open-settings")
        expect(page.locator("#settings-display-name")).to_have_value("Ada <b>L</b>")
        page.keyboard.press("Escape")
        save_settings(page, display_name="tab\there")
        expect(page.locator("#error")).to_contain_text("control")
        assert api(server, page, "GET", "/v1/me").json()["display_name"] == "Ada <b>L</b>"

        save_settings(page, display_name="")  # empty: back to "User"
        assert api(server, page, "GET", "/v1/me").json()["display_name"] == "User"
        new_chat_with(page, cid)
        expect(page.locator(".message.greeting .bubble").last).to_have_text("Hi User, I am Pip.")
    finally:
        api(server, page, "DELETE", f"/v1/characters/{cid}")


def test_the_settings_fit_a_phone_screen(
    context: BrowserContext, server: LiveServer, shots: Path
) -> None:
    page = context.new_page()
    page.set_viewport_size({"width": 375, "height": 740})
    open_page(page, server.url)
    chat(page, "hi")
    page.click("#open-settings")
    dialog = page.locator("#settings-dialog")
    expect(dialog).to_be_visible()
    for field in ("settings-window", "settings-temperature", "settings-display-name"):
        box = page.locator(f"#{field}").bounding_box()
        assert box is not None, field
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, field
        assert box["height"] >= 28, f"{field} is too small to tap"
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(shots / "settings-375.png"))
    page.fill("#settings-temperature", "0.4")
    page.fill("#settings-display-name", "Sam")
    page.click("#settings-save")
    expect(dialog).to_be_hidden()
    assert api(server, page, "GET", "/v1/me").json()["display_name"] == "Sam"
