"""N concurrent SSE streams through chatmem, held to completion, next to the same N
streams read from the fake model directly (the peer: what the model and this client
cost without chatmem in between), in one run.

chatmem runs as it does in production: `python -m chatmem serve` in a process of its
own (uvicorn, uvloop, httptools), configured by environment only, on a redis-server
started here. The fake OpenAI-compatible model (`python -m tests.fake_openai`) runs in a
third process and sends 20 text deltas 50 ms apart. Each of N users has one session,
created before the measurement; then all N send their message at once with
`stream: true` (`POST /v1/sessions/{sid}/messages`), over N connections, and read to the
`done` event. The client is a small asyncio HTTP/1.1 reader (uvloop), so that its own CPU
stays small next to what it measures.

Reported per run: errors (anything but 20 deltas and a `done` with `memory: ok`), the
most streams open at once, the added inter-chunk delay (the gap between two deltas as
the client sees them, minus the model's 50 ms) at p50 / p99 / max, the time to the
first delta, chatmem's RSS per open stream (RSS at the sample with the most streams
open, minus RSS idle after a warm-up, divided by that many streams) and the CPU time of
every process during the run.

    .venv/bin/python bench/stream_load.py [--streams 1000] [--workers 1]
        [--chunks 20 --delay-ms 50]   the model's pace (500 ms: streams long enough
                                      that all N are open at once)
        [--ramp-s 0]                  the N starts spread evenly over this long, as
                                      users who do not all press send in one instant
        [--profile FILE]              chatmem under cProfile (pstats file)
        [--env CHATMEM_X=V ...]       more settings for chatmem (say
                                      CHATMEM_LIMITS_STARTS_IN_FLIGHT=0)
        [--gc-stats]                  chatmem's garbage collections during the run
        [--timeline]                  the run second by second: starts, deltas, gaps
        [--py-spy FILE]               py-spy samples of chatmem during the measured
                                      run (raw collapsed stacks), and where they go
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil
from redis.asyncio import Redis as AsyncRedis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_openai_process import serve_in_process  # noqa: E402
from tests.redis_servers import RedisProcess  # noqa: E402
from tests.support import free_port  # noqa: E402

import turn_profile  # noqa: E402  (bench/ is this script's own folder)

# The model's pace (--chunks, --delay-ms change it for the whole run).
EXTRA_ENV: dict[str, str] = {}  # --env
RAMP_S = 0.0  # --ramp-s: the N starts spread evenly over this long (0: all at once)
CHUNKS = 20
CHUNK_DELAY_S = 0.05
STARTUP_TIMEOUT_S = 60.0
STREAM_TIMEOUT_S = 300.0
SAMPLE_S = 0.05
WARM_UP_STREAMS = 20
TEXT_DATA = re.compile(rb'"content":"[^"]')
# `python -c PROFILED_SERVE <stats file> serve ...`: chatmem under cProfile. uvicorn
# re-raises SIGTERM after its graceful shutdown; a Python handler turns that into an exit
# that lets the stats be written.
PROFILED_SERVE = """
import cProfile, runpy, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
path, sys.argv = sys.argv[1], ["chatmem", *sys.argv[2:]]
prof = cProfile.Profile()
try:
    prof.runcall(runpy.run_module, "chatmem", run_name="__main__")
except SystemExit:
    pass
finally:
    prof.dump_stats(path)
"""
# `python -c GC_STATS_SERVE <json file> serve ...`: chatmem with every garbage collection
# timed, as [generation, perf_counter at its start, seconds] (perf_counter is the system's
# monotonic clock, the same in the bench's process).
GC_STATS_SERVE = """
import gc, json, runpy, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
path, sys.argv = sys.argv[1], ["chatmem", *sys.argv[2:]]
pauses, began = [], [0.0]
def timed(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], began[0], time.perf_counter() - began[0]))
gc.callbacks.append(timed)
try:
    runpy.run_module("chatmem", run_name="__main__")
except SystemExit:
    pass
finally:
    with open(path, "w") as f:
        json.dump(pauses, f)
