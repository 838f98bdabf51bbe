"""`chatmem serve` as a real process: a start-up that fails leaves nothing behind, a
SIGKILLed server's embedded Redis is stopped by the next one, the access log holds no
message text or credentials, and X-Forwarded-For is not trusted unless configured."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chatmem.api.app import create_app
from chatmem.chat.service import ChatService
from tests.api_support import make_test_settings
from tests.fake_openai import FakeOpenAI
from tests.support import free_port, process_env, wait_until

ALICE_KEY = "alice-key-0123456789abcdef"
START_TIMEOUT_S = 60


def redis_servers_in(data_dir: Path) -> list[int]:
    """Live redis-server processes working in `data_dir` (Redis chdirs to its `dir`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:  # a zombie has no exe link: it counts as gone
            exe, cwd = os.readlink(proc / "exe"), os.readlink(proc / "cwd")
        except OSError:
            continue
        if Path(exe).name == "redis-server" and Path(cwd) == data_dir:
            pids.append(int(proc.name))
    return pids


class Serve:
    """One `python -m chatmem serve` process; its stdout and stderr go to files."""

    def __init__(self, data_dir: Path, fake: FakeOpenAI, env: dict[str, str], *args: str):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = process_env(None, fake.base_url) | {"CHATMEM_DATA_DIR": str(data_dir), **env}
        self.args = args
        self.stdout_path = data_dir.parent / f"serve-{self.port}.out"
        self.stderr_path = data_dir.parent / f"serve-{self.port}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chatmem", "serve", "--port", str(self.port), *self.args],
                env=self.env,
                cwd=self.data_dir.parent,  # no developer's .env
                stdout=out,
                stderr=err,
            )
        return self

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self) -> Serve:
        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.stderr
            return httpx.get(self.url + "/health", timeout=1).status_code == 200

        wait_until(
            healthy,
            "the server to come up",
            timeout_s=START_TIMEOUT_S,
            ignore=(httpx.TransportError,),
        )
        return self

    def wait_exit(self, timeout_s: float = START_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short data dir (the embedded Redis's unix socket); whatever redis-server a
    failing test left in it is killed afterwards, so one failure does not leak into others."""
    d = tmp_path_factory.mktemp("sp") / "data"
    yield d
    for pid in redis_servers_in(d):
        os.kill(pid, signal.SIGKILL)


def no_redis_left(data_dir: Path) -> None:
    # A SIGTERMed server may take a moment to exit.
    wait_until(lambda: redis_servers_in(data_dir) == [], "no redis-server left", timeout_s=5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHATMEM_AUTH_KEYS": "short=alice"}, "at least 16"),
        ({"CHATMEM_AUTH_JWT_SECRET": "too-short"}, "at least 32 bytes"),
    ],
    ids=["short-key", "short-jwt-secret"],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_failed_startup_leaves_no_redis_server_behind(
    data_dir: Path, fake: FakeOpenAI, env: dict[str, str], message: str, workers: int
) -> None:
    """With a short API key or JWT secret, `chatmem serve` started the embedded
    redis-server, then failed in the app's start-up and exited, leaving redis-server
    running. The settings are now checked first: a one-line error, exit code 2, nothing
    left running."""
    serve = Serve(data_dir, fake, env, "--workers", str(workers)).start()
    try:
        code = serve.wait_exit()
    finally:
        serve.kill()
    no_redis_left(data_dir)
    assert code == 2, serve.stderr
    assert message in serve.stderr and "Traceback" not in serve.stderr


@pytest.mark.slow
def test_a_port_in_use_leaves_no_redis_server_behind(data_dir: Path, fake: FakeOpenAI) -> None:
    serve = Serve(data_dir, fake, {})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", serve.port))
        taken.listen()
        serve.start()
        try:
            code = serve.wait_exit()
        finally:
            serve.kill()
    assert code != 0
    assert "address already in use" in serve.stderr.lower()
    no_redis_left(data_dir)


@pytest.mark.slow
def test_the_redis_of_a_sigkilled_server_is_stopped_by_the_next_one(
    data_dir: Path, fake: FakeOpenAI
) -> None:
    """After a SIGKILL of chatmem, its embedded redis-server ran on; the next chatmem
    reused it but, not having started it, left it running at its own graceful shutdown:
    a redis-server nobody would ever stop. The next one now adopts it."""
    first = Serve(data_dir, fake, {}).start()
    try:
        first.wait_ready()
        [orphan] = redis_servers_in(data_dir)
        first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        first.wait_exit()
    finally:
        first.kill()
    assert redis_servers_in(data_dir) == [orphan]  # left running by the dead server

    second = Serve(data_dir, fake, {}).start()
    try:
        second.wait_ready()
        assert redis_servers_in(data_dir) == [orphan]  # reused, not a second one
        r = httpx.post(second.url + "/v1/sessions", json={}, headers={"X-User-Id": "u"})
        assert r.status_code == 201, r.text
        second.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        second.wait_exit()
    finally:
        second.kill()
    no_redis_left(data_dir)
    assert "adopted the embedded redis" in second.stderr


@pytest.mark.slow
def test_access_log_holds_no_message_text_or_credentials(data_dir: Path, fake: FakeOpenAI) -> None:
    """uvicorn's access log showed `GET /chat/stream?…&message=<the user's message>` and
    `?api_key=<key>` in clear. Query values other than ids and numbers are redacted.

    Also: X-Forwarded-For from an untrusted peer does not change the client address, so
    rotating it does not escape the failed-authentication throttle, and the log shows the
    real peer."""
    env = {
        "CHATMEM_AUTH_KEYS": f"{ALICE_KEY}=alice",
        "CHATMEM_AUTH_MAX_FAILURES": "3",
    }
    serve = Serve(data_dir, fake, env).start()
    try:
        serve.wait_ready()
        alice = {"Authorization": f"Bearer {ALICE_KEY}"}
        with httpx.Client(base_url=serve.url, timeout=30) as c:
            sid = c.post("/chat/start", params={"user_id": "alice"}, headers=alice).json()
            params = {
                "user_id": "alice",
                "session_id": sid["session_id"],
                "message": "MY-SECRET-DIARY entry",
                "role": "assistant",
            }
            r = c.get("/chat/stream", params=params, headers=alice)
            assert r.status_code == 200 and "end" in r.text
            c.get("/v1/sessions", params={"api_key": "LEAKED-KEY-0123456789", "limit": 5})
            for n in range(3):
                wrong = {"Authorization": "Bearer wrong", "X-Forwarded-For": f"10.0.0.{n}"}
                assert c.get("/v1/sessions", headers=wrong).status_code == 401
            spoofed = {**alice, "X-Forwarded-For": "10.9.9.9"}
            assert c.get("/v1/sessions", headers=spoofed).status_code == 429
        serve.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        serve.wait_exit()
    finally:
        serve.kill()
    log = serve.stdout + serve.stderr
    assert "GET /chat/stream?" in log, log
    assert "MY-SECRET-DIARY" not in log and "LEAKED-KEY" not in log
    assert ALICE_KEY not in log
    assert "message=[redacted]" in log and "user_id=alice" in log
    assert "/v1/sessions?api_key=[redacted]&limit=5" in log
    assert "10.0.0." not in log and "10.9.9.9" not in log
    assert "127.0.0.1:" in log and '"GET /v1/sessions HTTP/1.1" 429' in log
    no_redis_left(data_dir)


@pytest.mark.slow
def test_trusted_proxy_addresses_are_throttled_separately(data_dir: Path, fake: FakeOpenAI) -> None:
    env = {
        "CHATMEM_AUTH_KEYS": f"{ALICE_KEY}=alice",
        "CHATMEM_AUTH_MAX_FAILURES": "2",
        "CHATMEM_SERVER_TRUSTED_PROXIES": "127.0.0.1",
    }
    serve = Serve(data_dir, fake, env).start()
    try:
        serve.wait_ready()
        with httpx.Client(base_url=serve.url, timeout=30) as c:

            def get(client_ip: str, key: str) -> int:
                h = {"Authorization": f"Bearer {key}", "X-Forwarded-For": client_ip}
                return c.get("/v1/sessions", headers=h).status_code

            assert [get("10.0.0.1", "wrong") for _ in range(3)] == [401, 401, 429]
            assert get("10.0.0.1", ALICE_KEY) == 429
            assert get("10.0.0.2", ALICE_KEY) == 200
        serve.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        serve.wait_exit()
    finally:
        serve.kill()
    assert "10.0.0.1:" in serve.stdout


async def test_a_failure_after_the_embedded_redis_started_stops_it(
    data_dir: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any start-up failure once the embedded Redis runs (here the service's start)
    stops it again, in-process as under `chatmem serve`."""

    async def broken_start(self: ChatService) -> None:
        raise RuntimeError("the service could not start")

    monkeypatch.setattr(ChatService, "start", broken_start)
    settings = make_test_settings("unused", fake.base_url, data_dir)
    settings.redis = settings.redis.model_copy(update={"url": None})  # embedded
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="could not start"):
        async with app.router.lifespan_context(app):
            pass
    assert (data_dir / "appendonly.aof").exists()  # it did run
    no_redis_left(data_dir)
