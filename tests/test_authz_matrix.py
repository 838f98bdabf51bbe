"""With auth on, every route that takes a user or session id, as owner / other user /
admin / anonymous: the right status each, and no response ever showing another user's text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI

KEYS = {
    "alice": "key-alice-0123456789abcdef",
    "bob": "key-bob-0123456789abcdef",
    "admin": "key-root-0123456789abcdef",
}
AUTH_KEYS = f"{KEYS['alice']}=alice,{KEYS['bob']}=bob,{KEYS['admin']}=root:admin"
SECRET = "ALICE-SECRET"
WHO = ("owner", "other", "admin", "anon")


def headers(who: str) -> dict[str, str]:
    key = {"owner": KEYS["alice"], "other": KEYS["bob"], "admin": KEYS["admin"]}.get(who)
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture
async def client(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path, redis_client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_test_settings(redis_url, fake.base_url, tmp_path, auth_keys=AUTH_KEYS)
    async with running_app(settings) as (_, c):
        yield c


async def seed_alice(c: httpx.AsyncClient) -> dict[str, str]:
    """Alice's data in every shape: a native session, a seed-000 chat, a seed-002 session."""
    h = headers("owner")
    r = await c.post("/v1/sessions", json={"title": f"{SECRET} title"}, headers=h)
    sid = r.json()["session"]["session_id"]
    r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": f"{SECRET} one"}, headers=h)
    assert r.status_code == 200, r.text
    r = await c.post("/chat", json={"user_id": "alice", "message": f"{SECRET} two"}, headers=h)
    assert r.status_code == 200, r.text
    r = await c.post("/chat/start?user_id=alice", headers=h)
    sid2 = r.json()["session_id"]
    r = await c.get(
        "/chat/stream",
        params={"user_id": "alice", "session_id": sid2, "message": f"{SECRET} 3"},
        headers=h,
    )
    assert r.status_code == 200
    return {"sid": sid, "sid2": sid2}


# (method, path template, json body, expected status for owner, other, admin, anon)
READS: list[tuple[str, str, Any, tuple[int, int, int, int]]] = [
    ("GET", "/v1/sessions/{sid}", None, (200, 404, 404, 401)),
    ("PATCH", "/v1/sessions/{sid}", {"title": "t"}, (200, 404, 404, 401)),
    ("GET", "/v1/sessions/{sid}/messages", None, (200, 404, 404, 401)),
    ("GET", "/v1/sessions/{sid}/context", None, (200, 404, 404, 401)),
    ("POST", "/v1/sessions/{sid}/stop", None, (200, 404, 404, 401)),
    ("POST", "/v1/sessions/{sid}/messages", {"content": "hi"}, (200, 404, 404, 401)),
    ("GET", "/v1/sessions", None, (200, 200, 200, 401)),
    ("GET", "/v1/me", None, (200, 200, 200, 401)),
    ("GET", "/v1/admin/users", None, (403, 403, 200, 401)),
    ("GET", "/v1/admin/users/alice", None, (403, 403, 200, 401)),
    ("GET", "/v1/admin/stats", None, (403, 403, 200, 401)),
    ("GET", "/history/alice", None, (200, 404, 200, 401)),
    ("GET", "/stats/alice", None, (200, 404, 200, 401)),
    ("PUT", "/window-size/alice?new_size=5", None, (200, 404, 200, 401)),
    ("PUT", "/ttl/alice?new_ttl=600", None, (200, 404, 200, 401)),
    ("POST", "/chat", {"user_id": "alice", "message": "hi"}, (200, 404, 200, 401)),
    ("GET", "/chat/history?user_id=alice&session_id={sid2}", None, (200, 404, 200, 401)),
    ("GET", "/chat/sessions?user_id=alice", None, (200, 404, 200, 401)),
    ("GET", "/chat/stream?user_id=alice&session_id={sid2}&message=hi", None, (200, 404, 200, 401)),
    ("POST", "/chat/start?user_id=alice", None, (200, 404, 200, 401)),
    ("GET", "/users", None, (200, 200, 200, 401)),
    ("GET", "/stats", None, (403, 403, 200, 401)),
    (
        "POST",
        "/api/v1/chat/stream",
        {"character_id": "luna", "message": "hi"},
        (200, 200, 200, 401),
    ),
    ("GET", "/v1/characters", None, (200, 200, 200, 401)),
    ("POST", "/v1/characters", {"id": "x1", "name": "X"}, (403, 403, 201, 401)),
]