"""


# --- processes -------------------------------------------------------------------------


@contextmanager
def fake_model(log: Path) -> Iterator[tuple[int, int]]:
    """The fake model in its own process; yields its port and pid."""
    args = ["--chunks", str(CHUNKS), "--delay-s", str(CHUNK_DELAY_S)]
    with (
        log.open("w") as err,
        serve_in_process(
            [sys.executable, "-m", "tests.fake_openai", *args], cwd=ROOT, stderr=err
        ) as started,
    ):
        yield started


@contextmanager
def chatmem(
    work: Path, redis_url: str, fake_port: int, workers: int, wrap: list[str] | None = None
) -> Iterator[tuple[int, int]]:
    """`python -m chatmem serve`, configured by environment only; yields port and pid.
    `wrap`: the code that runs it instead of `-m`, and its first argument."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATMEM_")}
    env |= {
        "CHATMEM_REDIS_URL": redis_url,
        "CHATMEM_DATA_DIR": str(work / "data"),
        "CHATMEM_LLM_PROVIDER": "openai",
        "CHATMEM_LLM_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
        "CHATMEM_LLM_API_KEY": "bench",
        "CHATMEM_LLM_MODEL": "fake-model",
        "CHATMEM_LIMITS_REQUESTS_PER_MINUTE": "1000000",
        "CHATMEM_LIMITS_STREAMS_PER_USER": "100000",
        # chatmem from the sources beside this file (a worktree's, not the venv's install)
        "PYTHONPATH": str(ROOT / "src"),
    } | EXTRA_ENV
    log = work / "chatmem.log"
    cmd = [sys.executable, "-m", "chatmem", "serve", "--port", str(port)]
    if wrap is not None:
        cmd[1:3] = ["-c", *wrap]
    cmd += ["--workers", str(workers), "--log-level", "warning"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"chatmem did not start; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree(pid: int) -> list[psutil.Process]:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def rss(pid: int) -> int:
    return sum(p.memory_info().rss for p in tree(pid))


def cpu_s(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        t = p.cpu_times()
        total += t.user + t.system
    return total


# --- the client ------------------------------------------------------------------------


@dataclass
class Stream:
    sent_at: float = 0.0
    opened_at: float = 0.0  # the response's head read
    deltas: list[float] = field(default_factory=list)
    done_at: float = 0.0
    error: str = ""


@dataclass
class Gauge:
    """Streams open (response started, not finished) right now, for the sampler."""

    open: int = 0


async def read_sse(
    port: int,
    path: str,
    headers: dict[str, str],
    body: bytes,
    chatmem_events: bool,
    g: Gauge,
    start_after_s: float = 0.0,
) -> Stream:
    s = Stream()
    if start_after_s:
        await asyncio.sleep(start_after_s)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    head += "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    opened = False
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        s.sent_at = time.perf_counter()
        writer.write(head.encode() + body)
        status = await reader.readline()
        hdrs = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            hdrs[name.strip().lower()] = value.strip()
        if b" 200 " not in status or hdrs.get("transfer-encoding") != "chunked":
            rest = await reader.read()
            s.error = f"{status.decode().strip()} {rest[:200]!r}"
            return s
        g.open += 1
        opened = True
        s.opened_at = time.perf_counter()
        buf = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                break
            buf += (await reader.readexactly(size + 2))[:-2]
            now = time.perf_counter()
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            *events, buf = buf.split(b"\n\n")
            for event in events:
                if chatmem_events:
                    kind = data = b""
                    for line in event.split(b"\n"):
                        if line.startswith(b"event: "):
                            kind = line[7:]
                        elif line.startswith(b"data: "):
                            data = line[6:]
                    if kind == b"delta":
                        s.deltas.append(now)
                    elif kind == b"done":
                        if orjson.loads(data)["memory"] != "ok":
                            s.error = f"memory {orjson.loads(data)['memory']}"
                        s.done_at = now
                    elif kind == b"error":
                        s.error = "error event " + data.decode(errors="replace")
                elif event.startswith(b"data: [DONE]"):
                    s.done_at = now
                elif TEXT_DATA.search(event):
                    s.deltas.append(now)
        if not s.error and (not s.done_at or len(s.deltas) != CHUNKS):
            s.error = f"{len(s.deltas)} deltas, done: {bool(s.done_at)}"
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        s.error = f"{type(exc).__name__}: {exc}"
    finally:
        if opened:
            g.open -= 1
        if writer is not None:
            writer.close()
    return s


@dataclass
class Run:
    name: str
    streams: list[Stream]
    wall_s: float
    samples: list[tuple[float, int, int]]  # (time, open streams, server RSS)
    cpu_s: dict[str, float]
    t0: float = 0.0
    idle_rss: int = 0

    @property
    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.streams:
            if s.error:
                kind = s.error[:60]
                out[kind] = out.get(kind, 0) + 1
        return out

    @property
    def added_ms(self) -> list[float]:
        return [
            (b - a - CHUNK_DELAY_S) * 1000
            for s in self.streams
            for a, b in zip(s.deltas, s.deltas[1:], strict=False)
        ]

    @property
    def first_delta_ms(self) -> list[float]:
        return [(s.deltas[0] - s.sent_at) * 1000 for s in self.streams if s.deltas]

    @property
    def peak(self) -> tuple[int, int]:
        """The most streams open at once, and the server's RSS at that sample."""
        _, n, mem = max(self.samples, key=lambda x: (x[1], x[2]))
        return n, mem


async def load(
    name: str,
    port: int,
    requests: list[tuple[str, dict[str, str], bytes]],
    chatmem_events: bool,
    pids: dict[str, int],
    server_pid: int,
) -> Run:
    gauge = Gauge()
    samples: list[tuple[float, int, int]] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), gauge.open, rss(server_pid)))
            await asyncio.sleep(SAMPLE_S)

    cpu0 = {who: cpu_s(pid) for who, pid in pids.items()}
    cpu0["client"] = time.process_time()
    sampling = asyncio.create_task(sampler())
    t0 = time.perf_counter()
    streams = await asyncio.wait_for(
        asyncio.gather(
            *(
                read_sse(port, p, h, b, chatmem_events, gauge, RAMP_S * i / len(requests))
                for i, (p, h, b) in enumerate(requests)
            )
        ),
        STREAM_TIMEOUT_S,
    )
    wall = time.perf_counter() - t0
    stop.set()
    await sampling
    cpu = {who: cpu_s(pid) - cpu0[who] for who, pid in pids.items()}
    cpu["client"] = time.process_time() - cpu0["client"]
    return Run(name, streams, wall, samples, cpu, t0)


