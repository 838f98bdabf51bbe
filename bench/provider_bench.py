"""Provider costs on this machine, each next to its peer.

0. CPU per whole upstream request (a 10-delta reply) with chatmem's own HTTP/1.1
   client and with httpx, under the same provider, alternating.
1. CPU per relayed chunk of OpenAICompatProvider against a fast fake server that
   runs in a process of its own (so only the client's CPU is counted), next to
   the official `openai` SDK reading the very same streams. Target: ≤ 30 µs.
2. The local SmolLM2 model: load time, time to first token for a ~50-token
   prompt (target ≤ 0.5 s) and decode speed (target ≥ 40 tokens/s).

    .venv/bin/python bench/provider_bench.py [--streams 20 --chunks 1000] [--skip-local]
        [--skip-relay] [--requests 2000] [--pace-ms 0.5] [--max-tokens 128] [--threads N ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.fake_openai

from openai import AsyncOpenAI  # noqa: E402
from tests.fake_openai_process import serve_in_process  # noqa: E402

from chatmem.config import LLMSettings  # noqa: E402
from chatmem.providers.base import GenerationParams  # noqa: E402
from chatmem.providers.http1_pool import Http1Client  # noqa: E402
from chatmem.providers.httpx_upstream import HttpxUpstream  # noqa: E402
from chatmem.providers.openai_compat import OpenAICompatProvider  # noqa: E402
from chatmem.providers.upstream import Timeouts  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
TARGET_US_PER_CHUNK = 30.0
TARGET_TTFT_S = 0.5
TARGET_TOKENS_PER_S = 40.0


@contextmanager
def fake_server(chunks: int, delay_s: float = 0.0) -> Iterator[str]:
    args = ["--chunks", str(chunks), "--delay-s", str(delay_s)]
    with serve_in_process([sys.executable, "-m", "tests.fake_openai", *args], cwd=ROOT) as (
        port,
        _,
    ):
        yield f"http://127.0.0.1:{port}/v1"


async def chatmem_stream(provider: OpenAICompatProvider) -> int:
    n = 0
    async for chunk in provider.stream(MESSAGES, GenerationParams(model="fake-model")):
        n += bool(chunk.text)
    return n


async def sdk_stream(client: AsyncOpenAI) -> int:
    n = 0
    stream = await client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.7,
        max_tokens=512,
    )
    async for chunk in stream:
        n += bool(chunk.choices and chunk.choices[0].delta.content)
    return n


async def measure(run_one: Callable[[], Awaitable[int]], streams: int) -> tuple[float, float, int]:
    """µs of process CPU per chunk, wall seconds, chunks, after two warm-up streams."""
    for _ in range(2):
        await run_one()
    chunks = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(streams):
        chunks += await run_one()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / chunks * 1e6, wall, chunks


async def relay_bench(base_url: str, streams: int) -> None:
    provider = OpenAICompatProvider(LLMSettings(base_url=base_url, api_key="bench"))
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    try:
        rows = [
            (
                "chatmem OpenAICompatProvider",
                await measure(lambda: chatmem_stream(provider), streams),
            ),
            ("openai SDK (AsyncOpenAI)", await measure(lambda: sdk_stream(client), streams)),
        ]
    finally:
        await provider.aclose()
        await client.close()
    for name, (us, wall, chunks) in rows:
        print(f"  {name:30s} {us:6.1f} µs CPU/chunk  ({chunks} chunks, {wall:.2f} s wall)")
    ours = rows[0][1][0]
    verdict = "met" if ours <= TARGET_US_PER_CHUNK else "MISSED"
    ratio = rows[1][1][0] / ours
    print(f"  target ≤ {TARGET_US_PER_CHUNK:.0f} µs/chunk: {verdict}; SDK/ours = {ratio:.1f}×")


def run_relay(streams: int, chunks: int, delay_s: float) -> None:
    pace = f", a pause of {delay_s * 1000:g} ms before each chunk" if delay_s else ", unpaced"
    print(f"relay: {streams} streams × {chunks} chunks, fake server in its own process{pace}")
    with fake_server(chunks, delay_s) as base_url:
        print(" asyncio loop:")
        asyncio.run(relay_bench(base_url, streams))
        try:
            import uvloop
        except ImportError:
            return
        print(" uvloop (what uvicorn uses when installed):")
        uvloop.run(relay_bench(base_url, streams))


async def breakdown_bench(base_url: str, chunks: int) -> None:
    """Where a paced chunk's CPU goes: the transport alone, then the whole relay."""
    import httpx

    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    body = b'{"model":"fake-model","messages":[{"role":"user","content":"x"}],"stream":true}'
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n"

    async def bare_socket() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + body)
        while not (await reader.read(65536)).endswith(b"0\r\n\r\n"):
            pass
        writer.close()

    class Reader(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.done = done

        def data_received(self, data: bytes) -> None:
            if data.endswith(b"0\r\n\r\n"):
                self.done.set_result(None)

    async def bare_protocol() -> None:
        done = asyncio.get_running_loop().create_future()
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: Reader(done), "127.0.0.1", port
        )
        transport.write(head.encode() + body)
        await done
        transport.close()

    own = Http1Client(base_url, headers={}, timeouts=Timeouts(5, 5, 5, 5), max_connections=4)

    async def own_bytes() -> None:
        async with own.post("chat/completions", body) as resp:
            async for _ in resp.aiter_bytes():
                pass

    async with httpx.AsyncClient(base_url=base_url) as client:

        async def httpx_bytes() -> None:
            async with client.stream("POST", "chat/completions", content=body) as resp:
                async for _ in resp.aiter_raw():
                    pass

        provider = OpenAICompatProvider(LLMSettings(base_url=base_url, api_key="bench"))
        rows: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("a bare asyncio socket read (streams)", bare_socket),
            ("a bare asyncio Protocol, no HTTP", bare_protocol),
            ("chatmem Http1Client, bytes only", own_bytes),
            ("httpx, bytes only (aiter_raw)", httpx_bytes),
            ("OpenAICompatProvider, parsed chunks", lambda: chatmem_stream(provider)),
        ]
        try:
            import aiohttp

            session = aiohttp.ClientSession()

            async def aiohttp_bytes() -> None:
                async with session.post(base_url + "/chat/completions", data=body) as resp:
                    async for _ in resp.content.iter_any():
                        pass

            rows.insert(3, ("aiohttp, bytes only", aiohttp_bytes))
        except ImportError:
            session = None
        try:
            for name, run_one in rows:
                await run_one()
                before = os.times()
                await run_one()
                after = os.times()
                user = (after.user - before.user) / chunks * 1e6
                system = (after.system - before.system) / chunks * 1e6
                print(f"  {name:38s} user {user:4.0f} µs + sys {system:3.0f} µs per chunk")
        finally:
            await provider.aclose()
            await own.aclose()
            if session is not None:
                await session.close()


