"""Run the HTTP server under uvicorn: one process, or several that share one Redis.

Several processes (workers, or the reloader's child) build their own settings from the
environment, so what the command line changed is put there for them; with no
`CHATMEM_REDIS_URL` the embedded Redis is started once, here in the parent, its address
handed down the same way, and stopped when uvicorn returns. Settings that would stop
the app from starting (auth keys, the JWT secret) are checked first, so a start-up that
fails leaves no redis-server behind.

The served app settles Python's garbage collector once its start-up is complete
(cli/collector.py `SettledGC`), so that a full collection does not stop every stream for
a second (docs/performance.md, "1 000 streams, again").

uvicorn rewrites the client address from X-Forwarded-For only for the proxies in
`CHATMEM_SERVER_TRUSTED_PROXIES` (by default for none, not uvicorn's 127.0.0.1): that
address is what failed authentication is throttled by and what the access log shows.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from chatmem.cli.collector import SettledGC
from chatmem.config import Settings
from chatmem.errors import StoreUnavailable


def served_app() -> SettledGC:
    """What `chatmem serve`'s workers run (uvicorn's app factory)."""
    from chatmem.api.app import create_app

    return SettledGC(create_app())


def fast_io() -> dict[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (C, both dependencies
    of chatmem) when they import, else uvicorn's pure-Python ones. Named, not left to
    uvicorn's "auto", so that a broken install shows in the start-up options."""
    import importlib.util

    has = importlib.util.find_spec
    return {
        "loop": "uvloop" if has("uvloop") else "asyncio",
        "http": "httptools" if has("httptools") else "h11",
    }


LOG_LEVELS = frozenset({"critical", "error", "warning", "info", "debug", "trace"})
APP_FACTORY = "chatmem.cli.serve:served_app"


def startup_banner(settings: Settings, *, workers: int = 1) -> str:
    """What `chatmem serve` says before it starts: where, which model, where the data
    lives and who may call it."""
    from chatmem.auth import OPEN_MODE_USER_ID

    server, llm, auth = settings.server, settings.llm, settings.auth
    host = f"[{server.host}]" if ":" in server.host else server.host
    if llm.resolved_provider == "local":
        from chatmem.providers.local import bundled_model_path

        path = llm.local_model_path or bundled_model_path()
        model = f"{path.name if path else 'none installed'} (local, llama.cpp)"
    else:
        model = f"{llm.model or 'the server default'} at {llm.base_url or 'api.openai.com'}"
    if auth.keys.strip() and auth.jwt_secret:
        mode = "API keys and JWTs"
    elif auth.keys.strip():
        mode = "API keys"
    elif auth.jwt_secret:
        mode = "JWTs"
    else:
        mode = f"open (X-User-Id, else user {OPEN_MODE_USER_ID!r}; everyone is admin)"
    redis = "embedded (in the data dir)" if settings.redis.url is None else "CHATMEM_REDIS_URL"
    rows = [
        (
            "url",
            f"http://{host}:{server.port}/" + (f"  ({workers} workers)" if workers > 1 else ""),
        ),
        ("model", model),
        ("data dir", str(settings.data_dir)),
        ("redis", redis),
        ("auth", mode),
    ]
    return "chatmem\n" + "".join(f"  {k:<9}{v}\n" for k, v in rows)


def run_server(
    settings: Settings, *, workers: int = 1, reload: bool = False, log_level: str = "info"
) -> None:
    """Serve until interrupted on `settings.server.host` and `.port`."""
    import uvicorn

    from chatmem.api.app import create_app
    from chatmem.auth import Authenticator
    from chatmem.ops.embedded import EmbeddedRedis

    server = settings.server
    trusted = ",".join(p.strip() for p in server.trusted_proxies.split(",") if p.strip())
    common: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "log_level": log_level,
        "timeout_graceful_shutdown": int(server.shutdown_grace_s),
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        **fast_io(),
    }
    if workers == 1 and not reload:
        # uvicorn re-raises Ctrl+C after a clean shutdown; the user asked for exactly that.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.run(SettledGC(create_app(settings)), **common)
        return
    Authenticator(settings.auth)  # raises on bad keys or secret, before Redis starts
    os.environ["CHATMEM_SERVER_HOST"] = server.host
    os.environ["CHATMEM_SERVER_PORT"] = str(server.port)
    embedded = None
    if settings.redis.url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        try:
            os.environ["CHATMEM_REDIS_URL"] = embedded.start()
        except RuntimeError as exc:
            raise StoreUnavailable(str(exc)) from exc
    try:
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            workers=workers,
            reload=reload,
            reload_dirs=[str(Path(__file__).resolve().parent)] if reload else None,
            **common,
        )
    finally:
        if embedded is not None:
            embedded.stop()