async def create_sessions(port: int, n: int) -> list[str]:
    sem = asyncio.Semaphore(50)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

        async def one(u: int) -> str:
            async with sem:
                r = await client.post(
                    "/v1/sessions",
                    json={"character_id": "assistant"},
                    headers={"X-User-Id": f"load-{u}"},
                )
                r.raise_for_status()
                sid: str = r.json()["session"]["session_id"]
                return sid

        return list(await asyncio.gather(*(one(u) for u in range(n))))


def chatmem_requests(sids: list[str], offset: int = 0) -> list[tuple[str, dict[str, str], bytes]]:
    body = orjson.dumps({"content": "Tell me a story in twenty words.", "stream": True})
    return [
        (f"/v1/sessions/{sid}/messages", {"X-User-Id": f"load-{u + offset}"}, body)
        for u, sid in enumerate(sids)
    ]


def fake_requests(n: int) -> list[tuple[str, dict[str, str], bytes]]:
    body = orjson.dumps(
        {
            "model": "fake-model",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Tell me a story in twenty words."}],
        }
    )
    return [("/v1/chat/completions", {"Authorization": "Bearer bench"}, body)] * n


# --- report ----------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def timeline(r: Run, step_s: float = 1.0) -> None:
    """Per `step_s` of the run: responses started, first deltas, deltas, and the added
    gap p99 of the deltas that arrived in it (when starts crowd out running streams,
    the gaps of one second grow with the starts of that second)."""
    n = int(r.wall_s / step_s) + 1
    opened, firsts, deltas = [0] * n, [0] * n, [0] * n
    gaps: list[list[float]] = [[] for _ in range(n)]
    for s in r.streams:
        if s.opened_at:
            opened[min(n - 1, int((s.opened_at - r.t0) / step_s))] += 1
        for i, t in enumerate(s.deltas):
            b = min(n - 1, int((t - r.t0) / step_s))
            deltas[b] += 1
            if i == 0:
                firsts[b] += 1
            else:
                gaps[b].append((t - s.deltas[i - 1] - CHUNK_DELAY_S) * 1000)
    print(f"\n{r.name}, by {step_s:g} s of the run")
    print(f"{'from s':>8}{'started':>9}{'1st delta':>10}{'deltas':>8}{'gap p99 ms':>12}")
    for b in range(n):
        p99 = f"{pct(gaps[b], 0.99):12.1f}" if gaps[b] else f"{'':>12}"
        print(f"{b * step_s:>8.1f}{opened[b]:>9}{firsts[b]:>10}{deltas[b]:>8}{p99}")


