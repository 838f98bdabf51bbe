"""Run the real app in-process for API tests: real Redis, real lifespan, httpx.ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from chatmem.api.app import create_app
from chatmem.config import (
    AuthSettings,
    LimitSettings,
    LLMSettings,
    MemorySettings,
    RedisSettings,
    Settings,
)


def make_test_settings(
    redis_url: str,
    llm_base_url: str,
    data_dir: Path,
    *,
    auth_keys: str = "",
    jwt_secret: str | None = None,
    llm: dict[str, Any] | None = None,
    memory: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
) -> Settings:
    """Settings that ignore the environment and .env: tests say everything they need."""
    return Settings(
        data_dir=data_dir,
        redis=RedisSettings(url=redis_url),
        llm=LLMSettings(
            provider="openai",
            base_url=llm_base_url,
            api_key="test-key",
            model="fake-model",
            max_retries=0,
            **(llm or {}),
        ),
        memory=MemorySettings(**(memory or {})),
        auth=AuthSettings(keys=auth_keys, jwt_secret=jwt_secret, **(auth or {})),
        limits=LimitSettings(
            **(
                {
                    "turns_per_minute": 100_000,
                    "writes_per_minute": 100_000,
                    "streams_per_user": 1000,
                }
                | (limits or {})
            ),
        ),
        _env_file=None,  # type: ignore[call-arg]
    )


@asynccontextmanager
async def running_app(
    settings: Settings, **client_kwargs: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan run, and a client talking to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://chatmem.test", timeout=30, **client_kwargs
        ) as client:
            yield app, client
