"""Memory beyond the window: how many early facts does the context of round 40 still hold?

A scripted 40-round conversation: eight facts about the user in rounds 1–8 ("My sister
is called Mei.", …), then small talk, then at round 40 "What do you remember about me?".
The window is 4 rounds, so the facts left it at round 12. The share of the facts found
(by string match: "Mei", "Porto", …) in the context sent at round 40 is measured for
four memory policies of the character — window only, summary, memories, both — with
two models doing the background work:

- `perfect`: a stand-in that answers summaries perfectly (the old notes plus every new
  user line, verbatim) and extracts exactly the fact statements: the upper bound;
- `embedded`: the bundled SmolLM2-135M (llama.cpp, CPU), as chatmem runs it with no
  model configured.

Chat replies come from a canned stand-in in both ("I see."), so the figures measure
memory, not the chat model, and the run takes minutes, not hours. Also measured: the
lag of summary jobs (queued → stored; the worker runs in the same process, one job at a
time), the extra model tokens per round spent on background work (prompt + completion),
and the Redis bytes of the session (MEMORY USAGE of its keys and its memories hash).

    .venv/bin/python bench/memory_recall.py [--models perfect,embedded] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from chatmem.chat.runtime import running  # noqa: E402
from chatmem.chat.service import ChatService  # noqa: E402
from chatmem.config import JobSettings, LLMSettings, MemorySettings, RedisSettings, Settings  # noqa: E402
from chatmem.memory_prompts import EXTRACT_TASK, SUMMARY_TASK, TITLE_TASK  # noqa: E402
from chatmem.models import Character, MemoryPolicy  # noqa: E402
from chatmem.providers.base import (  # noqa: E402
    ChatProvider,
    GenerationParams,
    ModelInfo,
    StreamChunk,
)
from chatmem.store import keys  # noqa: E402

FACTS = [
    ("My sister is called Mei.", "mei"),
    ("I live in Porto.", "porto"),
    ("My dog is named Bruno.", "bruno"),
    ("I work as a nurse.", "nurse"),
    ("I prefer green tea.", "green tea"),
    ("My birthday is on March 3.", "march 3"),
    ("I play the cello.", "cello"),
    ("I am allergic to peanuts.", "peanuts"),
]
ROUNDS = 40
WINDOW_ROUNDS = 4
POLICIES = {
    "window only": MemoryPolicy(summary=False, memories=False),
    "summary": MemoryPolicy(summary=True, memories=False),
    "memories": MemoryPolicy(summary=False, memories=True),
    "both": MemoryPolicy(summary=True, memories=True),
}
SMALL_TALK = [
    "Tell me a short fact about the sea.",
    "What is a good name for a boat?",
    "Say something about autumn.",
    "Give me a one-line joke.",
]


def kind_of(messages: Sequence[Mapping[str, str]]) -> str:
    first = messages[0]["content"] if messages else ""
    for kind, task in (("summary", SUMMARY_TASK), ("extract", EXTRACT_TASK)):
        if first.startswith(task):
            return kind
    return "title" if first.startswith(TITLE_TASK) else "chat"


class Canned:
    """Replies of the chat turns, and the perfect background worker."""

    info = ModelInfo("canned", 8192)

    async def stream(
        self, messages: Sequence[Mapping[str, str]], params: GenerationParams
    ) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(self.answer(messages), finish_reason="stop")

    @staticmethod
    def answer(messages: Sequence[Mapping[str, str]]) -> str:
        kind = kind_of(messages)
        prompt = messages[-1]["content"]
        if kind == "summary":
            notes, _, new = prompt.partition("\n\nNew messages:\n")
            notes = notes.removeprefix("Notes so far:\n")
            user = [ln for ln in new.splitlines() if ln.startswith("User: ")]
            return "\n".join(([] if notes == "(none yet)" else [notes]) + user)
        if kind == "extract":
            _, _, new = prompt.partition("\n\nNew messages:\n")
            facts = {s for s, _ in FACTS}
            said = [ln.removeprefix("User: ") for ln in new.splitlines()]
            return json.dumps({"ops": [{"op": "add", "text": s} for s in said if s in facts]})
        return "Small talk" if kind == "title" else "I see."

    async def aclose(self) -> None:
        return None


class Split:
    """Chat turns to `Canned`, background work to `background`."""

    def __init__(self, background: ChatProvider) -> None:
        self.background = background
        self.canned = Canned()

    @property
    def info(self) -> ModelInfo:
        return self.canned.info

    def stream(
        self, messages: Sequence[Mapping[str, str]], params: GenerationParams
    ) -> AsyncIterator[StreamChunk]:
        target = self.canned if kind_of(messages) == "chat" else self.background
        return target.stream(messages, params)

    async def aclose(self) -> None:
        await self.background.aclose()


class LagRecorder:
    """Stands in for the job lag histogram: keeps every summary job's lag."""

    def __init__(self) -> None:
        self.kind = ""
        self.summary_s: list[float] = []

    def labels(self, kind: str) -> LagRecorder:
        self.kind = kind
        return self

    def observe(self, seconds: float) -> None:
        if self.kind == "summary":
            self.summary_s.append(seconds)