# Destructive: the non-owners are tried (and must fail) before the owner succeeds.
WRITES: list[tuple[str, str, tuple[int, int, int, int]]] = [
    ("DELETE", "/v1/sessions/{sid}/messages", (200, 404, 404, 401)),
    ("DELETE", "/v1/sessions/{sid}", (204, 404, 404, 401)),
    ("DELETE", "/chat/session/{sid2}?user_id=alice", (200, 404, 404, 401)),
    ("DELETE", "/history/alice", (200, 404, 404, 401)),
    ("DELETE", "/user/alice", (200, 404, 404, 401)),
]


def check(r: httpx.Response, who: str, expected: int, what: str) -> None:
    assert r.status_code == expected, f"{what} as {who}: {r.status_code} {r.text[:300]}"
    if who in ("other", "anon") or (who == "admin" and r.status_code >= 400):
        assert SECRET not in r.text, f"{what} as {who} leaked alice's text: {r.text[:300]}"
    if r.status_code >= 400:
        assert "error" in r.json(), f"{what} as {who}: no error body"


async def test_authorization_matrix(client: httpx.AsyncClient) -> None:
    ids = await seed_alice(client)
    for method, tmpl, body, statuses in READS:
        path = tmpl.format(**ids)
        for who, expected in zip(
            ("other", "anon", "admin", "owner"),
            (statuses[1], statuses[3], statuses[2], statuses[0]),
            strict=True,
        ):
            r = await client.request(method, path, json=body, headers=headers(who))
            check(r, who, expected, f"{method} {path}")
    # The owner's data is intact after everyone else's attempts.
    r = await client.get(f"/v1/sessions/{ids['sid']}/messages", headers=headers("owner"))
    assert SECRET in r.text
    for method, tmpl, statuses in WRITES:
        path = tmpl.format(**ids)
        for who, expected in (("other", statuses[1]), ("anon", statuses[3])):
            r = await client.request(method, path, headers=headers(who))
            check(r, who, expected, f"{method} {path}")
        if tmpl.startswith("/v1/sessions"):
            r = await client.request(method, path, headers=headers("admin"))
            check(r, "admin", statuses[2], f"{method} {path}")
        r = await client.request(method, path, headers=headers("owner"))
        check(r, "owner", statuses[0], f"{method} {path}")


async def test_admin_erases_a_user_others_cannot(client: httpx.AsyncClient) -> None:
    await seed_alice(client)
    for who, expected in (("other", 403), ("anon", 401), ("owner", 403)):
        r = await client.delete("/v1/admin/users/alice", headers=headers(who))
        check(r, who, expected, "DELETE /v1/admin/users/alice")
    r = await client.delete("/v1/admin/users/alice", headers=headers("admin"))
    assert r.status_code == 200 and r.json()["deleted_sessions"] >= 2
    r = await client.get("/v1/sessions", headers=headers("owner"))
    assert r.json()["sessions"] == []


@pytest.mark.parametrize(
    "bad", ["Bearer nope", "Basic abc", "Bearer", "Bearer " + KEYS["alice"] + "x", ""]
)
async def test_bad_credentials_are_401(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.get("/v1/sessions", headers={"Authorization": bad, "X-User-Id": "alice"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


async def test_character_prompts_are_for_admins_only(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/v1/characters", headers=headers("other"))).json()
    assert listed["characters"] and all("system_prompt" not in c for c in listed["characters"])
    one = (await client.get("/v1/characters/luna", headers=headers("other"))).json()
    assert "system_prompt" not in one and one["greeting"]
    full = (await client.get("/v1/characters/luna", headers=headers("admin"))).json()
    assert full["system_prompt"]
