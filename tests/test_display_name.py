"""The user's display name (`GET`/`PATCH /v1/me`): stored per user, erased with the
user, and what `{{user}}` (and `{{char}}`) become in prompts and greetings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.store import keys, profiles
from chatmem.store.client import AnyRedis
from chatmem.store.profiles import ProfileStore
from tests.api_support import make_test_settings, new_session, running_app
from tests.fake_openai import FakeOpenAI

H = {"X-User-Id": "alice"}
PIP = {
    "id": "pip",
    "name": "Pip",
    "system_prompt": "You are {{char}}, talking with {{user}}.",
    "greeting": "Hi {{user}}, I am {{Char}}.",
    "post_history_instructions": "Answer <USER> briefly.",
}
KEYS = {"alice": "key-alice-0123456789abcdef", "bob": "key-bob-0123456789abcdef"}
ROOT = "key-root-0123456789abcdef"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def name_of(client: httpx.AsyncClient, headers: dict[str, str] = H) -> str:
    r = await client.get("/v1/me", headers=headers)
    assert r.status_code == 200, r.text
    name: str = r.json()["display_name"]
    return name


async def test_me_sets_validates_and_resets_the_display_name(
    client: httpx.AsyncClient, redis_client: AnyRedis
) -> None:
    assert await name_of(client) == "User"
    r = await client.patch("/v1/me", json={"display_name": "  Ada Lovelace "}, headers=H)
    assert r.status_code == 200, r.text
    assert r.json()["display_name"] == "Ada Lovelace"
    assert r.json()["user_id"] == "alice"
    assert await name_of(client) == "Ada Lovelace"
    assert await name_of(client, {"X-User-Id": "bob"}) == "User"

    for bad, status in (
        ("", 400),
        ("   ", 400),
        ("x" * 65, 400),
        ("a\x00b", 400),
        ("tab\there", 400),
        ("zero\u200bwidth", 400),
        ("two\u2028lines", 400),
        (12, 422),
        (["Ada"], 422),
    ):
        r = await client.patch("/v1/me", json={"display_name": bad}, headers=H)
        assert r.status_code == status, (bad, r.text)
        err = r.json()["error"]
        assert err["code"] and err["message"], r.text
    r = await client.patch("/v1/me", json={"nickname": "x"}, headers=H)
    assert r.status_code == 422 and r.json()["error"]["code"]
    assert await name_of(client) == "Ada Lovelace"  # nothing stored by a refused one
    assert await name_of(client) == "Ada Lovelace"
    # 64 characters is the most; a body without the field changes nothing.
    r = await client.patch("/v1/me", json={"display_name": "é" * 64}, headers=H)
    assert r.status_code == 200 and r.json()["display_name"] == "é" * 64
    r = await client.patch("/v1/me", json={}, headers=H)
    assert r.json()["display_name"] == "é" * 64

    r = await client.patch("/v1/me", json={"display_name": None}, headers=H)
    assert r.status_code == 200 and r.json()["display_name"] == "User"
    assert await redis_client.hgetall(keys.user_profile_key("alice")) == {}


async def test_erasing_a_user_erases_the_profile(
    client: httpx.AsyncClient, redis_client: AnyRedis
) -> None:
    """`DELETE /v1/me` and the admin's erase (open mode: everyone is the admin)."""
    for uid, erase in (("alice", "/v1/me"), ("bob", "/v1/admin/users/bob")):
        h = {"X-User-Id": uid}
        await new_session(client, uid)
        await client.patch("/v1/me", json={"display_name": f"{uid} the great"}, headers=h)
        assert await redis_client.exists(keys.user_profile_key(uid)) == 1
        r = await client.delete(erase, headers=h)
        assert r.status_code == 200, r.text
        assert await redis_client.exists(keys.user_profile_key(uid)) == 0
        assert await name_of(client, h) == "User"


@pytest.fixture
async def auth_client(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path, redis_client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    auth = f"{KEYS['alice']}=alice,{KEYS['bob']}=bob,{ROOT}=root:admin"
    settings = make_test_settings(redis_url, fake.base_url, tmp_path, auth_keys=auth)
    async with running_app(settings) as (_, c):
        yield c


async def test_with_auth_a_name_is_the_callers_own(
    auth_client: httpx.AsyncClient, redis_client: AnyRedis
) -> None:
    alice, bob = bearer(KEYS["alice"]), bearer(KEYS["bob"])
    assert (await auth_client.patch("/v1/me", json={"display_name": "Al"})).status_code == 401
    r = await auth_client.patch("/v1/me", json={"display_name": "Al"}, headers=alice)
    assert r.status_code == 200
    # Bob's PATCH is Bob's, whatever user he names: X-User-Id does not count with auth on.
    r = await auth_client.patch(
        "/v1/me", json={"display_name": "Mallory"}, headers={**bob, "X-User-Id": "alice"}
    )
    assert r.status_code == 200 and r.json()["user_id"] == "bob"
    assert await name_of(auth_client, alice) == "Al"
    assert await name_of(auth_client, bob) == "Mallory"
    # Bob cannot erase Alice (and her name with her); the admin can.
    r = await auth_client.delete("/v1/admin/users/alice", headers=bob)
    assert r.status_code == 403
    assert await name_of(auth_client, alice) == "Al"
    r = await auth_client.delete("/v1/admin/users/alice", headers=bearer(ROOT))
    assert r.status_code == 200
    assert await redis_client.exists(keys.user_profile_key("alice")) == 0
    assert await name_of(auth_client, alice) == "User"


async def test_prompt_and_greeting_use_the_display_name(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    assert (await client.post("/v1/characters", json=PIP, headers=H)).status_code == 201
    r = await client.post("/v1/sessions", json={"character_id": "pip"}, headers=H)
    assert r.json()["greeting"]["content"] == "Hi User, I am Pip."

    await client.patch("/v1/me", json={"display_name": "Ada"}, headers=H)
    r = await client.post("/v1/sessions", json={"character_id": "pip"}, headers=H)
    assert r.json()["greeting"]["content"] == "Hi Ada, I am Pip."
    sid = r.json()["session"]["session_id"]
    history = (await client.get(f"/v1/sessions/{sid}/messages", headers=H)).json()
    assert history["messages"][0]["content"] == "Hi Ada, I am Pip."  # stored so

    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"}, headers=H)
    assert r.status_code == 200, r.text
    sent = fake.chat_bodies[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "You are Pip, talking with Ada."}
    assert sent[-1] == {"role": "system", "content": "Answer Ada briefly."}
    ctx = (await client.get(f"/v1/sessions/{sid}/context", headers=H)).json()
    assert ctx["messages"][0]["content"] == "You are Pip, talking with Ada."

    # A new name is used from the next turn on (this process forgets its cached one).
    await client.patch("/v1/me", json={"display_name": "Grace"}, headers=H)
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "again"}, headers=H)
    assert fake.chat_bodies[-1]["messages"][0]["content"] == "You are Pip, talking with Grace."
    # Another user's turn with the same character has their own name.
    bob = {"X-User-Id": "bob"}
    sid_b = await new_session(client, "bob", character_id="pip")
    await client.post(f"/v1/sessions/{sid_b}/messages", json={"content": "hi"}, headers=bob)
    assert fake.chat_bodies[-1]["messages"][0]["content"] == "You are Pip, talking with User."


