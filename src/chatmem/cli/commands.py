"""The `chatmem` command line (typer + rich).

`serve` runs the HTTP server. `chat`, `sessions`, `history`, `users` and `characters`
talk to the native API: of a running server with `--url`, else of an app run in-process
on the same settings (the embedded Redis by default). `export` and `import` read and
write the memory store directly, ids included. Exit codes: 0 ok, 1 failure, 2 bad
arguments or settings (a one-line error, never a traceback).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import pydantic
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from chatmem.cli.chat import ChatOptions, money, printable, run_chat
from chatmem.cli.client import ApiError, ChatmemClient, auth_headers, connect
from chatmem.config import Settings
from chatmem.errors import ChatmemError, InvalidInput

T = TypeVar("T")

app = typer.Typer(
    help="chatmem: a chat backend with conversation memory.",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks with locals could print API keys; and errors are one line anyway.
    pretty_exceptions_enable=False,
)
characters_app = typer.Typer(
    help="List the characters (the default), or import a Character Card V2 JSON file.",
    invoke_without_command=True,
)
app.add_typer(characters_app, name="characters")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

UrlOpt = typer.Option(
    None,
    "--url",
    envvar="CHATMEM_URL",
    help="a running chatmem server (default: an in-process app on the local settings)",
)
UserOpt = typer.Option(None, "--user", "-u", help="user id (open mode: sent as X-User-Id)")
KeyOpt = typer.Option(
    None, "--api-key", envvar="CHATMEM_API_KEY", help="API key, when the server has auth on"
)
JsonOpt = typer.Option(False, "--json", help="print JSON instead of a table")

# HTTP statuses that mean "what you asked for is wrong", as opposed to "it failed".
_ARGUMENT_STATUSES = {400, 401, 403, 404, 422}


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(Text(f"chatmem: error: {printable(message)}"), soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Known failures as one line on stderr and an exit code, not a traceback."""
    try:
        yield
    except ApiError as exc:
        fail(exc.message, 2 if exc.status in _ARGUMENT_STATUSES else 1)
    except InvalidInput as exc:
        fail(exc.message, 2)
    except ChatmemError as exc:
        fail(exc.message, 1)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        fail(f"invalid setting {where}: {errors[0]['msg'] if errors else exc}", 2)
    except OSError as exc:
        fail(str(exc), 1)


def load_settings(redis_url: str | None = None) -> Settings:
    with reported_errors():
        settings = Settings()
        if redis_url:
            settings.redis = settings.redis.model_copy(update={"url": redis_url})
        return settings


