"""The character editor and Card V2/V3 import (JSON and PNG) on the page, in Chromium:
for admins (in open mode everyone); a user with a plain API key does not see them (nor
the chats' Import)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from chatmem.characters.png_card import png_with_card
from tests.card_images import square_png
from tests.fake_openai import FakeOpenAI
from tests.live_server import LiveServer
from tests.web.conftest import PageWatch, api, open_page, web_settings

pytestmark = pytest.mark.browser


def test_create_edit_and_delete_a_character(page: Page, server: LiveServer) -> None:
    expect(page.locator("#character-tools")).to_be_visible()
    page.click("#add-character")
    dialog = page.locator("#character-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#ch-id")).to_be_focused()
    page.fill("#ch-id", "web-chef")
    page.fill("#ch-name", "Chef <Remy>")
    page.fill("#ch-description", "Cooks with you.")
    page.fill("#ch-greeting", "Bonjour! I am {{char}}.")
    page.fill("#ch-prompt", "You are a chef.")
    page.fill("#ch-temperature", "0.4")
    page.click("#ch-save")
    expect(dialog).to_be_hidden()
    expect(page.locator("#character")).to_have_value("web-chef")
    # {{char}} is filled in for every character (as a new chat's greeting will be).
    expect(page.locator("#character-greeting")).to_have_text("Bonjour! I am Chef <Remy>.")
    got = api(server, page, "GET", "/v1/characters/web-chef").json()
    assert got["params"]["temperature"] == 0.4 and got["system_prompt"] == "You are a chef."

    # Edit: the id stays, other fields change; the name is text, never markup.
    page.click("#edit-character")
    expect(page.locator("#ch-id")).to_have_value("web-chef")
    expect(page.locator("#ch-id")).to_have_attribute("readonly", "")
    page.fill("#ch-name", "Chef Remy")
    page.fill("#ch-temperature", "")
    page.click("#ch-save")
    expect(page.locator("#character option:checked")).to_have_text("Chef Remy")
    got = api(server, page, "GET", "/v1/characters/web-chef").json()
    assert got["name"] == "Chef Remy" and got["params"]["temperature"] is None
    assert got["system_prompt"] == "You are a chef."

    # Delete asks once more, in place.
    page.click("#edit-character")
    page.click("#ch-delete")
    expect(page.locator("#ch-delete")).to_contain_text("press again")
    page.click("#ch-delete")
    expect(page.locator("#character-dialog")).to_be_hidden()
    expect(page.locator("#character option[value=web-chef]")).to_have_count(0)
    assert api(server, page, "GET", "/v1/characters/web-chef").status_code == 404


def test_a_built_in_character_is_saved_as_a_copy(page: Page, server: LiveServer) -> None:
    page.select_option("#character", "luna")
    page.click("#edit-character")
    expect(page.locator("#ch-id")).to_have_value("luna-copy")
    expect(page.locator("#ch-note")).to_contain_text("copy")
    page.fill("#ch-name", "Luna Copy")
    page.click("#ch-save")
    expect(page.locator("#character")).to_have_value("luna-copy")
    assert api(server, page, "GET", "/v1/characters/luna").json()["name"] == "Luna"
    api(server, page, "DELETE", "/v1/characters/luna-copy")


def test_import_cards_from_json_v3_and_png(page: Page, server: LiveServer, tmp_path: Path) -> None:
    v3 = {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {"name": "Web Nova", "first_mes": "Hi, I'm {{char}}.", "nickname": "Nov"},
    }
    card_json = tmp_path / "nova.json"
    card_json.write_text(json.dumps(v3))
    page.set_input_files("#card-file", str(card_json))
    expect(page.locator("#error")).to_contain_text("Imported Web Nova.")
    expect(page.locator("#character")).to_have_value("web-nova")
    expect(page.locator("#character-greeting")).to_have_text("Hi, I'm Web Nova.")

    v2 = {"spec": "chara_card_v2", "data": {"name": "Web Pirate", "first_mes": "Arr, {{user}}!"}}
    card_png = tmp_path / "pirate.png"
    card_png.write_bytes(png_with_card(v2, square_png()))
    page.set_input_files("#card-file", str(card_png))
    expect(page.locator("#error")).to_contain_text("Imported Web Pirate.")
    expect(page.locator("#character")).to_have_value("web-pirate")

    plain = tmp_path / "plain.png"
    plain.write_bytes(square_png())
    page.set_input_files("#card-file", str(plain))
    expect(page.locator("#error")).to_contain_text("no character card")
    for cid in ("web-nova", "web-pirate"):
        assert api(server, page, "DELETE", f"/v1/characters/{cid}").status_code == 204


def test_a_user_who_is_not_an_admin_sees_no_editor(
    browser: Browser, redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    key = "plain-user-key-0123456789"
    settings = web_settings(redis_url, fake, tmp_path, auth_keys=f"{key}=plain")
    with LiveServer(settings) as live:
        ctx = browser.new_context()
        ctx.add_init_script(f"localStorage.setItem('chatmem.apiKey', '{key}')")
        try:
            page = ctx.new_page()
            watch = PageWatch(page)
            open_page(page, live.url)
            expect(page.locator("#character")).not_to_have_value("")
            expect(page.locator("#character-tools")).to_be_hidden()
            # Exporting one's own chats, yes; importing (admins only), no.
            expect(page.locator("#export-all")).to_be_visible()
            expect(page.locator("#import-chats")).to_be_hidden()
            assert watch.errors == []
            r = httpx.post(
                live.url + "/v1/characters/import",
                json={"spec": "chara_card_v2", "data": {"name": "X"}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 403
        finally:
            ctx.close()
