"""Background work (summary, memories, title: chat/background.py) asks the background
model when one is set, with each job's own sampling, and counts its tokens per job."""

from __future__ import annotations

from pathlib import Path

from chatmem.store.client import AnyRedis
from tests.fake_openai import FakeOpenAI
from tests.memory_model import MemoryModel, kind_of
from tests.support import eventually
from tests.test_memory_summary import app_client, metric, say, session


async def test_background_jobs_ask_the_background_model_and_count_their_tokens(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    model = MemoryModel()
    fake.respond = model
    async with app_client(
        redis_url, fake, tmp_data_dir, background_model="bg-small", extract_every_rounds=1
    ) as client:
        sid = await session(client, window=1)
        await say(client, sid, "I live in Lyon")
        # The first turn's jobs queued (and the summary started) before the next turn.
        await eventually(lambda: model.calls["title"], "the title job")
        for text in ("I have a cat", "I like tea"):
            await say(client, sid, text)
        await eventually(
            lambda: all(model.calls[k] for k in ("summary", "extract", "title")),
            "the three background jobs asked the model",
        )
        sampling = {
            kind_of(b): (b["model"], b["temperature"], b["max_tokens"]) for b in model.bodies
        }

        async def counted() -> bool:
            # A job's tokens are counted once its reply is read, a moment after the
            # model was asked: wait for them rather than race them.
            metrics = (await client.get("/metrics")).text
            return all(
                metric(metrics, f'chatmem_background_tokens_total{{kind="{kind}"}}') > 0
                for kind in ("summary", "memories", "title")
            )

        await eventually(counted, "every job's tokens counted")
    assert sampling["title"] == ("bg-small", 0.2, 24)
    assert sampling["summary"][:2] == ("bg-small", 0.2)
    assert sampling["extract"][:2] == ("bg-small", 0.0)
    assert sampling["chat"][0] != "bg-small"
