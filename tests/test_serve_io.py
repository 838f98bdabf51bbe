"""`chatmem serve` runs uvicorn on uvloop and httptools (the C loop and parser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn

from chatmem.cli.serve import fast_io, run_server
from chatmem.config import Settings


def test_serve_names_uvloop_and_httptools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    run_server(Settings(data_dir=tmp_path, redis={"url": "redis://127.0.0.1:1/0"}))
    assert (seen["loop"], seen["http"]) == ("uvloop", "httptools")


def test_without_them_uvicorn_falls_back_to_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert fast_io() == {"loop": "asyncio", "http": "h11"}