async def idle(service: ChatService, timeout_s: float) -> None:
    """Until no job is queued, running or waiting for a retry."""
    deadline = time.monotonic() + timeout_s
    await asyncio.sleep(0.05)  # the last turn's jobs are queued by a task of their own
    while time.monotonic() < deadline:
        s = await service.background.queue.stats()
        if s.queued + s.running + s.delayed == 0:
            return
        await asyncio.sleep(0.05)


async def session_bytes(service: ChatService, uid: str, sid: str, cid: str) -> int:
    redis = service.store.redis
    names = [*keys.session_keys(uid, sid)[:3], keys.memories_key(uid, cid)]
    return sum([int(await redis.memory_usage(k) or 0) for k in names])


async def run_policy(service: ChatService, name: str, policy: MemoryPolicy) -> dict[str, Any]:
    cid = "bench-" + name.replace(" ", "-")
    await service.characters.create(
        Character(
            id=cid, name="Sam", system_prompt="You are Sam, a friendly companion.", memory=policy
        )
    )
    uid = f"recall-{cid}"
    meta, _ = await service.create_session(uid, cid, window_size=WINDOW_ROUNDS)
    sid = meta.session_id
    tokens_before = _background_tokens(service)
    context: list[dict[str, str]] = []
    for n in range(1, ROUNDS + 1):
        if n <= len(FACTS):
            text = FACTS[n - 1][0]
        elif n < ROUNDS:
            text = SMALL_TALK[n % len(SMALL_TALK)]
        else:
            await idle(service, timeout_s=600)  # what the summary and memories hold by now
            text = "What do you remember about me?"
        gen = await service.prepare_turn(uid, sid, text)
        if n == ROUNDS:
            context = gen.context.messages
        await service.complete(gen)
    await idle(service, timeout_s=600)
    seen = " ".join(m["content"] for m in context).lower()
    after = await service.store.get_meta(uid, sid)
    mems = await service.memories.list_for(uid, cid)
    found = [key for _, key in FACTS if key in seen]
    return {
        "policy": name,
        "recall": len(found) / len(FACTS),
        "found": found,
        "context_messages": len(context),
        "extra_tokens_per_round": (_background_tokens(service) - tokens_before) / ROUNDS,
        "redis_bytes": await session_bytes(service, uid, sid, cid),
        "summary": after.summary.text if after.summary else None,
        "memories": [m["text"] for m in mems],
    }


def _background_tokens(service: ChatService) -> float:
    total = 0.0
    for metric in service.metrics.background_tokens.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def run_model(model: str, redis_url: str | None) -> dict[str, Any]:
    from chatmem.providers.factory import make_provider

    background: ChatProvider = Canned()
    if model == "embedded":
        background = make_provider(LLMSettings(provider="local", max_tokens=200))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            redis=RedisSettings(url=redis_url),
            llm=LLMSettings(provider="openai", base_url="http://127.0.0.1:9/v1", max_tokens=16),
            memory=MemorySettings(window_size=WINDOW_ROUNDS, background_max_tokens=200),
            jobs=JobSettings(housekeeping_ms=50, poll_block_ms=50),
            _env_file=None,  # type: ignore[call-arg]
        )
        async with running(settings, provider=Split(background)) as runtime:
            service = runtime.service
            lags = LagRecorder()
            service.metrics.job_lag = lags  # type: ignore[assignment]
            rows = [await run_policy(service, name, p) for name, p in POLICIES.items()]
            failed = {
                f"{s.labels['kind']}/{s.labels['outcome']}": s.value
                for m in service.metrics.jobs_failed.collect()
                for s in m.samples
                if s.name.endswith("_total")
            }
            done = {
                s.labels["kind"]: s.value
                for m in service.metrics.jobs_done.collect()
                for s in m.samples
                if s.name.endswith("_total")
            }
    lag = sorted(lags.summary_s)
    return {
        "model": model,
        "rows": rows,
        "summary_jobs": len(lag),
        "jobs_done": done,
        "jobs_failed": failed,
        "lag_p50_s": statistics.median(lag) if lag else None,
        "lag_p99_s": lag[min(len(lag) - 1, int(len(lag) * 0.99))] if lag else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="perfect,embedded")
    parser.add_argument("--redis-url", default=None, help="default: the embedded redis-server")
    args = parser.parse_args()
    results = []
    for model in args.models.split(","):
        started = time.monotonic()
        res = asyncio.run(run_model(model, args.redis_url))
        res["seconds"] = round(time.monotonic() - started, 1)
        results.append(res)
        print(
            f"\n{model}: {res['seconds']} s; summary jobs {res['summary_jobs']}, lag p50 "
            f"{res['lag_p50_s']} s, p99 {res['lag_p99_s']} s"
        )
        print(f"{'policy':<12} {'recall':>7} {'extra tok/round':>16} {'redis bytes':>12}  found")
        for r in res["rows"]:
            print(
                f"{r['policy']:<12} {r['recall']:>7.0%} {r['extra_tokens_per_round']:>16.0f} "
                f"{r['redis_bytes']:>12}  {', '.join(r['found'])}"
            )
    print("\n" + json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
