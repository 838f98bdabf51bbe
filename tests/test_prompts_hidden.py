"""A character's prompts are shown only to admins, on every route (SPEC §8; issue 10
item 2): `/roles` and `/v1/sessions/{sid}/context` show others a placeholder and the
prompt's token count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.tokens import count_tokens
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI

ALICE_KEY = "key-alice-0123456789abcdef"
ROOT_KEY = "key-root-0123456789abcdef"
AUTH_KEYS = f"{ALICE_KEY}=alice,{ROOT_KEY}=root:admin"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
ROOT = {"Authorization": f"Bearer {ROOT_KEY}"}
PROMPT = "You are Vault. SECRET-PROMPT-42: never reveal the launch codes."
POST_HISTORY = "SECRET-AFTERWORD-7: answer in one line."


@pytest.fixture
async def client(
    redis_url: str, redis_client: Any, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir, auth_keys=AUTH_KEYS)
    async with running_app(settings) as (_, http):
        vault = {
            "id": "vault",
            "name": "Vault",
            "system_prompt": PROMPT,
            "post_history_instructions": POST_HISTORY,
        }
        r = await http.post("/v1/characters", json=vault, headers=ROOT)
        assert r.status_code == 201, r.text
        yield http


def assert_hidden(text: str) -> None:
    assert "SECRET-PROMPT" not in text and "SECRET-AFTERWORD" not in text, text


async def test_roles_hide_prompts_from_non_admins(client: httpx.AsyncClient) -> None:
    """`GET /roles` showed every character's system prompt to any user."""
    r = await client.get("/roles", headers=ALICE)
    assert r.status_code == 200
    assert_hidden(r.text)
    vault = r.json()["roles"]["vault"]
    assert vault["name"] == "Vault"
    assert vault["prompt_hidden"] is True
    assert vault["prompt_tokens"] == count_tokens(PROMPT)
    assert str(count_tokens(PROMPT)) in vault["prompt"]
    # Built-in roles too.
    assert r.json()["roles"]["teacher"]["prompt_hidden"] is True

    admin = (await client.get("/roles", headers=ROOT)).json()["roles"]["vault"]
    assert admin["prompt"] == PROMPT and "prompt_hidden" not in admin


async def test_context_hides_prompts_from_non_admins(client: httpx.AsyncClient) -> None:
    """`GET /v1/sessions/{sid}/context` showed the system prompt and the post-history
    instructions to the session's (non-admin) owner."""
    r = await client.post("/v1/sessions", json={"character_id": "vault"}, headers=ALICE)
    sid = r.json()["session"]["session_id"]
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"}, headers=ALICE)
    r = await client.get(f"/v1/sessions/{sid}/context", headers=ALICE)
    assert r.status_code == 200
    assert_hidden(r.text)
    msgs = r.json()["messages"]
    first, last = msgs[0], msgs[-1]
    assert first["role"] == last["role"] == "system"
    assert first["hidden"] is True and first["token_count"] == count_tokens(PROMPT)
    assert last["hidden"] is True and last["token_count"] == count_tokens(POST_HISTORY)
    assert [m["content"] for m in msgs[1:-1]] == ["hello", "Hello from the fake model."]
    tokens = r.json()["tokens"]
    assert tokens["system"] == count_tokens(PROMPT) + count_tokens(POST_HISTORY)

    # Counted as sent: with the user's name in place of {{user}} (a name of many tokens).
    named = {"id": "named", "name": "Named", "system_prompt": "Greet {{user}} warmly."}
    assert (await client.post("/v1/characters", json=named, headers=ROOT)).status_code == 201
    name = "Bartholomew Quentin Montgomery-Fitzwilliam"
    r = await client.patch("/v1/me", json={"display_name": name}, headers=ALICE)
    assert r.status_code == 200, r.text
    r = await client.post("/v1/sessions", json={"character_id": "named"}, headers=ALICE)
    sid = r.json()["session"]["session_id"]
    view = (await client.get(f"/v1/sessions/{sid}/context", headers=ALICE)).json()
    sent = count_tokens(f"Greet {name} warmly.")
    assert view["messages"][0]["token_count"] == sent == view["tokens"]["system"]

    # The admin's own session shows them.
    r = await client.post("/v1/sessions", json={"character_id": "vault"}, headers=ROOT)
    sid = r.json()["session"]["session_id"]
    msgs = (await client.get(f"/v1/sessions/{sid}/context", headers=ROOT)).json()["messages"]
    assert msgs[0] == {"role": "system", "content": PROMPT}
    assert msgs[-1] == {"role": "system", "content": POST_HISTORY}


async def test_open_mode_shows_prompts(
    client: httpx.AsyncClient, redis_url: str, tmp_path: Path
) -> None:
    # Every caller is the admin in open mode: the seed's /roles is unchanged there.
    app_settings = make_test_settings(redis_url, "http://127.0.0.1:9/v1", tmp_path)
    assert not app_settings.auth.enabled
    async with running_app(app_settings) as (_, open_client):
        roles = (await open_client.get("/roles")).json()["roles"]
    assert roles["vault"]["prompt"] == PROMPT
