"""The composition root (chat/runtime.py): what starts with the service, and what is
closed again, in order, also when start-up fails half-way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chatmem.api.app import create_app
from chatmem.chat.runtime import open_store, running
from chatmem.cli.inprocess import app_client
from chatmem.config import LLMSettings, Settings
from chatmem.ops.embedded import SOCKET_NAME
from chatmem.providers.openai_compat import OpenAICompatProvider
from tests.api_support import make_test_settings
from tests.fake_openai import FakeOpenAI


class SlowToWarmProvider(OpenAICompatProvider):
    """A provider whose warm-up (as the local model's: load and page in the weights)
    takes as long as the test says."""

    def __init__(self, settings: LLMSettings) -> None:
        super().__init__(settings)
        self.warming = asyncio.Event()
        self.release = asyncio.Event()
        self.warmed = False
        self.cancelled = False

    async def warm_up(self) -> None:
        self.warming.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.warmed = True


async def test_warm_up_runs_at_start_up_without_holding_up_readiness(
    redis_url: str, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    """The local provider's `warm_up()` was documented as run at start-up but was never
    called: the first user paid for loading the model."""
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir)
    provider = SlowToWarmProvider(settings.llm)
    async with app_client(create_app(settings, provider=provider)) as http:
        await asyncio.wait_for(provider.warming.wait(), 5)
        r = await http.get("/ready")
        assert r.status_code == 200, r.text  # ready while the model still loads
        r = await http.post("/v1/sessions", json={"character_id": "assistant"})
        assert r.status_code == 201
        provider.release.set()
        for _ in range(100):
            if provider.warmed:
                break
            await asyncio.sleep(0.01)
        assert provider.warmed


async def test_a_warm_up_still_running_at_shutdown_is_cancelled(
    redis_url: str, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir)
    provider = SlowToWarmProvider(settings.llm)
    async with running(settings, provider):
        await asyncio.wait_for(provider.warming.wait(), 5)
    assert provider.cancelled and not provider.warmed


def _embedded_settings(data_dir: Path, fake: FakeOpenAI) -> Settings:
    settings = make_test_settings("unused", fake.base_url, data_dir)
    settings.redis = settings.redis.model_copy(update={"url": None})
    return settings


async def test_open_store_is_the_servers_store_and_closes_the_embedded_redis(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    settings = _embedded_settings(tmp_path, fake)
    async with open_store(settings) as store:
        await store.create_session("alice", "assistant", session_id="s1")
    assert not (tmp_path / SOCKET_NAME).exists()
    async with running(settings) as runtime:
        assert [m.session_id for m in await runtime.service.list_sessions("alice")] == ["s1"]
    assert not (tmp_path / SOCKET_NAME).exists()