def call_api(
    url: str | None,
    user: str | None,
    api_key: str | None,
    fn: Callable[[ChatmemClient], Awaitable[T]],
) -> T:
    async def main() -> T:
        async with connect(url, auth_headers(user, api_key)) as http:
            return await fn(ChatmemClient(http))

    with reported_errors():
        return asyncio.run(main())


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def when(ts: float | int | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")


def cell(value: Any) -> Text:
    # Text, never a markup string: titles and messages are user data.
    return Text(printable(str(value)))


# --- serve ----------------------------------------------------------------------------


@app.command()
def serve(
    host: str | None = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int | None = typer.Option(None, min=1, max=65535, help="port (default 8000)"),
    workers: int | None = typer.Option(None, min=1, max=64, help="worker processes"),
    reload: bool = typer.Option(False, "--reload", help="restart when the code changes (dev)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Run the HTTP server: the page at /, the API at /v1, the docs at /docs."""
    from chatmem.cli.serve import LOG_LEVELS, run_server

    settings = load_settings()
    workers = workers or settings.server.workers
    if reload and workers > 1:
        fail("--reload works with one worker only", 2)
    if log_level.lower() not in LOG_LEVELS:
        fail(f"unknown log level {log_level!r}", 2)
    settings.server = settings.server.model_copy(
        update={"host": host or settings.server.host, "port": port or settings.server.port}
    )
    with reported_errors():
        run_server(settings, workers=workers, reload=reload, log_level=log_level.lower())


# --- chat -----------------------------------------------------------------------------


@app.command()
def chat(
    character: str | None = typer.Option(None, "--character", "-c", help="character id"),
    session: str | None = typer.Option(None, "--session", "-s", help="resume this session"),
    title: str = typer.Option("", help="title of a new session"),
    url: str | None = UrlOpt,
    user: str | None = UserOpt,
    api_key: str | None = KeyOpt,
) -> None:
    """Chat in the terminal, replies streamed (Ctrl+C stops one, Ctrl+D quits)."""
    opts = ChatOptions(
        url=url, user=user, api_key=api_key, character=character, session=session, title=title
    )
    with reported_errors():
        run_chat(out, opts)


# --- reading --------------------------------------------------------------------------


@app.command()
def sessions(
    url: str | None = UrlOpt,
    user: str | None = UserOpt,
    api_key: str | None = KeyOpt,
    limit: int = typer.Option(100, min=1, max=1000, help="at most this many"),
    as_json: bool = JsonOpt,
) -> None:
    """Your sessions, most recently active first."""
    rows = call_api(url, user, api_key, lambda api: api.sessions(limit))
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no sessions")
        return
    # Ids are what the other commands take: never cut; the preview gives way first.
    table = Table(
        Column("session", no_wrap=True),
        "title",
        "character",
        "msgs",
        "tokens",
        "cost",
        Column("active", no_wrap=True),
        Column("preview", max_width=40, no_wrap=True, overflow="ellipsis"),
    )
    for s in rows:
        usage = s.get("usage") or {}
        table.add_row(
            cell(s["session_id"]),
            cell(s["title"]),
            cell(s["character_id"]),
            cell(s["message_count"]),
            cell(usage.get("total_tokens", 0)),
            cell(money(usage.get("cost_usd"))),
            cell(when(s.get("last_active_at"))),
            cell(s.get("preview", "")),
        )
    out.print(table)


@app.command()
def history(
    session: str = typer.Argument(..., help="session id"),
    url: str | None = UrlOpt,
    user: str | None = UserOpt,
    api_key: str | None = KeyOpt,
    limit: int = typer.Option(50, min=1, max=100_000, help="the newest this many messages"),
    as_json: bool = JsonOpt,
) -> None:
    """The messages of one of your sessions, oldest first."""
    msgs = call_api(url, user, api_key, lambda api: api.history(session, limit))
    if as_json:
        print_json(msgs)
        return
    for m in msgs:
        stamp = Text(when(m.get("timestamp")), "dim")
        who = Text(f" {m['role']:>9} ", "bold cyan" if m["role"] == "user" else "bold green")
        line = Text.assemble(stamp, who, printable(m["content"]))
        if (m.get("metadata") or {}).get("interrupted"):
            line.append(" [stopped]", "dim")
        out.print(line, soft_wrap=True)


@app.command()
def users(
    url: str | None = UrlOpt,
    api_key: str | None = KeyOpt,
    limit: int = typer.Option(100, min=1, max=10_000, help="at most this many"),
    as_json: bool = JsonOpt,
) -> None:
    """All users with data, and their totals (admin)."""

    async def fetch(api: ChatmemClient) -> list[dict[str, Any]]:
        listing = await api.users(limit)
        return [await api.user(uid) for uid in listing["users"]]

    rows = call_api(url, None, api_key, fetch)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no users")
        return
    table = Table(Column("user", no_wrap=True), "sessions", "messages", "tokens", "cost")
    for u in rows:
        usage = u.get("usage") or {}
        table.add_row(
            cell(u["user_id"]),
            cell(len(u.get("sessions", []))),
            cell(u.get("message_count", 0)),
            cell(usage.get("total_tokens", 0)),
            cell(money(usage.get("cost_usd"))),
        )
    out.print(table)


# --- characters -----------------------------------------------------------------------


@characters_app.callback()
def characters(
    ctx: typer.Context,
    url: str | None = UrlOpt,
    api_key: str | None = KeyOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the characters (the default), or import a Character Card V2 JSON file."""
    ctx.obj = {"url": url, "api_key": api_key}
    if ctx.invoked_subcommand is not None:
        return
    data = call_api(url, None, api_key, lambda api: api.characters())
    if as_json:
        print_json(data)
        return
    table = Table(Column("id", no_wrap=True), "name", "greeting", "description")
    for c in data["characters"]:
        mark = " (default)" if c["id"] == data.get("default") else ""
        table.add_row(
            cell(c["id"] + mark), cell(c["name"]), cell(c["greeting"]), cell(c["description"])
        )
    out.print(table)


@characters_app.command("import")
def characters_import(
    ctx: typer.Context,
    card: Annotated[Path, typer.Argument(help="a Character Card V2 JSON file (chara_card_v2)")],
) -> None:
    """Import a Character Card V2 (admin)."""
    doc = read_json(card)
    opts = ctx.obj or {}
    created = call_api(opts.get("url"), None, opts.get("api_key"), lambda a: a.import_card(doc))
    out.print(Text(f"imported {printable(created['id'])} ({printable(created['name'])})"))


def read_json(path: Path) -> Any:
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", 2)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        fail(f"{path} is not valid JSON: {exc}", 2)


# --- export / import ------------------------------------------------------------------

RedisUrlOpt = typer.Option(
    None, "--redis-url", help="this Redis instead of CHATMEM_REDIS_URL or the embedded one"
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


@app.command()
def export(
    user: str | None = typer.Option(None, "--user", "-u", help="only this user (default: all)"),
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="file (default: stdout)")
    ] = None,
    redis_url: str | None = RedisUrlOpt,
) -> None:
    """Export sessions with their meta and messages as JSON."""
    from chatmem.chat.runtime import open_store
    from chatmem.ids import validate_id
    from chatmem.ops.transfer import export_sessions, sessions_to_export
    from chatmem.permissions import write_private

    settings = load_settings(redis_url)
    with reported_errors():
        if user is not None:
            validate_id(user, "user id")

    async def main() -> dict[str, Any]:
        async with open_store(settings) as store:
            metas = await sessions_to_export(store, user)
            with _progress() as progress:
                task = progress.add_task("exporting", total=len(metas))
                return await export_sessions(store, metas, lambda n: progress.advance(task, n))

    with reported_errors():
        doc = asyncio.run(main())
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        if out_file is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:  # every conversation exported: the owner's only
            write_private(out_file, data)
    n_msgs = sum(len(s["messages"]) for s in doc["sessions"])
    err.print(f"exported {len(doc['sessions'])} sessions, {n_msgs} messages")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="a file made by `chatmem export` (- for stdin)")],
    redis_url: str | None = RedisUrlOpt,
) -> None:
    """Import an export: ids kept, whatever is already there skipped (idempotent)."""
    from chatmem.chat.runtime import open_store
    from chatmem.ops.transfer import import_sessions, parse_export

    doc = read_json(file)
    with reported_errors():
        sessions = parse_export(doc)
    settings = load_settings(redis_url)

    async def main() -> Any:
        async with open_store(settings) as store:
            with _progress() as progress:
                task = progress.add_task("importing", total=len(sessions))
                return await import_sessions(store, sessions, lambda n: progress.advance(task, n))

    with reported_errors():
        report = asyncio.run(main())
    err.print(
        f"imported {report.sessions} sessions: {report.messages_added} messages added, "
        f"{report.messages_skipped} already there"
    )


# --- size -----------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@app.command()
def size(
    users: int = typer.Option(..., min=1, help="users with live sessions (active within the TTL)"),
    messages: int = typer.Option(..., min=0, max=100_000, help="stored messages per user"),
    message_chars: int = typer.Option(400, min=1, help="average characters a message"),
    sessions: int = typer.Option(1, min=1, max=1000, help="sessions per user"),
) -> None:
    """Estimate the Redis memory for a load (measured in a scratch redis-server)."""
    from chatmem.ops.sizing import Load, estimate, measure_in_scratch

    max_messages = load_settings().memory.max_messages
    load = Load(users, messages, message_chars, sessions)
    with reported_errors():
        est = estimate(load, measure_in_scratch(load, max_messages=max_messages))
    out.print(
        f"{users:,} users × {messages:,} messages of ~{message_chars:,} characters "
        f"({sessions:,} session{'s' if sessions > 1 else ''} each); stored after trimming "
        f"to max_messages {max_messages:,}: {est.footprint.stored_messages:,} a user, "
        f"{est.bytes_per_message:,.0f} bytes a message"
    )
    table = Table(
        "component", Column("per user", justify="right"), Column("total", justify="right")
    )
    for name, per_user, total in est.lines:
        table.add_row(name, "" if per_user is None else _bytes(per_user), _bytes(total))
    table.add_row("total (used_memory)", "", _bytes(est.total), style="bold")
    table.add_row("recommended maxmemory (total + 25%)", "", _bytes(est.maxmemory), style="bold")
    table.add_row("host memory for redis-server (× 1.5)", "", _bytes(est.host_memory))
    out.print(table)


def main() -> None:
    app()
