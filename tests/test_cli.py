"""The `chatmem` command line: in-process (typer's CliRunner) and as a real subprocess.

Real Redis, the fake model server, the real app (in-process or under uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

from chatmem.api.app import create_app
from chatmem.cli.commands import app
from chatmem.cli.inprocess import app_client
from chatmem.ops.embedded import SOCKET_NAME
from tests.api_support import make_test_settings, running_app, sse_stream
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.redis_servers import RedisProcess
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

pytestmark = pytest.mark.fake_model(default=Reply(text="Nice to meet you, Bob."))


@pytest.fixture
def env(
    redis_url: str, fake: FakeOpenAI, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The environment of a chatmem on the test Redis and fake model, nothing inherited."""
    tmp_path = clean_env
    values = {
        "CHATMEM_REDIS_URL": redis_url,
        "CHATMEM_DATA_DIR": str(tmp_path / "data"),
        "CHATMEM_LLM_PROVIDER": "openai",
        "CHATMEM_LLM_BASE_URL": fake.base_url,
        "CHATMEM_LLM_API_KEY": "test-key",
        "CHATMEM_LLM_MODEL": "fake-model",
        "CHATMEM_LLM_MAX_RETRIES": "0",
        "CHATMEM_JOBS_ENABLED": "false",  # titles would take the fake's scripted replies
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


@pytest.fixture
def clean_redis(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


def run_cli(env: dict[str, str], *args: str, stdin: str = "", cwd: Path | None = None) -> Any:
    return subprocess.run(
        [PY, "-m", "chatmem", *args],
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def contents(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]]


# --- chat ---------------------------------------------------------------------------------


def test_chat_subprocess_two_turns_remembers_the_first(
    env: dict[str, str], fake: FakeOpenAI, clean_redis: None, tmp_path: Path
) -> None:
    fake.script(Reply(text="Hello Bob!"), Reply(text="Your name is Bob."))
    res = run_cli(
        env,
        "chat",
        "--character",
        "luna",
        "--user",
        "bob",
        stdin="I am Bob.\nWho am I?\n",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "Hey, it's Luna!" in res.stdout  # the greeting
    assert "Luna › Hello Bob!" in res.stdout
    assert "Luna › Your name is Bob." in res.stdout
    first, second = fake.chat_bodies
    assert contents(first)[-1] == "I am Bob."
    # The second turn's context holds the first turn, then the new message.
    assert contents(second)[-3:] == ["I am Bob.", "Hello Bob!", "Who am I?"]

    listing = run_cli(env, "sessions", "--user", "bob", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    (session,) = json.loads(listing.stdout)
    assert session["character_id"] == "luna"
    assert session["message_count"] == 5  # greeting + 2 turns
    hist = run_cli(env, "history", session["session_id"], "--user", "bob", cwd=tmp_path)
    assert hist.returncode == 0, hist.stderr
    assert "Your name is Bob." in hist.stdout


def test_chat_resumes_a_session_on_a_running_server(
    env: dict[str, str], fake: FakeOpenAI, clean_redis: None, redis_url: str, tmp_path: Path
) -> None:
    settings = make_test_settings(redis_url, fake.base_url, tmp_path)
    runner = CliRunner()
    with LiveServer(settings) as live:
        first = runner.invoke(
            app, ["chat", "--url", live.url, "-u", "ann", "-c", "teacher"], input="one\n"
        )
        assert first.exit_code == 0, first.output
        sid = httpx.get(live.url + "/v1/sessions", headers={"X-User-Id": "ann"}).json()["sessions"][
            0
        ]["session_id"]
        again = runner.invoke(
            app, ["chat", "--url", live.url, "-u", "ann", "--session", sid], input="two\n/quit\n"
        )
    assert again.exit_code == 0, again.output
    assert f"Resuming {sid}" in again.stdout
    assert contents(fake.chat_bodies[-1])[-3:] == ["one", "Nice to meet you, Bob.", "two"]


async def test_in_process_replies_stream_as_they_are_generated(
    redis_url: str, redis_client: Any, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """httpx's own ASGITransport delivers a body only once the app is done with it."""
    fake.script(Reply(text="a b c d e f g h", delay_s=0.15))
    app_ = create_app(make_test_settings(redis_url, fake.base_url, tmp_path))
    async with app_client(app_, headers={"X-User-Id": "s"}, timeout=30) as http:
        sid = (await http.post("/v1/sessions", json={"character_id": "luna"})).json()["session"][
            "session_id"
        ]
        started = time.monotonic()
        arrivals: list[float] = []
        async with http.stream(
            "POST", f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}
        ) as res:
            async for event in sse_stream(res):
                if event.event == "delta":
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 8
    assert arrivals[0] < arrivals[-1] - 0.6, "the deltas arrived all at once"


# --- export / import -------------------------------------------------------------------


async def _populate(redis_url: str, fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.script(Reply(text="x " * 300, delay_s=0.01))
    async with running_app(make_test_settings(redis_url, fake.base_url, tmp_path)) as (_, c):
        for user, character in [("u1", "luna"), ("u1", "teacher"), ("u2", "programmer")]:
            h = {"X-User-Id": user}
            res = await c.post(
                "/v1/sessions",
                json={"character_id": character, "title": f"{user} {character}", "ttl_s": 7200},
                headers=h,
            )
            sid = res.json()["session"]["session_id"]
            await c.patch(f"/v1/sessions/{sid}", json={"window_size": 3}, headers=h)
            for text in ("first", "second"):
                r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=h)
                assert r.status_code == 200, r.text


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """Sessions by id, without what an import legitimately changes (times, remaining TTL)."""
    out = {}
    for s in doc["sessions"]:
        meta = {
            k: v
            for k, v in s["meta"].items()
            if k not in ("created_at", "last_active_at", "ttl_remaining_s")
        }
        out[meta["session_id"]] = {"meta": meta, "messages": s["messages"]}
    return out


def test_export_then_import_into_an_empty_redis_gives_identical_histories(
    env: dict[str, str], fake: FakeOpenAI, redis_url: str, clean_redis: None, tmp_path: Path
) -> None:
    asyncio.run(_populate(redis_url, fake, tmp_path))
    runner = CliRunner()
    dump = tmp_path / "dump.json"
    res = runner.invoke(app, ["export", "--out", str(dump)])
    assert res.exit_code == 0, res.output
    assert "exported 3 sessions" in res.stderr
    exported = json.loads(dump.read_text())
    assert len(exported["sessions"]) == 3

    target = RedisProcess(tmp_path / "target").start()
    try:
        res = runner.invoke(app, ["import", str(dump), "--redis-url", target.url])
        assert res.exit_code == 0, res.output
        assert "imported 3 sessions: 15 messages added, 0 already there" in res.stderr
        # Idempotent: a second import adds nothing.
        res = runner.invoke(app, ["import", str(dump), "--redis-url", target.url])
        assert "0 messages added, 15 already there" in res.stderr
        # A session whose character this server lacks: refused whole, as over HTTP.
        orphan = json.loads(dump.read_text())
        orphan["sessions"][-1]["meta"] |= {"session_id": "orphan", "character_id": "nobody"}
        (tmp_path / "orphan.json").write_text(json.dumps(orphan))
        res = runner.invoke(
            app, ["import", str(tmp_path / "orphan.json"), "--redis-url", target.url]
        )
        assert res.exit_code == 2 and "'nobody' does not exist" in res.stderr, res.output

        again = run_cli(env, "export", "--redis-url", target.url, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert _comparable(json.loads(again.stdout)) == _comparable(exported)

        one = run_cli(env, "export", "--redis-url", target.url, "--user", "u2", cwd=tmp_path)
        assert [s["meta"]["user_id"] for s in json.loads(one.stdout)["sessions"]] == ["u2"]
    finally:
        target.stop()


# --- the rest of the commands ----------------------------------------------------------


def test_users_and_characters(env: dict[str, str], clean_redis: None, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["characters", "--json"])
    assert res.exit_code == 0, res.output
    ids = {c["id"] for c in json.loads(res.stdout)["characters"]}
    assert {"assistant", "teacher", "programmer", "luna"} <= ids

    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {"name": "Aria Test", "description": "A test bard.", "first_mes": "Hail!"},
    }
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    res = runner.invoke(app, ["characters", "import", str(path)])
    assert res.exit_code == 0, res.output
    assert "imported aria-test (Aria Test)" in res.stdout
    res = runner.invoke(app, ["characters"])
    assert "Aria Test" in res.stdout

    res = runner.invoke(app, ["chat", "-c", "aria-test", "-u", "carol"], input="")
    assert res.exit_code == 0, res.output
    assert "Hail!" in res.stdout
    res = runner.invoke(app, ["users", "--json"])
    assert res.exit_code == 0, res.output
    assert [u["user_id"] for u in json.loads(res.stdout)] == ["carol"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "0"], "Invalid value for '--port'"),
        (["serve", "--workers", "2", "--reload"], "--reload works with one worker only"),
        (["serve", "--log-level", "loud"], "unknown log level"),
        (["history", "bad:id"], "invalid session id"),
        (["chat", "--character", "nobody"], "character 'nobody' not found"),
        (["chat", "--session", "0123456789abcdef"], "not found"),
        (["export", "--user", "not valid!"], "invalid user id"),
        (["import", "missing.json"], "cannot read missing.json"),
        (["import", "not-an-export.json"], "not a chatmem export"),
        (["characters", "import", "missing.json"], "cannot read missing.json"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    env: dict[str, str], args: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "not-an-export.json").write_text('{"hello": 1}')
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    if not message.startswith(("Invalid value", "No such")):  # click's own usage errors
        assert res.stderr.strip().count("\n") == 0
        assert res.stderr.startswith("chatmem: error: ")


def test_bad_arguments_in_a_real_process(env: dict[str, str], tmp_path: Path) -> None:
    res = run_cli(env, "history", "a}b", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("chatmem: error: invalid session id")
    assert "Traceback" not in res.stderr
    assert run_cli(env, "serve", "--port", "99999", cwd=tmp_path).returncode == 2


# --- serve ---------------------------------------------------------------------------


def _wait_healthy(url: str, proc: subprocess.Popen[str]) -> None:
    def healthy() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return httpx.get(url + "/health", timeout=1).status_code == 200

    wait_until(healthy, "the server to come up", timeout_s=60, ignore=(httpx.TransportError,))


@pytest.mark.slow
def test_serve_workers_share_one_embedded_redis_stopped_at_exit(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in env.items() if k != "CHATMEM_REDIS_URL"}
    data_dir = Path(env["CHATMEM_DATA_DIR"])
    port = free_port()
    # A context manager: the stderr pipe is closed however the test ends (it leaked).
    with subprocess.Popen(
        [PY, "-m", "chatmem", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc)
            h = {"X-User-Id": "w"}
            sids = {
                httpx.post(url + "/v1/sessions", json={}, headers=h).json()["session"]["session_id"]
                for _ in range(6)
            }
            # Whichever worker answers sees every session: one Redis for both.
            for _ in range(6):
                listed = httpx.get(url + "/v1/sessions", headers=h).json()["sessions"]
                assert {s["session_id"] for s in listed} == sids
            assert (data_dir / SOCKET_NAME).exists()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    assert proc.returncode == 0, stderr
    # The parent stopped the Redis it started: nothing answers on its socket any more.
    with (
        redis.Redis(unix_socket_path=str(data_dir / SOCKET_NAME), socket_timeout=1) as probe,
        pytest.raises(redis.ConnectionError),
    ):
        probe.ping()


@pytest.mark.parametrize(
    ("command", "flag"),
    [("sessions", "--json"), ("history", "--json"), ("users", "--json"), ("serve", "--reload")],
)
def test_help_shows_flags_without_a_value(command: str, flag: str) -> None:
    """Regression: help showed `--json <bool>`, as if the flag took a value."""
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if f"{flag} " in ln]
    assert "<bool>" not in line, line


@pytest.mark.parametrize("command", ["export", "import", "sessions", "chat", "users"])
def test_every_client_command_takes_url(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    assert "--url" in res.output