def run_breakdown(chunks: int, delay_s: float) -> None:
    print(f"paced chunk breakdown: one stream of {chunks} chunks, {delay_s * 1000:g} ms apart")
    with fake_server(chunks, delay_s) as base_url:
        asyncio.run(breakdown_bench(base_url, chunks))


async def request_bench(base_url: str, requests: int) -> None:
    """CPU per whole upstream request (connect once, then keep-alive), alternating
    chatmem's own client and httpx under the same provider, round by round."""
    settings = LLMSettings(base_url=base_url, api_key="bench")
    t = Timeouts(5, 60, 60, 5)
    kw: dict[str, Any] = {"headers": {"Authorization": "Bearer bench"}, "timeouts": t}
    providers = {
        "chatmem Http1Client": OpenAICompatProvider(
            settings, upstream=Http1Client(base_url, max_connections=8, **kw)
        ),
        "httpx (plain pool)": OpenAICompatProvider(
            settings, upstream=HttpxUpstream(base_url, max_connections=8, **kw)
        ),
    }
    cpu = dict.fromkeys(providers, 0.0)
    try:
        for provider in providers.values():
            for _ in range(20):
                await chatmem_stream(provider)
        for _ in range(5):
            for name, provider in providers.items():
                cpu0 = time.process_time()
                for _ in range(requests // 5):
                    await chatmem_stream(provider)
                cpu[name] += time.process_time() - cpu0
    finally:
        for provider in providers.values():
            await provider.aclose()
    per = {name: total / requests * 1e6 for name, total in cpu.items()}
    for name, us in per.items():
        print(f"  {name:30s} {us:7.1f} µs CPU per request")
    ours, theirs = per.values()
    print(f"  own / httpx: {ours / theirs:.2f}")


def run_requests(requests: int, chunks: int) -> None:
    print(f"whole requests: {requests} each, a {chunks}-delta reply, unpaced, keep-alive")
    with fake_server(chunks) as base_url:
        print(" asyncio loop:")
        asyncio.run(request_bench(base_url, requests))
        import uvloop

        print(" uvloop:")
        uvloop.run(request_bench(base_url, requests))


PROMPTS = [
    "Can you suggest a simple dinner I could cook tonight with rice, eggs, spinach "
    "and a little cheese? Please keep the steps short and easy to follow.",
    "What are the main differences between a comet and an asteroid? Please answer "
    "in a way that a beginner in astronomy would understand without difficulty.",
    "I am planning a trip to Paris next spring with my two children. "
    "What are three things we should definitely see there, and why?",
    "My tomato plants have yellow leaves at the bottom and a few brown spots. "
    "What could be wrong with them, and what should I do this week?",
    "Explain to a curious twelve-year-old why the sky is blue during the day "
    "and turns red and orange at sunset, in a few short sentences.",
]
SYSTEM = "You are a helpful, friendly assistant. Answer clearly and briefly."


async def local_bench(max_tokens: int, threads: int | None) -> None:
    from chatmem.providers.local import LocalLlamaProvider, default_threads

    provider = LocalLlamaProvider(LLMSettings(provider="local", local_threads=threads))
    print(f"  llama.cpp threads: {threads or default_threads()}")
    t0 = time.perf_counter()
    await asyncio.to_thread(provider.load)
    t1 = time.perf_counter()
    await provider.warm_up()  # what the app does at startup: pages the weights in
    t2 = time.perf_counter()
    print(f"  {provider.info}")
    print(f"  load {t1 - t0:.2f} s, warm-up {t2 - t1:.2f} s")
    ttfts, rates = [], []
    try:
        for prompt in PROMPTS:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
            start = time.perf_counter()
            first = last = 0.0
            usage = None
            async for chunk in provider.stream(messages, GenerationParams(max_tokens=max_tokens)):
                now = time.perf_counter()
                if chunk.text and not first:
                    first = now
                last = now if chunk.text else last
                usage = chunk.usage or usage
            assert usage is not None and first
            ttft, rate = first - start, (usage.completion_tokens - 1) / max(last - first, 1e-9)
            ttfts.append(ttft)
            rates.append(rate)
            print(
                f"  prompt {usage.prompt_tokens:3d} tok: TTFT {ttft * 1000:5.0f} ms, "
                f"{usage.completion_tokens:3d} tokens at {rate:5.1f} tokens/s"
            )
    finally:
        await provider.aclose()
    ttft, rate = statistics.median(ttfts), statistics.median(rates)
    ttft_ok = "met" if ttft <= TARGET_TTFT_S else "MISSED"
    rate_ok = "met" if rate >= TARGET_TOKENS_PER_S else "MISSED"
    print(
        f"  median TTFT {ttft * 1000:.0f} ms, worst {max(ttfts) * 1000:.0f} ms "
        f"(target ≤ {TARGET_TTFT_S * 1000:.0f}: {ttft_ok}); median {rate:.1f} tokens/s, "
        f"worst {min(rates):.1f} (target ≥ {TARGET_TOKENS_PER_S:.0f}: {rate_ok})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="chatmem provider benchmark")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=1000, help="chunks per stream")
    parser.add_argument("--pace-ms", type=float, default=0.5, help="server pause per chunk")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-relay", action="store_true")
    parser.add_argument("--requests", type=int, default=2000, help="whole requests (0: skip)")
    parser.add_argument(
        "--threads", type=int, action="append", help="llama.cpp threads (repeatable)"
    )
    args = parser.parse_args()
    # Other work on the machine inflates every figure: say how busy it was.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}")
    # Unpaced, several chunks often share one socket read; paced, each chunk
    # arrives alone, as tokens from a real model do: the costlier, honest case.
    if args.requests:
        run_requests(args.requests, 10)
    if not args.skip_relay:
        run_relay(args.streams, args.chunks, 0.0)
        run_relay(args.streams, args.chunks, args.pace_ms / 1000)
        run_breakdown(4 * args.chunks, args.pace_ms / 1000)
    if not args.skip_local:
        print("local model (SmolLM2-135M-Instruct, llama.cpp):")
        for threads in args.threads or [None]:
            asyncio.run(local_bench(args.max_tokens, threads))


if __name__ == "__main__":
    main()
