"""chatmem's `POST /chat` next to seed 001's own app, over real HTTP, in one run.

Both apps talk to the same redis-server (seed 001 in DB 1, chatmem in DB 0) and to the
same fake OpenAI-compatible model (tests/fake_openai.py, in a process of its own); each
app runs in its own uvicorn process (one worker, uvloop + httptools for both). The load
is 32 concurrent connections (httpx.AsyncClient), each turn for one of 200 users, for a
fixed time after a warm-up, in slices that alternate between the two apps (so that the
background load of a shared machine falls on both alike); the CPU time of every process
is read from /proc.

1. The fast fake model: it answers at once (20 deltas, no delay). This is the target
   comparison: ≥ 10× the seed's turns/s and ≤ 1/10 of its p99.
2. The same model taking 100 ms before it answers, as any real model does (shorter run).
3. Streamed turns, one at a time: time to the first token of chatmem's stream (seed
   004's `POST /api/v1/chat/stream`) next to the fast fake model's own.

Seed 001's code is not in this repository: it is cut out of `../shared/seeds/001_*.txt`
at run time (the fenced python block that builds the app), and only what LangChain 1.x
needs is changed: imports (langchain_classic, langchain_core), Redis host/port/db from
the environment, and an `add_message` on its history class, which LangChain 1.x calls
to store a turn. Its ChatOpenAI reads the fake's URL and key from OPENAI_BASE_URL /
OPENAI_API_KEY. Everything else, blocking calls included, runs as the seed wrote it.

    .venv/bin/python bench/http_bench.py [--seconds 20 --slow-seconds 10 --rounds 4 --streams 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_openai import FakeOpenAI, Reply  # noqa: E402
from tests.fake_openai_process import serve_in_process  # noqa: E402
from tests.redis_servers import RedisProcess  # noqa: E402
from tests.seed_docs import SEEDS_DIR, one_block, seed_document  # noqa: E402
from tests.support import free_port  # noqa: E402

import turn_profile  # noqa: E402  (bench/ is this script's own folder)

CONNECTIONS = 32
USERS = 200
STREAM_USERS = 10
TARGET_THROUGHPUT_RATIO = 10.0
TARGET_P99_RATIO = 0.1
TARGET_CPU_RATIO = 0.1
FAKE_CHUNKS = 10  # the reply: 400 characters ("tok " × 100) in 10 deltas
REPLY_TEXT = "tok " * 100
SLOW_MODEL_DELAY_S = 0.1
STARTUP_TIMEOUT_S = 60.0
# A data line carrying text: the fake's deltas and chatmem's frames both say `"content":"…"`.
TEXT_DATA = re.compile(r'data: ?.*"content":"[^"]')

# (what the seed wrote, what LangChain 1.x needs); each must match exactly once.
SEED_PATCHES = [
    (
        "from langchain.schema import BaseChatMessageHistory, BaseMessage\n",
        "from langchain_core.chat_history import BaseChatMessageHistory\n"
        "from langchain_core.messages import BaseMessage\n",
    ),
    (
        "from langchain.schema.messages import HumanMessage, AIMessage\n",
        "from langchain_core.messages import HumanMessage, AIMessage\n",
    ),
    (
        "from langchain.memory import ConversationBufferMemory\n",
        "from langchain_classic.memory import ConversationBufferMemory\n",
    ),
    (
        "from langchain.chains import ConversationChain\n",
        "from langchain_classic.chains import ConversationChain\n",
    ),
    ('\nREDIS_HOST = "localhost"\n', '\nREDIS_HOST = os.environ["SEED_REDIS_HOST"]\n'),
    ("\nREDIS_PORT = 6379\n", '\nREDIS_PORT = int(os.environ["SEED_REDIS_PORT"])\n'),
    ("\nREDIS_DB = 0\n", '\nREDIS_DB = int(os.environ["SEED_REDIS_DB"])\n'),
    (
        "    def clear(self) -> None:\n",
        "    def add_message(self, message: BaseMessage) -> None:\n"
        "        # LangChain 1.x stores a turn through add_messages → add_message.\n"
        "        if isinstance(message, HumanMessage):\n"
        "            self.add_user_message(message.content)\n"
        "        else:\n"
        "            self.add_ai_message(message.content)\n"
        "\n"
        "    def clear(self) -> None:\n",
    ),
]


def extract_seed_app(seeds_dir: Path | None = None) -> str:
    """Seed 001's app as LangChain 1.x can run it (see the module docstring); a
    SystemExit saying what is missing when the seed document is not there."""
    where = SEEDS_DIR if seeds_dir is None else seeds_dir
    try:
        path = seed_document("001", where)
        code = one_block(path, "python", "FastAPI(", "RedisChatMessageHistory")
    except (LookupError, ValueError) as exc:
        raise SystemExit(
            f"bench/http_bench.py runs seed 001's own app next to chatmem, cut out of the "
            f"seed document 001_*.txt at run time (it is not part of this repository).\n"
            f"It needs that document: {exc}.\n"
            f"Put the seed documents beside the repository ({SEEDS_DIR}) or name their "
            f"folder with --seeds DIR."
        ) from None
    for old, new in SEED_PATCHES:
        if code.count(old) != 1:
            raise SystemExit(f"{path}: cannot patch the seed, {old.strip()!r} not found once")
        code = code.replace(old, new)
    return "import os\n" + code


# --- processes -------------------------------------------------------------------------


def serve_fake(delay_s: float) -> None:
    """The fake model, for `--serve-fake`: prints `PORT <n>`, serves until stdin closes.

    (tests/fake_openai.py's own main delays streamed chunks only; a delay before the
    response headers holds back the seed's plain completions and chatmem's streams alike.)
    """
    reply = Reply(text=REPLY_TEXT, chunks=FAKE_CHUNKS, headers_delay_s=delay_s)
    with FakeOpenAI(default=reply) as fake:
        print(f"PORT {fake.port}", flush=True)
        sys.stdin.read()


@contextmanager
def fake_model(delay_s: float) -> Iterator[tuple[str, int]]:
    """The fake model in a process of its own; yields its base URL and pid."""
    command = [sys.executable, __file__, "--serve-fake", str(delay_s)]
    with serve_in_process(command, cwd=ROOT) as (port, pid):
        yield f"http://127.0.0.1:{port}/v1", pid


@contextmanager
def process(
    args: list[str], *, env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uvicorn(app: str, port: int, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "uvicorn", app, *extra, "--host", "127.0.0.1"),
        *("--port", str(port), "--log-level", "warning", "--no-access-log"),
    ]


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


async def wait_ready(url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not come up; its log:\n{tail(log)}")


@dataclass
class Apps:
    seed_url: str
    chatmem_url: str
    fake_url: str
    pids: dict[str, dict[str, int | None]]  # app name → process name → pid
    # chatmem from other sources (--baseline-src), for before/after in one run
    baseline_url: str | None = None


@contextmanager
def apps(
    work: Path,
    redis: RedisProcess,
    delay_s: float,
    baseline_src: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Apps]:
    """The fake model and both apps (and chatmem from `baseline_src`), configured for it."""
    with ExitStack() as stack:
        fake_url, fake_pid = stack.enter_context(fake_model(delay_s))
        base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CHATMEM_", "OPENAI_"))
        }
        seed_env = base_env | {
            "OPENAI_API_KEY": "bench-key",
            "OPENAI_BASE_URL": fake_url,
            "SEED_REDIS_HOST": "127.0.0.1",
            "SEED_REDIS_PORT": str(redis.port),
            "SEED_REDIS_DB": "1",
            "PYTHONWARNINGS": "ignore",
        }
        chatmem_env = base_env | {
            # The sources beside this script, whatever the venv has installed.
            "PYTHONPATH": str(ROOT / "src"),
            "CHATMEM_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "CHATMEM_DATA_DIR": str(work / "data"),
            "CHATMEM_LLM_PROVIDER": "openai",
            "CHATMEM_LLM_BASE_URL": fake_url,
            "CHATMEM_LLM_API_KEY": "bench-key",
            "CHATMEM_LLM_MODEL": "gpt-3.5-turbo",
            "CHATMEM_LLM_MAX_RETRIES": "0",
            # The load is one client: no per-user rate limit or stream cap in the way.
            "CHATMEM_LIMITS_REQUESTS_PER_MINUTE": "0",
            "CHATMEM_LIMITS_STREAMS_PER_USER": "0",
        }
        seed_port, chatmem_port = free_port(), free_port()
        seed_log, chatmem_log = work / "seed.log", work / "chatmem.log"
        seed = stack.enter_context(
            process(uvicorn("seed001_app:app", seed_port), env=seed_env, cwd=work, log=seed_log)
        )
        chatmem_args = uvicorn("chatmem.api.app:create_app", chatmem_port, "--factory")
        chatmem = stack.enter_context(
            process(chatmem_args, env=chatmem_env | (extra_env or {}), cwd=work, log=chatmem_log)
        )
        shared: dict[str, int | None] = {
            "fake model": fake_pid,
            "redis": redis.proc.pid if redis.proc else None,
            "load client": None,
        }
        result = Apps(
            seed_url=f"http://127.0.0.1:{seed_port}",
            chatmem_url=f"http://127.0.0.1:{chatmem_port}",
            fake_url=fake_url,
            pids={
                "seed": {"app": seed.pid, **shared},
                "chatmem": {"app": chatmem.pid, **shared},
            },
        )
        asyncio.run(wait_ready(f"{result.seed_url}/health", seed_log))
        asyncio.run(wait_ready(f"{result.chatmem_url}/health", chatmem_log))
        if baseline_src is not None:
            baseline_env = chatmem_env | {
                "PYTHONPATH": str(baseline_src.resolve()),
                "CHATMEM_REDIS_URL": f"redis://127.0.0.1:{redis.port}/2",
            }
            baseline_port, baseline_log = free_port(), work / "baseline.log"
            baseline_args = uvicorn("chatmem.api.app:create_app", baseline_port, "--factory")
            baseline = stack.enter_context(
                process(baseline_args, env=baseline_env, cwd=work, log=baseline_log)
            )
            result.baseline_url = f"http://127.0.0.1:{baseline_port}"
            result.pids["baseline"] = {"app": baseline.pid, **shared}
            asyncio.run(wait_ready(f"{result.baseline_url}/health", baseline_log))
        yield result


# --- load ------------------------------------------------------------------------------


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by a process (this one for None)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # CPU seconds each process used during the measured spans.
    cpu_s: dict[str, float] = field(default_factory=dict)
    issued: int = 0

    @property
    def turns_per_s(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s else 0.0

    def ms(self, q: float) -> float:
        return ms(self.latencies_s, q) if self.latencies_s else float("nan")

    def cpu_ms_per_turn(self, who: str) -> float:
        return 1000 * self.cpu_s[who] / max(1, len(self.latencies_s))


Turn = Callable[[httpx.AsyncClient, int], Awaitable[str]]


async def chat_turn(client: httpx.AsyncClient, n: int) -> str:
    """One `POST /chat` turn (seed 000's shape) for user n % USERS; its outcome."""
    body = {"user_id": f"bench-user-{n % USERS}", "message": f"message number {n}"}
    resp = await client.post("/chat", json=body)
    return "ok" if resp.status_code == 200 else f"HTTP {resp.status_code}"


async def load(
    run: Run,
    base_url: str,
    *,
    seconds: float,
    pids: dict[str, int | None] | None = None,
    turn: Turn = chat_turn,
) -> None:
    """32 connections sending turns (`POST /chat` unless told) round-robin over 200 users
    for `seconds`; recorded into `run` when `pids` are given (whose CPU time is counted),
    else a warm-up."""
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    record = pids is not None
    pids = pids or {}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:

        async def worker(until: float) -> None:
            while time.perf_counter() < until:
                n = run.issued
                run.issued += 1
                start = time.perf_counter()
                try:
                    outcome = await turn(client, n)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if not record:
                    continue
                if outcome == "ok":
                    run.latencies_s.append(time.perf_counter() - start)
                else:
                    run.errors[outcome] = run.errors.get(outcome, 0) + 1

        cpu_before = {who: cpu_s(pid) for who, pid in pids.items()}
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds) for _ in range(CONNECTIONS)))
        if record:
            run.elapsed_s += time.perf_counter() - start
            for who, pid in pids.items():
                run.cpu_s[who] = run.cpu_s.get(who, 0.0) + cpu_s(pid) - cpu_before[who]


