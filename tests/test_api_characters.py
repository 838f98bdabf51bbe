"""Characters over HTTP: admin CRUD, Card V2 import, strict validation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

H = {"X-User-Id": "admin-in-open-mode"}


async def test_crud_and_card_import(client: httpx.AsyncClient) -> None:
    body = {"id": "pirate", "name": "Pirate", "system_prompt": "Arr.", "greeting": "Ahoy!"}
    assert (await client.post("/v1/characters", json=body, headers=H)).status_code == 201
    assert (await client.post("/v1/characters", json=body, headers=H)).status_code == 409
    got = (await client.get("/v1/characters/pirate", headers=H)).json()
    assert got["greeting"] == "Ahoy!"
    r = await client.put("/v1/characters/pirate", json={**body, "greeting": "Yo"}, headers=H)
    assert r.json()["greeting"] == "Yo"
    r = await client.put("/v1/characters/other", json=body, headers=H)
    assert r.status_code == 400 and r.json()["error"]["code"] == "id_mismatch"
    assert (await client.delete("/v1/characters/assistant", headers=H)).status_code == 403
    assert (await client.delete("/v1/characters/pirate", headers=H)).status_code == 204
    assert (await client.get("/v1/characters/pirate", headers=H)).status_code == 404

    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Captain Nemo",
            "description": "A submarine captain.",
            "personality": "stern",
            "scenario": "",
            "first_mes": "Welcome aboard.",
            "mes_example": "",
            "extensions": {"x": 1},
        },
    }
    r = await client.post("/v1/characters/import", json=card, headers=H)
    assert r.status_code == 201, r.text
    assert r.json()["greeting"] == "Welcome aboard."
    r = await client.post("/v1/sessions", json={"character_id": r.json()["id"]}, headers=H)
    assert r.json()["greeting"]["content"] == "Welcome aboard."
    bad = await client.post("/v1/characters/import", json={"spec": "nope"}, headers=H)
    assert bad.status_code == 400


@pytest.mark.parametrize(
    "extra",
    [{"params": {"temperature": False}}, {"builtin": 0}, {"name": 5}],
)
async def test_lax_values_are_refused(client: httpx.AsyncClient, extra: dict[str, Any]) -> None:
    """Regression: pydantic's lax mode took `false` as a temperature and `0` as a bool."""
    body = {"id": "strict1", "name": "S", **extra}
    r = await client.post("/v1/characters", json=body, headers=H)
    assert r.status_code == 422, r.text
