"""`chatmem size`: Redis memory for a load, from one user measured in a scratch Redis.

The estimate is checked against a real fill: users chatting through the app (the fake
model replying), then MEMORY USAGE of every key they left in the test Redis.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from chatmem.cli.commands import app
from chatmem.ops.sizing import Load, UserFootprint, estimate, measure_in_scratch
from chatmem.store import keys
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import all_keys

FOOTPRINT = UserFootprint(
    messages=50_000,
    id_index=3_300,
    session_meta=1_600,
    user_keys=240,
    users_index_entry=118,
    stored_messages=100,
    empty_server=900_000,
)


def test_estimate_is_one_measured_user_times_n() -> None:
    est = estimate(Load(users=10_000, messages=100), FOOTPRINT)
    per_user = {name: b for name, b, _ in est.lines}
    assert per_user["messages (session LISTs)"] == 50_000
    totals = {name: total for name, _, total in est.lines}
    assert totals["messages (session LISTs)"] == 500_000_000
    assert totals["redis-server itself, empty"] == 900_000
    assert est.total == 10_000 * (50_000 + 3_300 + 1_600 + 240 + 118) + 900_000
    assert est.total * 1.25 <= est.maxmemory < est.total * 1.25 + 2**20
    assert est.maxmemory % 2**20 == 0
    assert est.maxmemory * 1.5 <= est.host_memory < est.maxmemory * 1.5 + 2**20
    assert est.bytes_per_message == (50_000 + 3_300) / 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"users": 0, "messages": 10},
        {"users": 1, "messages": -1},
        {"users": 1, "messages": 10, "message_chars": 0},
        {"users": 1, "messages": 10, "sessions": 0},
        {"users": 1, "messages": 100_001},
    ],
)
def test_load_refuses_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Load(**kwargs)


def test_measured_footprint_follows_max_messages_and_message_length() -> None:
    short = measure_in_scratch(Load(users=1, messages=40, message_chars=100))
    long = measure_in_scratch(Load(users=1, messages=40, message_chars=1000))
    trimmed = measure_in_scratch(Load(users=1, messages=400, message_chars=100))
    assert (short.stored_messages, trimmed.stored_messages) == (40, 100)
    # Each message holds its text once: ~900 more characters, ~900 more bytes.
    per_char = (long.messages - short.messages) / (40 * 900)
    assert 0.95 < per_char < 1.15
    assert short.messages / 40 > 100  # the text and the message's own fields
    assert 30 <= short.id_index / 40 <= 40  # a 32-character id and a comma


async def test_estimate_matches_users_who_really_chatted(
    redis_url: str, redis_client: Redis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    users, sessions, turns, chars = 12, 2, 12, 300
    text = ("word " * chars)[:chars]
    fake.default = Reply(text=text)
    settings = make_test_settings(redis_url, fake.base_url, tmp_path / "data")
    async with running_app(settings) as (_, client):
        for u in range(users):
            h = {"X-User-Id": f"user-{u:027d}"}  # as long as a generated id
            for _ in range(sessions):
                r = await client.post("/v1/sessions", json={"character_id": "assistant"}, headers=h)
                sid = r.json()["session"]["session_id"]
                for _ in range(turns):
                    r = await client.post(
                        f"/v1/sessions/{sid}/messages", json={"content": text}, headers=h
                    )
                    assert r.status_code == 200, r.text
    real = 0
    for key in await all_keys(redis_client):
        # Rate-limit counters and the replies' event streams (5 minutes after each reply)
        # are short-lived, not counted (see ops/sizing.py).
        short_lived = ":rate:" in key or key.endswith(":ev")
        if key.startswith(keys.user_tag("x")[:5]) and not short_lived:
            real += await redis_client.memory_usage(key, samples=0) or 0
    # The greetings: one short message more per session than the load says.
    load = Load(users, sessions * (2 * turns + 1), chars, sessions)
    est = estimate(load, await asyncio.to_thread(measure_in_scratch, load))
    per_user = sum(b for _, b, _ in est.lines if b is not None) - est.footprint.users_index_entry
    assert real == pytest.approx(users * per_user, rel=0.05)


@pytest.mark.usefixtures("clean_env")
def test_size_command_prints_each_component_the_total_and_maxmemory() -> None:
    args = ["size", "--users", "10000", "--messages", "200", "--message-chars", "400"]
    result = CliRunner().invoke(app, args, terminal_width=120)
    assert result.exit_code == 0, result.output
    out = result.output
    for line in (
        "messages (session LISTs)",
        "message id index",
        "session meta",
        "session index and totals",
        "global users index",
        "total (used_memory)",
        "recommended maxmemory",
    ):
        assert line in out
    assert "max_messages 100: 100 a user" in out
    total = re.search(r"total \(used_memory\)\s*│\s*│\s*([\d.]+) MiB", out)
    assert total is not None and 400 < float(total.group(1)) < 800, out

    bad = CliRunner().invoke(app, ["size", "--users", "0", "--messages", "5"])
    assert bad.exit_code == 2