# --- chatmem's native turns --------------------------------------------------------------


async def native_sessions(base_url: str) -> list[str]:
    """One session per bench user (`native-user-i`), created up front."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        out = []
        for i in range(USERS):
            headers = {"X-User-Id": f"native-user-{i}"}
            resp = await client.post("/v1/sessions", json={}, headers=headers)
            resp.raise_for_status()
            out.append(resp.json()["session"]["session_id"])
        return out


def native_turn(sessions: list[str], *, stream: bool) -> Turn:
    """A native `POST /v1/sessions/{sid}/messages` turn: JSON, or SSE read to its end."""

    async def turn(client: httpx.AsyncClient, n: int) -> str:
        i = n % USERS
        url = f"/v1/sessions/{sessions[i]}/messages"
        headers = {"X-User-Id": f"native-user-{i}"}
        body = {"content": f"message number {n}", "stream": stream}
        if not stream:
            resp = await client.post(url, json=body, headers=headers)
            return "ok" if resp.status_code == 200 else f"HTTP {resp.status_code}"
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            data = await resp.aread()
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}"
        deltas = data.count(b"event: delta")
        if b"event: done" not in data or deltas < 1:
            return "incomplete stream"
        return "ok"

    return turn


async def native_kinds(base_url: str, label: str = "") -> list[tuple[Run, Turn]]:
    sessions = await native_sessions(base_url)
    return [
        (Run(f"{label}POST /chat (JSON)"), chat_turn),
        (Run(f"{label}native JSON turn"), native_turn(sessions, stream=False)),
        (Run(f"{label}native stream, {FAKE_CHUNKS} chunks"), native_turn(sessions, stream=True)),
    ]


async def native(
    found: Apps, *, seconds: float, warmup_s: float, rounds: int
) -> tuple[list[Run], list[Run]]:
    """chatmem alone: `POST /chat`, a native JSON turn and a native streamed turn, in
    alternating slices (with the baseline's, when there is one), the app's CPU per turn
    for each."""
    apps = [("chatmem", found.chatmem_url, await native_kinds(found.chatmem_url))]
    if found.baseline_url is not None:
        kinds = await native_kinds(found.baseline_url, "baseline: ")
        apps.append(("baseline", found.baseline_url, kinds))
    for _, url, kinds in apps:
        for run, turn in kinds:
            await load(run, url, seconds=warmup_s, turn=turn)
    for _ in range(rounds):
        for i in range(3):
            for name, url, kinds in apps:
                run, turn = kinds[i]
                pids = found.pids[name]
                await load(run, url, seconds=seconds / rounds, pids=pids, turn=turn)
    own = [run for run, _ in apps[0][2]]
    return own, [run for run, _ in apps[1][2]] if len(apps) > 1 else []


async def profile(found: Apps, folder: Path, *, seconds: float) -> None:
    """py-spy on the chatmem app under each kind of turn; where its CPU goes."""
    pid = found.pids["chatmem"]["app"]
    assert pid is not None
    for run, turn in await native_kinds(found.chatmem_url):
        await load(run, found.chatmem_url, seconds=1.0, turn=turn)  # warm
        out = folder / (re.sub(r"\W+", "-", run.name).strip("-").lower() + ".txt")
        spy = turn_profile.record(pid, seconds, out)
        await load(run, found.chatmem_url, seconds=seconds, pids={"app": pid}, turn=turn)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not out.exists():
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
        turn_profile.report(run.name, turn_profile.breakdown(out), run.cpu_ms_per_turn("app"))


async def first_token_s(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> float:
    """Seconds from sending the request to the first data line that carries text."""
    start = time.perf_counter()
    elapsed: float | None = None
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():  # read to the end: the turn must finish
            if elapsed is None and TEXT_DATA.match(line):
                elapsed = time.perf_counter() - start
    if elapsed is None:
        raise SystemExit(f"{url}: the stream carried no text")
    return elapsed


async def first_tokens(fake_url: str, chatmem_url: str, n: int) -> tuple[list[float], list[float]]:
    """Time to first token, one stream at a time: the fake model alone, then via chatmem."""
    fake_body: dict[str, object] = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    own, via = [], []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(n + STREAM_USERS):  # the first round creates each user's conversation
            t = await first_token_s(client, f"{fake_url}/chat/completions", fake_body)
            body: dict[str, object] = {"character_id": "companion", "message": f"hello {i}"}
            client.headers["X-User-Id"] = f"stream-user-{i % STREAM_USERS}"
            c = await first_token_s(client, f"{chatmem_url}/api/v1/chat/stream", body)
            if i >= STREAM_USERS:
                own.append(t)
                via.append(c)
    return own, via


async def flush(redis: RedisProcess) -> None:
    client = Redis(port=redis.port)
    await client.flushall()
    await client.aclose()


async def compare(found: Apps, *, seconds: float, warmup_s: float, rounds: int) -> tuple[Run, Run]:
    """Both apps under the same load, in alternating slices so that a change in the
    machine's background load falls on both alike."""
    seed, chatmem = Run("seed 001 (LangChain)"), Run("chatmem")
    targets = [(seed, found.seed_url, "seed"), (chatmem, found.chatmem_url, "chatmem")]
    for run, url, _ in targets:
        await load(run, url, seconds=warmup_s)
    for _ in range(rounds):
        for run, url, key in targets:
            await load(run, url, seconds=seconds / rounds, pids=found.pids[key])
    for run, _, _ in targets:
        if not run.latencies_s:
            raise SystemExit(f"{run.name} answered no turn: {run.errors}")
    return seed, chatmem


# --- report ----------------------------------------------------------------------------


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report_load(title: str, seed: Run, chatmem: Run, *, targets: bool) -> bool:
    print(f"\n{title}")
    print(f"{'':24}{'turns/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'turns':>7}  errors")
    for run in (seed, chatmem):
        errors = ", ".join(f"{k}: {v}" for k, v in run.errors.items()) or "0"
        print(
            f"{run.name:24}{run.turns_per_s:9.1f}{run.ms(0.5):9.1f}{run.ms(0.99):9.1f}"
            f"{len(run.latencies_s):7d}  {errors}"
        )
    speedup = chatmem.turns_per_s / seed.turns_per_s
    p99_ratio = chatmem.ms(0.99) / seed.ms(0.99)
    met = speedup >= TARGET_THROUGHPUT_RATIO and p99_ratio <= TARGET_P99_RATIO
    verdict = ""
    if targets:
        fast = "met" if speedup >= TARGET_THROUGHPUT_RATIO else "MISSED"
        p99_ok = "met" if p99_ratio <= TARGET_P99_RATIO else "MISSED"
        verdict = f"  targets: ≥ 10× {fast}, p99 ≤ 1/10 {p99_ok}"
    print(
        f"{'chatmem / seed':24}{speedup:8.2f}×{chatmem.ms(0.5) / seed.ms(0.5):9.3f}"
        f"{p99_ratio:9.3f}{verdict}"
    )
    whos = list(seed.cpu_s)
    print(f"{'CPU ms per turn':24}" + "".join(f"{who:>13}" for who in whos))
    for run in (seed, chatmem):
        print(f"{run.name:24}" + "".join(f"{run.cpu_ms_per_turn(w):13.2f}" for w in whos))
    cpu_ratio = chatmem.cpu_ms_per_turn("app") / seed.cpu_ms_per_turn("app")
    cpu_verdict = ""
    if targets:
        cpu_verdict = f"  target ≤ 0.10 {'met' if cpu_ratio <= TARGET_CPU_RATIO else 'MISSED'}"
    print(f"{'chatmem / seed':24}{cpu_ratio:13.3f}  (app CPU per turn){cpu_verdict}")
    return met


def report_native(runs: list[Run], seed_app_ms: float, baseline: list[Run]) -> None:
    """chatmem's own turns: app CPU per turn, against the seed app's POST /chat (and the
    baseline's same turns, when there is one)."""
    print(f"\nchatmem alone, {CONNECTIONS} connections, {USERS} users: CPU per turn by kind")
    print(
        f"{'':38}{'turns/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'turns':>7}"
        f"{'app CPU ms':>12}{'/ seed':>8}  errors"
    )
    for run in [*runs, *baseline]:
        errors = ", ".join(f"{k}: {v}" for k, v in run.errors.items()) or "0"
        app = run.cpu_ms_per_turn("app")
        print(
            f"{run.name:38}{run.turns_per_s:9.1f}{run.ms(0.5):9.1f}{run.ms(0.99):9.1f}"
            f"{len(run.latencies_s):7d}{app:12.3f}{app / seed_app_ms:8.3f}  {errors}"
        )
    json_ms, stream_ms = runs[1].cpu_ms_per_turn("app"), runs[2].cpu_ms_per_turn("app")
    ok = "met" if stream_ms <= 1.5 * json_ms else "MISSED"
    print(f"{'stream / JSON turn':38}{stream_ms / json_ms:9.2f}×  target ≤ 1.5× {ok}")
    for now, before in zip(runs, baseline, strict=False):
        ratio = now.cpu_ms_per_turn("app") / before.cpu_ms_per_turn("app")
        print(f"{'CPU vs baseline: ' + now.name:38}{ratio:9.3f}")


def report_streams(own: list[float], via: list[float]) -> None:
    print(f"\nstreamed turns, one at a time, {len(own)} each: time to first token")
    print(f"{'':28}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    print(f"{'fake model alone':28}{ms(own, 0.5):9.2f}{ms(own, 0.99):9.2f}")
    print(f"{'chatmem stream (seed 004)':28}{ms(via, 0.5):9.2f}{ms(via, 0.99):9.2f}")
    overhead = [v - o for v, o in zip(via, own, strict=True)]
    print(
        f"{'chatmem overhead':28}{ms(via, 0.5) - ms(own, 0.5):9.2f}"
        f"{ms(via, 0.99) - ms(own, 0.99):9.2f}{1000 * statistics.fmean(overhead):9.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="fast-model load per app")
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="slow-model load")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured load first")
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per app")
    parser.add_argument("--streams", type=int, default=200, help="streamed turns timed")
    parser.add_argument("--native-seconds", type=float, default=12.0, help="0: skip")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="SRC",
        help="also run chatmem from SRC (e.g. ../main/src) in the native slices: before/after",
    )
    parser.add_argument(
        "--whole-json",
        action="store_true",
        help="chatmem (not the baseline) with CHATMEM_LLM_WHOLE_JSON_REPLIES=true",
    )
    parser.add_argument("--seeds", type=Path, default=SEEDS_DIR, help="the seed documents")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the app per kind of turn, into DIR"
    )
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--serve-fake", type=float, metavar="DELAY_S", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake is not None:
        serve_fake(args.serve_fake)
        return
    seed_app = extract_seed_app(args.seeds)  # first: says what it needs, if anything
    print(f"{os.cpu_count()} CPUs, 1-minute load average before the run: {os.getloadavg()[0]:.2f}")
    slow_runs = None
    with tempfile.TemporaryDirectory(prefix="chatmem-http-bench-") as tmp:
        work = Path(tmp)
        (work / "seed001_app.py").write_text(seed_app, encoding="utf-8")
        redis = RedisProcess(work).start()
        try:
            extra = {"CHATMEM_LLM_WHOLE_JSON_REPLIES": "true"} if args.whole_json else {}
            with apps(work, redis, 0.0, args.baseline_src, extra) as fast:
                print(f"seed 001 cut from {args.seeds}/001_*.txt; same Redis, same fake model")
                fast_runs = asyncio.run(
                    compare(fast, seconds=args.seconds, warmup_s=args.warmup, rounds=args.rounds)
                )
                own_runs: list[Run] = []
                baseline_runs: list[Run] = []
                if args.native_seconds > 0:
                    own_runs, baseline_runs = asyncio.run(
                        native(
                            fast,
                            seconds=args.native_seconds,
                            warmup_s=args.warmup,
                            rounds=args.rounds,
                        )
                    )
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    asyncio.run(profile(fast, args.profile, seconds=args.profile_seconds))
                own, via = [], []
                if args.streams > 0:
                    own, via = asyncio.run(
                        first_tokens(fast.fake_url, fast.chatmem_url, args.streams)
                    )
            if args.slow_seconds > 0:
                asyncio.run(flush(redis))
                with apps(work, redis, SLOW_MODEL_DELAY_S) as slow:
                    slow_runs = asyncio.run(
                        compare(
                            slow,
                            seconds=args.slow_seconds,
                            warmup_s=args.warmup,
                            rounds=args.rounds,
                        )
                    )
        finally:
            redis.stop()
    shape = f"{CONNECTIONS} connections, {USERS} users"
    met = report_load(
        f"POST /chat, fast fake model (answers at once), {shape}, {args.seconds:g} s each",
        *fast_runs,
        targets=True,
    )
    if own_runs:
        report_native(own_runs, fast_runs[0].cpu_ms_per_turn("app"), baseline_runs)
    if slow_runs:
        report_load(
            f"POST /chat, the model takes {1000 * SLOW_MODEL_DELAY_S:g} ms to answer, {shape}, "
            f"{args.slow_seconds:g} s each",
            *slow_runs,
            targets=False,
        )
    if own:
        report_streams(own, via)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
