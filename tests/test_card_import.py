"""Character Card V3 JSON and cards inside PNG images (`ccv3` / `chara` tEXt chunks),
over `POST /v1/characters/import` and in characters/png_card.py."""

from __future__ import annotations

import base64
import binascii
import struct

import httpx
import pytest

from chatmem.characters.card import card_to_character, character_to_card
from chatmem.characters.png_card import card_from_png, png_with_card
from chatmem.errors import InvalidInput
from tests.card_images import square_png

H = {"X-User-Id": "admin-in-open-mode"}
V2 = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {"name": "Captain Vee", "first_mes": "Ahoy, {{user}}! {{char}} here.", "tags": []},
}
V3 = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {
        "name": "Nova",
        "description": "A star pilot.",
        "first_mes": "Hi, I'm {{char}}.",
        "nickname": "Nov",
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "group_only_greetings": [],
        "creation_date": 1700000000,
    },
}


def test_a_v3_card_is_read_as_v2_and_kept_whole() -> None:
    ch = card_to_character(V3)
    assert (ch.id, ch.name, ch.greeting) == ("nova", "Nova", "Hi, I'm {{char}}.")
    assert "A star pilot." in ch.system_prompt
    card = character_to_card(ch)
    assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
    assert card["data"]["nickname"] == "Nov" and card["data"]["assets"] == V3["data"]["assets"]


def test_png_card_chunks() -> None:
    image = square_png()
    assert card_from_png(png_with_card(V2, image)) == V2
    # Both chunks, as SillyTavern writes a V3 card: ccv3 is the newer one.
    both = png_with_card(V3, png_with_card(V2, image), keyword=b"ccv3")
    assert card_from_png(both) == V3
    with pytest.raises(InvalidInput, match="no character card"):
        card_from_png(image)
    with pytest.raises(InvalidInput, match="not a PNG"):
        card_from_png(b"GIF89a")
    with pytest.raises(InvalidInput, match="truncated"):
        card_from_png(png_with_card(V2, image)[:60])
    # A card that is not base64 JSON: said plainly, without Python's own words.
    from chatmem.characters import png_card

    for payload in (b"chara\0!!not base64!!", b"chara\0" + base64.b64encode(b"{oops")):
        chunk = png_card._CHUNK_HEAD.pack(len(payload), b"tEXt") + payload
        chunk += struct.pack(">I", binascii.crc32(b"tEXt" + payload))
        with pytest.raises(InvalidInput) as err:
            card_from_png(image[:33] + chunk + image[33:])
        assert err.value.message == "the PNG's card is not base64-encoded JSON"


async def test_import_json_v3_and_png_over_http(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/characters/import", json=V3, headers=H)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "Nova"

    png = png_with_card(V2, square_png())
    r = await client.post(
        "/v1/characters/import",
        content=png,
        headers={**H, "Content-Type": "image/png"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["greeting"] == "Ahoy, {{user}}! {{char}} here."
    assert (await client.get("/v1/characters/captain-vee", headers=H)).status_code == 200

    # Not a card: 400 with a code, nothing stored.
    for body, kind in (
        (square_png(), "image/png"),
        (b"not json", "application/json"),
        (base64.b64encode(b"x"), "image/png"),
    ):
        r = await client.post(
            "/v1/characters/import", content=body, headers={**H, "Content-Type": kind}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_card"
    names = [
        c["name"] for c in (await client.get("/v1/characters", headers=H)).json()["characters"]
    ]
    assert names.count("Nova") == 1 and names.count("Captain Vee") == 1
