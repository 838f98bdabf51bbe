"""Characters take only text Redis and JSON can store (issue 10 item 4): a lone surrogate
anywhere in a character or a card is a clean 4xx, never a 500."""

from __future__ import annotations

import httpx
import pytest

from chatmem.characters import card_to_character, parse_character
from chatmem.errors import InvalidInput

H = {"X-User-Id": "admin-in-open-mode", "content-type": "application/json"}
# Raw JSON: "\ud800" is valid JSON text but no valid Unicode (a lone surrogate).
LONE = "\\ud800"


@pytest.mark.parametrize(
    "card",
    [
        f'{{"spec":"chara_card_v2","data":{{"name":"S","extensions":{{"k":"{LONE}"}}}}}}',
        f'{{"spec":"chara_card_v2","data":{{"name":"S","extensions":{{"{LONE}":1}}}}}}',
        f'{{"spec":"chara_card_v2","data":{{"name":"S","{LONE}":"unknown key"}}}}',
        f'{{"spec":"chara_card_v2","data":{{"name":"S","character_book":{{"x":"{LONE}"}}}}}}',
        f'{{"spec":"chara_card_v2","data":{{"name":"S","description":"a{LONE}b"}}}}',
        f'{{"spec":"chara_card_v2","data":{{"name":"S{LONE}"}}}}',
    ],
)
async def test_lone_surrogate_in_a_card_is_a_400(client: httpx.AsyncClient, card: str) -> None:
    """A lone surrogate in a card's extensions, or as an unknown card key, was a 500
    (the stored character could not be serialized)."""
    r = await client.post("/v1/characters/import", content=card, headers=H)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_card"
    assert (await client.get("/v1/characters", headers=H)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        f'{{"id":"s1","name":"S","extensions":{{"k":"{LONE}"}}}}',
        f'{{"id":"s1","name":"S","extensions":{{"{LONE}":[1]}}}}',
        f'{{"id":"s1","name":"S","greeting":"hi {LONE}"}}',
        f'{{"id":"s1","name":"S","params":{{"model":"m{LONE}"}}}}',
    ],
)
async def test_lone_surrogate_in_a_character_is_a_4xx(client: httpx.AsyncClient, body: str) -> None:
    r = await client.post("/v1/characters", content=body, headers=H)
    assert r.status_code == 422, r.text
    r = await client.put("/v1/characters/s1", content=body, headers=H)
    assert r.status_code == 422, r.text


def test_parsers_refuse_lone_surrogates() -> None:
    with pytest.raises(InvalidInput):
        parse_character({"id": "x", "name": "X", "extensions": {"\ud800": 1}})
    with pytest.raises(InvalidInput):
        card_to_character({"spec": "chara_card_v2", "data": {"name": "X", "\udfff": "y"}})