def report(runs: list[Run], streams: int, workers: int, who: dict[str, str]) -> None:
    la = os.getloadavg()
    print(
        f"{streams} concurrent SSE streams, {CHUNKS} deltas {CHUNK_DELAY_S * 1000:.0f} ms apart "
        f"each; chatmem: {workers} worker{'s' if workers > 1 else ''}; "
        f"{os.cpu_count()} CPUs; load average {la[0]:.1f} {la[1]:.1f} {la[2]:.1f}"
    )
    print(", ".join(f"{k}: {v}" for k, v in who.items()))
    print()
    head = f"{'':<22}{'errors':>7}{'peak open':>10}{'wall s':>8}"
    head += f"{'added gap ms p50':>18}{'p99':>8}{'max':>8}{'1st delta ms p50':>18}{'p99':>8}"
    print(head)
    for r in runs:
        added, first = r.added_ms, r.first_delta_ms
        print(
            f"{r.name:<22}{sum(r.errors.values()):>7}{r.peak[0]:>10}{r.wall_s:>8.1f}"
            f"{pct(added, 0.5):>18.1f}{pct(added, 0.99):>8.1f}{max(added, default=0):>8.1f}"
            f"{pct(first, 0.5):>18.1f}{pct(first, 0.99):>8.1f}"
        )
    print()
    print(f"{'CPU s during the run':<22}" + "".join(f"{k:>12}" for k in runs[0].cpu_s))
    for r in runs:
        print(f"{r.name:<22}" + "".join(f"{v:>12.2f}" for v in r.cpu_s.values()))
    for r in runs:
        if r.idle_rss:
            n, mem = r.peak
            per = (mem - r.idle_rss) / max(n, 1)
            cpu = r.cpu_s["chatmem"]
            print(
                f"\nchatmem: RSS idle {r.idle_rss / 2**20:.1f} MiB, with {n} streams open "
                f"{mem / 2**20:.1f} MiB: {per / 1024:.1f} KiB per open stream; CPU "
                f"{cpu:.2f} s over {r.wall_s:.1f} s ({cpu / r.wall_s:.0%} of one core), "
                f"{cpu / len(r.streams) * 1000:.1f} ms per stream"
            )
    for r in runs:
        for kind, count in r.errors.items():
            print(f"  {r.name} error ×{count}: {kind}")


def stop_spy(spy: subprocess.Popen[bytes], out: Path) -> None:
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if not out.exists():
        raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")


def gc_report(stats: Path, run: Run) -> None:
    """chatmem's collections during the run: how many per generation, their total and
    longest pause (every stream stands still meanwhile)."""
    if not stats.exists():
        print("\n(no GC statistics: chatmem did not write them)")
        return
    rows: dict[int, list[float]] = {}
    for gen, at, pause in orjson.loads(stats.read_bytes()):
        if run.t0 <= at <= run.t0 + run.wall_s:
            rows.setdefault(gen, []).append(pause * 1000)
    print(f"\nchatmem's garbage collections during the run ({run.name})")
    print(f"{'generation':>12}{'count':>8}{'total ms':>10}{'p50 ms':>8}{'max ms':>8}")
    for gen, pauses in sorted(rows.items()):
        print(
            f"{gen:>12}{len(pauses):>8}{sum(pauses):>10.0f}{pct(pauses, 0.5):>8.1f}"
            f"{max(pauses):>8.1f}"
        )


