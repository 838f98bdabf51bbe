"""Export and import over HTTP: `GET /v1/export`, `POST /v1/import` (what the page's
buttons and `chatmem export/import --url` use). With auth on, a user exports only their
own sessions, and import is for admins (it writes outside the per-user caps); a refused
import stores nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from chatmem.cli.commands import app
from tests.api_support import TEST_AUTH_KEYS, TEST_KEYS, bearer, make_test_settings, running_app
from tests.fake_openai import FakeOpenAI
from tests.live_server import LiveServer


@pytest.fixture
async def client(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path, redis_client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_test_settings(redis_url, fake.base_url, tmp_path, auth_keys=TEST_AUTH_KEYS)
    async with running_app(settings) as (_, c):
        yield c


async def chat_as(c: httpx.AsyncClient, who: str, text: str) -> str:
    r = await c.post("/v1/sessions", json={}, headers=bearer(who))
    sid: str = r.json()["session"]["session_id"]
    r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=bearer(who))
    assert r.status_code == 200, r.text
    return sid


async def test_users_export_their_own_sessions_and_admins_anyones(
    client: httpx.AsyncClient,
) -> None:
    a1 = await chat_as(client, "alice", "alice one")
    a2 = await chat_as(client, "alice", "alice two")
    await chat_as(client, "bob", "bob one")

    mine = (await client.get("/v1/export", headers=bearer("alice"))).json()
    assert {s["meta"]["session_id"] for s in mine["sessions"]} == {a1, a2}
    one = (await client.get(f"/v1/export?session_id={a1}", headers=bearer("alice"))).json()
    assert [s["meta"]["session_id"] for s in one["sessions"]] == [a1]
    assert [m["content"] for m in one["sessions"][0]["messages"]][-2] == "alice one"

    # Another user's sessions, or everyone's, are not Alice's to export.
    r = await client.get("/v1/export?user_id=bob", headers=bearer("alice"))
    assert r.status_code == 404 and r.json()["error"]["code"]
    r = await client.get("/v1/export?all=true", headers=bearer("alice"))
    assert r.status_code == 403
    r = await client.get(f"/v1/export?session_id={a1}", headers=bearer("bob"))
    assert r.status_code == 404
    assert (await client.get("/v1/export")).status_code == 401

    everyone = (await client.get("/v1/export?all=true", headers=bearer("root"))).json()
    assert {s["meta"]["user_id"] for s in everyone["sessions"]} == {"alice", "bob"}
    bobs = (await client.get("/v1/export?user_id=bob", headers=bearer("root"))).json()
    assert {s["meta"]["user_id"] for s in bobs["sessions"]} == {"bob"}


async def test_import_is_for_admins_and_checked_before_anything_is_stored(
    client: httpx.AsyncClient,
) -> None:
    sid = await chat_as(client, "alice", "keep me")
    doc = (await client.get("/v1/export", headers=bearer("alice"))).json()
    assert (await client.delete(f"/v1/sessions/{sid}", headers=bearer("alice"))).status_code == 204

    # Not for users, even of their own export (it would write past their caps).
    for who in ("alice", "bob"):
        r = await client.post("/v1/import", json=doc, headers=bearer(who))
        assert r.status_code == 403, r.text
    assert (await client.get("/v1/sessions", headers=bearer("alice"))).json()["sessions"] == []

    # A bad message after a good session: refused whole (400), nothing stored.
    bad = json.loads(json.dumps(doc))
    second = json.loads(json.dumps(doc["sessions"][0]))
    second["meta"]["session_id"] = "other-session"
    second["messages"][0]["role"] = "wizard"
    bad["sessions"].append(second)
    r = await client.post("/v1/import", json=bad, headers=bearer("root"))
    assert r.status_code == 400 and r.json()["error"]["code"]
    assert (await client.get("/v1/sessions", headers=bearer("alice"))).json()["sessions"] == []
    r = await client.post("/v1/import", json={"format": "nope"}, headers=bearer("root"))
    assert r.status_code == 400

    r = await client.post("/v1/import", json=doc, headers=bearer("root"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "sessions": 1,
        "messages_added": 3,
        "messages_skipped": 0,
        "memories_added": 0,
    }
    history = (await client.get(f"/v1/sessions/{sid}/messages", headers=bearer("alice"))).json()
    assert [m["content"] for m in history["messages"]][1] == "keep me"
    again = (await client.post("/v1/import", json=doc, headers=bearer("root"))).json()
    assert again["messages_added"] == 0 and again["messages_skipped"] == 3


# What an outside tester imported and got stored broken or past every limit (each case
# alone in an otherwise good file): refused whole, 400, nothing stored.
BAD_IMPORTS: dict[str, tuple[str, Any]] = {
    "a TTL Redis cannot hold": ("meta.ttl_s", 10**15),
    "a TTL past a year": ("meta.ttl_s", 365 * 24 * 3600 + 1),
    "a TTL that is not a number": ("meta.ttl_s", "60"),
    "a window past the most": ("meta.window_size", 21),
    "a title past the most": ("meta.title", "t" * 1000),
    "an unknown state": ("meta.state", "frozen"),
    "an unknown character": ("meta.character_id", "no-such-character"),
    "a message id with a space": ("message.msg_id", "not an id"),
    "a message of 200 000 characters": ("message.content", "x" * 200_000),
    "a message with 300 KB of metadata": ("message.metadata", {"k": "v" * 300_000}),
    "a token count that is text": ("message.token_count", "12"),
    # Found by a second outside test: 500s, or 400s after the first session was stored.
    "usage tokens that are text": ("meta.usage", {"prompt_tokens": "z"}),
    "usage tokens past any count": ("meta.usage", {"prompt_tokens": 10**30}),
    "a negative cost": ("meta.usage", {"cost_usd": -1}),
    "a system message": ("message.role", "system"),
    "a fork that is not an id": ("meta.forked_from", {"x": 1}),
    "a title with an escape": ("meta.title", "a\x1b[31mb"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
async def test_an_import_with_one_bad_value_is_refused_whole(
    client: httpx.AsyncClient, case: str
) -> None:
    sid = await chat_as(client, "alice", "keep me")
    doc = (await client.get("/v1/export", headers=bearer("alice"))).json()
    assert (await client.delete(f"/v1/sessions/{sid}", headers=bearer("alice"))).status_code == 204
    good = json.loads(json.dumps(doc["sessions"][0]))
    good["meta"]["session_id"] = "first-and-good"
    where, value = BAD_IMPORTS[case]
    part, name = where.split(".")
    target = doc["sessions"][0]["meta"] if part == "meta" else doc["sessions"][0]["messages"][-1]
    target[name] = value
    doc["sessions"].insert(0, good)

    r = await client.post("/v1/import", json=doc, headers=bearer("root"))
    assert r.status_code == 400, r.text
    assert "session #2" in r.json()["error"]["message"], r.json()
    assert (await client.get("/v1/sessions", headers=bearer("alice"))).json()["sessions"] == []


async def test_a_bad_memory_or_profile_refuses_the_import_whole(client: httpx.AsyncClient) -> None:
    """Memories and profiles were stored first and checked one by one: a bad one late in
    the list left the ones before it, and every session, behind a 400."""
    sid = await chat_as(client, "alice", "keep me")
    doc = (await client.get("/v1/export", headers=bearer("alice"))).json()
    assert (await client.delete(f"/v1/sessions/{sid}", headers=bearer("alice"))).status_code == 204
    good = {"user_id": "alice", "character_id": "assistant", "memory_id": "m1", "text": "Likes tea"}
    for bad in ({**good, "memory_id": "not an id"}, {"user_id": "alice"}):
        doc["memories"] = [good, bad]
        r = await client.post("/v1/import", json=doc, headers=bearer("root"))
        assert r.status_code == 400 and "memory #2" in r.json()["error"]["message"], r.text
    doc["memories"] = [good]
    doc["profiles"] = [{"user_id": "alice", "display_name": "Alice"}, {"user_id": "bob"}]
    r = await client.post("/v1/import", json=doc, headers=bearer("root"))
    assert r.status_code == 400, r.text
    assert (await client.get("/v1/sessions", headers=bearer("alice"))).json()["sessions"] == []
    assert (await client.get("/v1/memories", headers=bearer("alice"))).json()["memories"] == []
    me = (await client.get("/v1/me", headers=bearer("alice"))).json()
    assert me["display_name"] == "User"


def test_cli_export_and_import_take_url(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path, redis_client: Any
) -> None:
    settings = make_test_settings(redis_url, fake.base_url, tmp_path, auth_keys=TEST_AUTH_KEYS)
    runner = CliRunner()
    dump = tmp_path / "alice.json"
    with LiveServer(settings) as live:
        h = bearer("alice")
        sid = httpx.post(live.url + "/v1/sessions", json={}, headers=h).json()["session"]
        sid = sid["session_id"]
        httpx.post(live.url + f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=h)
        key = ["--url", live.url, "--api-key", TEST_KEYS["alice"]]
        res = runner.invoke(app, ["export", *key, "--out", str(dump)])
        assert res.exit_code == 0, res.output
        assert "exported 1 sessions, 3 messages" in res.stderr
        assert httpx.delete(live.url + f"/v1/sessions/{sid}", headers=h).status_code == 204
        admin = ["--url", live.url, "--api-key", TEST_KEYS["root"]]
        res = runner.invoke(app, ["import", str(dump), *admin])
        assert res.exit_code == 0, res.output
        assert "imported 1 sessions: 3 messages added, 0 already there" in res.stderr
        listed = httpx.get(live.url + "/v1/sessions", headers=h).json()["sessions"]
        assert [s["session_id"] for s in listed] == [sid]
        # A plain user's key cannot import: one line, exit 2.
        res = runner.invoke(app, ["import", str(dump), *key])
        assert res.exit_code == 2
        assert "admin" in res.stderr
    assert json.loads(dump.read_text())["sessions"][0]["meta"]["user_id"] == "alice"
