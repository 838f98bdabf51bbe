"""A background job whose process is SIGKILLed is done by another process (SPEC §2b):
real `python -m chatmem serve` processes on the test Redis, the fake model here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.fake_openai import FakeOpenAI, Reply
from tests.live_uvicorn import ChatmemProcess
from tests.memory_model import MemoryModel, kind_of
from tests.support import eventually, process_env

H = {"X-User-Id": "killed-job"}


def env(redis_url: str, fake: FakeOpenAI) -> dict[str, str]:
    return process_env(redis_url, fake.base_url) | {
        "CHATMEM_JOBS_ENABLED": "true",
        "CHATMEM_JOBS_CLAIM_IDLE_MS": "1000",
        "CHATMEM_JOBS_HOUSEKEEPING_MS": "100",
        "CHATMEM_MEMORY_SUMMARY_BATCH_ROUNDS": "1",
        "CHATMEM_MEMORY_GENERATE_TITLES": "false",
    }


async def test_a_job_whose_process_is_killed_is_done_by_another(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    model = MemoryModel()

    def respond(body: Any) -> Reply:
        reply = model(body)
        if kind_of(body) == "summary" and model.calls["summary"] == 1:
            reply.headers_delay_s = 20  # the first process never sees its answer
        return reply

    fake.respond = respond
    a = ChatmemProcess(env(redis_url, fake), tmp_path / "a" / "data").start()
    b = ChatmemProcess(env(redis_url, fake), tmp_path / "b" / "data")
    try:
        a.wait_ready()
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(
                f"{a.url}/v1/sessions", json={"character_id": "luna", "window_size": 1}, headers=H
            )
            sid = r.json()["session"]["session_id"]
            for text in ("I have a dog called Bruno.", "I live in Gent.", "I like waffles."):
                r = await c.post(
                    f"{a.url}/v1/sessions/{sid}/messages", json={"content": text}, headers=H
                )
                assert r.status_code == 200, r.text
            await eventually(lambda: model.calls["summary"] == 1, "the job taken by process a")
            a.kill()
            b.start().wait_ready()

            async def summary() -> str:
                r = await c.get(f"{b.url}/v1/sessions/{sid}/context", headers=H)
                s = r.json()["memory"]["summary"]
                return str(s["text"]) if s and s["covers_messages"] else ""

            text = await eventually(summary, "process b to do the job", timeout_s=30)
            assert "Bruno" in text and model.calls["summary"] >= 2

            async def done() -> bool:
                # The summary is stored before the job is acknowledged and counted.
                metrics = (await c.get(f"{b.url}/metrics")).text
                return 'chatmem_jobs_done_total{kind="summary"} 1.0' in metrics

            await eventually(done, "process b to count the job done")
    finally:
        a.stop()
        b.stop()