async def run(work: Path, opts: argparse.Namespace) -> None:
    streams, workers, spy_out = opts.streams, opts.workers, opts.py_spy
    wrap = None
    if opts.profile is not None:
        wrap = [PROFILED_SERVE, str(opts.profile)]
    elif opts.gc_stats:
        wrap = [GC_STATS_SERVE, str(work / "gc.json")]
    with ExitStack() as stack:
        redis = RedisProcess(work)
        redis.start()
        stack.callback(redis.stop)
        assert redis.proc is not None
        fake_port, fake_pid = stack.enter_context(fake_model(work / "fake.log"))
        port, pid = stack.enter_context(chatmem(work, redis.url, fake_port, workers, wrap))
        pids = {"chatmem": pid, "fake model": fake_pid, "redis": redis.proc.pid}

        warm = await create_sessions(port, WARM_UP_STREAMS)
        await load("warm-up", port, chatmem_requests(warm), True, pids, pid)
        sids = await create_sessions(port, WARM_UP_STREAMS + streams)
        sids = sids[WARM_UP_STREAMS:]
        await asyncio.sleep(1.0)
        idle = rss(pid)
        spy = None
        if spy_out is not None:
            # Long enough for the run (it is stopped when the run ends).
            spy = turn_profile.record(pid, STREAM_TIMEOUT_S, spy_out, rate=100)
            await asyncio.sleep(0.5)
        via = await load(
            "through chatmem", port, chatmem_requests(sids, WARM_UP_STREAMS), True, pids, pid
        )
        via.idle_rss = idle
        if spy is not None:
            stop_spy(spy, spy_out)
        await asyncio.sleep(1.0)
        direct = await load(
            "fake model directly", fake_port, fake_requests(streams), False, pids, pid
        )
        async with AsyncRedis(port=redis.port) as r:
            info = await r.info("server")
        versions = {"python": sys.version.split()[0], "redis-server": info["redis_version"]}
        report([via, direct], streams, workers, versions)
        if opts.timeline:
            timeline(via)
        if spy_out is not None:
            per_stream = via.cpu_s["chatmem"] / streams * 1000
            turn_profile.report(
                "chatmem (py-spy) per stream", turn_profile.breakdown(spy_out), per_stream
            )
        if via.errors:
            lines = (work / "chatmem.log").read_text(errors="replace").splitlines()
            print("\nchatmem's log, the last lines:", *lines[-15:], sep="\n  ")
    if opts.gc_stats:  # written when chatmem exited
        gc_report(work / "gc.json", via)


def main() -> None:
    global CHUNKS, CHUNK_DELAY_S, RAMP_S
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="chatmem worker processes")
    p.add_argument("--profile", type=Path, help="run chatmem under cProfile, stats to this file")
    p.add_argument("--env", action="append", default=[], help="CHATMEM_X=V for chatmem")
    p.add_argument("--py-spy", type=Path, help="sample chatmem with py-spy, to this file")
    p.add_argument("--gc-stats", action="store_true", help="chatmem's GC pauses in the run")
    p.add_argument("--timeline", action="store_true", help="print the run second by second")
    p.add_argument("--chunks", type=int, default=CHUNKS, help="text deltas per reply")
    p.add_argument("--ramp-s", type=float, default=0.0, help="starts spread over this long")
    p.add_argument("--delay-ms", type=float, default=CHUNK_DELAY_S * 1000, help="between deltas")
    args = p.parse_args()
    if args.profile and args.gc_stats:
        raise SystemExit("--profile and --gc-stats each run chatmem their own way: one of them")
    CHUNKS, CHUNK_DELAY_S, RAMP_S = args.chunks, args.delay_ms / 1000, args.ramp_s
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith("CHATMEM_"):
            raise SystemExit(f"--env takes CHATMEM_NAME=value, not {item!r}")
        EXTRA_ENV[name] = value
    # Every stream is a socket here, one in chatmem and one to the model there.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.streams + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 2 * args.streams + 256:
        raise SystemExit(f"the file descriptor limit ({hard}) is too low for {args.streams}")
    import uvloop

    with tempfile.TemporaryDirectory(prefix="chatmem-stream-load-") as tmp:
        uvloop.run(run(Path(tmp), args))


if __name__ == "__main__":
    main()