async def test_an_imported_card_greets_and_prompts_with_the_display_name(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    card = {
        "spec": "chara_card_v2",
        "data": {
            "name": "Captain Vee",
            "first_mes": "Ahoy, {{user}}! {{char}} here.",
            "alternate_greetings": ["Back, <USER>?"],
            "scenario": "{{user}} boards the ship.",
        },
    }
    assert (await client.post("/v1/characters/import", json=card, headers=H)).status_code == 201
    await client.patch("/v1/me", json={"display_name": "Ada"}, headers=H)
    r = await client.post("/v1/sessions", json={"character_id": "captain-vee"}, headers=H)
    greeting = r.json()["greeting"]
    assert greeting["content"] == "Ahoy, Ada! Captain Vee here."
    sid, mid = r.json()["session"]["session_id"], greeting["msg_id"]
    r = await client.patch(f"/v1/sessions/{sid}/messages/{mid}", json={"selected": 1}, headers=H)
    assert r.json()["message"]["content"] == "Back, Ada?"
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    system = fake.chat_bodies[-1]["messages"][0]["content"]
    assert "Scenario: Ada boards the ship." in system
    assert "conversation with Ada" in system and "{{" not in system


async def test_a_turn_reads_the_profile_only_for_user_placeholders(
    client: httpx.AsyncClient, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-turn cost: no profile read unless the character's prompts have `{{user}}`;
    with it, one read per `NAME_CACHE_TTL_S` at most."""
    reads: list[str] = []
    read = ProfileStore.display_name

    async def counted(self: ProfileStore, user_id: str) -> str | None:
        reads.append(user_id)
        return await read(self, user_id)

    monkeypatch.setattr(ProfileStore, "display_name", counted)
    sid = await new_session(client)  # the default character: no {{user}}
    for n in range(3):
        await client.post(f"/v1/sessions/{sid}/messages", json={"content": f"a{n}"}, headers=H)
    assert reads == []
    await client.post("/v1/characters", json=PIP, headers=H)
    sid_pip = await new_session(client, character_id="pip")  # its greeting: one read
    for n in range(3):
        await client.post(f"/v1/sessions/{sid_pip}/messages", json={"content": f"b{n}"}, headers=H)
    assert reads == ["alice"]
    monkeypatch.setattr(profiles, "NAME_CACHE_TTL_S", 0.0)
    await client.patch("/v1/me", json={"display_name": "Ada"}, headers=H)
    reads.clear()
    await client.post(f"/v1/sessions/{sid_pip}/messages", json={"content": "c"}, headers=H)
    assert reads == ["alice"]  # the cache period over: read again
    assert fake.chat_bodies[-1]["messages"][0]["content"] == "You are Pip, talking with Ada."


async def test_export_and_import_carry_the_display_name(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    await client.patch("/v1/me", json={"display_name": "Ada"}, headers=H)
    doc = (await client.get("/v1/export", headers=H)).json()
    assert doc["profiles"] == [{"user_id": "alice", "display_name": "Ada"}]
    one = (await client.get(f"/v1/export?session_id={sid}", headers=H)).json()
    assert one["profiles"] == doc["profiles"]

    # A bad profile refuses the whole file, before anything is stored.
    await client.delete("/v1/me", headers=H)
    bad = {**doc, "profiles": [{"user_id": "alice", "display_name": "a\x07b"}]}
    r = await client.post("/v1/import", json=bad, headers=H)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_display_name"
    assert (await client.get("/v1/sessions", headers=H)).json()["sessions"] == []
    assert await name_of(client) == "User"

    r = await client.post("/v1/import", json=doc, headers=H)
    assert r.status_code == 200, r.text
    assert await name_of(client) == "Ada"
    # A name set since is kept: import only fills a missing one.
    await client.patch("/v1/me", json={"display_name": "Grace"}, headers=H)
    assert (await client.post("/v1/import", json=doc, headers=H)).status_code == 200
    assert await name_of(client) == "Grace"
    # A file made before profiles existed imports as before.
    del doc["profiles"]
    assert (await client.post("/v1/import", json=doc, headers=H)).status_code == 200
