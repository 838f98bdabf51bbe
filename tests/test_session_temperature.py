"""A chat's own temperature (session meta `temperature`): set at create and by PATCH,
shown, exported, and what the model receives — request > session > character > server."""

from __future__ import annotations

import httpx

from chatmem.ops.transfer import export_sessions, import_sessions
from chatmem.store.conversations import RedisMemoryStore
from tests.api_support import new_session
from tests.fake_openai import FakeOpenAI

H = {"X-User-Id": "alice"}
SERVER_DEFAULT = 0.7  # LLMSettings.temperature


async def sent_temperature(
    client: httpx.AsyncClient, fake: FakeOpenAI, sid: str, text: str = "hi"
) -> float:
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=H)
    assert r.status_code == 200, r.text
    value: float = fake.chat_bodies[-1]["temperature"]
    return value


async def test_the_session_temperature_reaches_the_model(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await new_session(client, temperature=0.3)
    meta = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    assert meta["temperature"] == 0.3
    assert await sent_temperature(client, fake, sid) == 0.3

    r = await client.patch(f"/v1/sessions/{sid}", json={"temperature": 1.5}, headers=H)
    assert r.status_code == 200 and r.json()["temperature"] == 1.5
    assert await sent_temperature(client, fake, sid) == 1.5
    # Other fields change without touching it.
    r = await client.patch(f"/v1/sessions/{sid}", json={"title": "T"}, headers=H)
    assert r.json()["temperature"] == 1.5
    # 0 is a temperature, not "none".
    await client.patch(f"/v1/sessions/{sid}", json={"temperature": 0}, headers=H)
    assert await sent_temperature(client, fake, sid) == 0.0

    r = await client.patch(f"/v1/sessions/{sid}", json={"temperature": None}, headers=H)
    assert r.status_code == 200 and r.json()["temperature"] is None
    assert await sent_temperature(client, fake, sid) == SERVER_DEFAULT
    listed = (await client.get("/v1/sessions", headers=H)).json()["sessions"]
    assert listed[0]["temperature"] is None


async def test_the_order_request_session_character_server(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # The companion character has its own temperature, 0.9.
    sid = await new_session(client, character_id="companion")
    assert await sent_temperature(client, fake, sid) == 0.9
    await client.patch(f"/v1/sessions/{sid}", json={"temperature": 0.2}, headers=H)
    assert await sent_temperature(client, fake, sid) == 0.2
    # The OpenAI-compatible route with the session: its request's own wins, else the chat's.
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    oh = {**H, "X-Session-Id": sid}
    r = await client.post("/v1/chat/completions", json=body, headers=oh)
    assert r.status_code == 200, r.text
    assert fake.chat_bodies[-1]["temperature"] == 0.2
    r = await client.post("/v1/chat/completions", json={**body, "temperature": 1.1}, headers=oh)
    assert r.status_code == 200, r.text
    assert fake.chat_bodies[-1]["temperature"] == 1.1


async def test_a_bad_temperature_is_refused_and_nothing_changes(
    client: httpx.AsyncClient,
) -> None:
    for bad in (-0.1, 2.01, "0.5", True, [1]):
        r = await client.post("/v1/sessions", json={"temperature": bad}, headers=H)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"]
    assert (await client.get("/v1/sessions", headers=H)).json()["sessions"] == []
    sid = await new_session(client, temperature=1.0)
    for bad in (-1, 3, "hot", False):
        r = await client.patch(f"/v1/sessions/{sid}", json={"temperature": bad}, headers=H)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"]
    assert (await client.get(f"/v1/sessions/{sid}", headers=H)).json()["temperature"] == 1.0


async def test_export_and_import_carry_the_temperature(
    client: httpx.AsyncClient, store: RedisMemoryStore
) -> None:
    sid = await new_session(client, temperature=1.25)
    r = await client.get("/v1/export", headers=H)
    [item] = r.json()["sessions"]
    assert item["meta"]["temperature"] == 1.25
    doc = await export_sessions(store, [await store.get_meta("alice", sid)])
    doc["sessions"][0]["meta"]["user_id"] = "bob"
    await import_sessions(store, doc["sessions"])
    assert (await store.get_meta("bob", sid)).temperature == 1.25


async def test_an_import_with_a_bad_temperature_stores_nothing(client: httpx.AsyncClient) -> None:
    """Checked before anything is stored: not found half-way, at the last session."""
    await new_session(client, temperature=0.5)
    await new_session(client)
    doc = (await client.get("/v1/export", headers=H)).json()
    await client.delete("/v1/me", headers=H)
    for bad in (3, "hot", True):
        doc["sessions"][-1]["meta"]["temperature"] = bad
        r = await client.post("/v1/import", json=doc, headers=H)
        assert r.status_code == 400, (bad, r.text)
        assert "temperature" in r.json()["error"]["message"]
    assert (await client.get("/v1/sessions", headers=H)).json()["sessions"] == []
