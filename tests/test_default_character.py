"""The default character suits the model (SPEC §5): the server names it, the page
preselects it (tests/web/test_page_defaults.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.api.app import create_app
from chatmem.characters import CharacterRegistry
from chatmem.config import LLMSettings
from chatmem.providers.base import ModelInfo
from chatmem.providers.factory import suggested_character
from chatmem.store.characters import CharacterStore
from tests.api_support import make_test_settings, running_app


def test_the_bundled_local_model_suggests_luna() -> None:
    assert suggested_character(LLMSettings()) == "luna"


@pytest.mark.parametrize(
    "settings",
    [
        LLMSettings(base_url="http://127.0.0.1:9/v1"),
        LLMSettings(api_key="sk-0123456789abcdef"),
        LLMSettings(provider="local", local_model_path=Path("/models/qwen.gguf")),
    ],
)
def test_other_models_suggest_nothing(settings: LLMSettings) -> None:
    assert suggested_character(settings) is None


def registry_with(redis_client: Any, preferred: str | None) -> CharacterRegistry:
    return CharacterRegistry(CharacterStore(redis_client), preferred_default=preferred)


def test_registry_default(redis_client: Any) -> None:
    assert registry_with(redis_client, None).default_id == "assistant"
    assert registry_with(redis_client, "luna").default_id == "luna"
    # A default that names no built-in or directory character falls back.
    assert registry_with(redis_client, "no-such-one").default_id == "assistant"


async def test_the_server_names_the_local_models_default(
    redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    settings = make_test_settings(redis_url, "http://127.0.0.1:9/v1", tmp_path)
    # As the bundled model would be configured: no base URL, no key.
    local = settings.model_copy(update={"llm": LLMSettings(provider="local")})
    app = create_app(local, provider=_NoModel())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        got = (await client.get("/v1/characters", headers={"X-User-Id": "u1"})).json()
        assert got["default"] == "luna"
        r = await client.post("/v1/sessions", json={}, headers={"X-User-Id": "u1"})
        assert r.json()["session"]["character_id"] == "luna"


async def test_configured_default_wins(redis_url: str, redis_client: Any, tmp_path: Path) -> None:
    settings = make_test_settings(redis_url, "http://127.0.0.1:9/v1", tmp_path)
    settings = settings.model_copy(update={"default_character": "teacher"})
    async with running_app(settings) as (_, client):
        r = await client.get("/v1/characters", headers={"X-User-Id": "u1"})
        assert r.json()["default"] == "teacher"


class _NoModel:
    """A provider that is never asked for a reply here."""

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name="none", context_window=2048)

    def stream(self, messages: Any, params: Any) -> Any:
        raise AssertionError("no reply expected")

    async def aclose(self) -> None:
        return None
