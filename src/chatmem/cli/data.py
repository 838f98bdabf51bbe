"""`export`, `import` and `size`: commands on the stored conversations themselves (the
server's store, `chat.runtime.open_store`) and on Redis sizing; registered on the app by
commands.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from chatmem.cli.client import ApiError, ChatmemClient
from chatmem.cli.common import (
    KeyOpt,
    UrlOpt,
    call_api,
    err,
    load_settings,
    out,
    read_json,
    reported_errors,
)

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


def export(
    user: str | None = typer.Option(None, "--user", "-u", help="only this user (default: all)"),
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="file (default: stdout)")
    ] = None,
    redis_url: str | None = RedisUrlOpt,
    url: str | None = UrlOpt,
    api_key: str | None = KeyOpt,
) -> None:
    """Export sessions with their meta and messages as JSON.

    From the store, or from a running server with --url (there, without an admin key,
    only your own)."""
    from chatmem.ids import validate_id
    from chatmem.permissions import write_private

    with reported_errors():
        if user is not None:
            validate_id(user, "user id")
    if url:
        doc = _export_remote(url, api_key, user)
    else:
        doc = _export_store(load_settings(redis_url), user)
    with reported_errors():
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        if out_file is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:  # every conversation exported: the owner's only
            write_private(out_file, data)
    n_msgs = sum(len(s["messages"]) for s in doc["sessions"])
    err.print(f"exported {len(doc['sessions'])} sessions, {n_msgs} messages")


def _export_store(settings: Any, user: str | None) -> dict[str, Any]:
    from chatmem.chat.runtime import open_store
    from chatmem.ops.transfer import export_sessions, sessions_to_export

    async def main() -> dict[str, Any]:
        async with open_store(settings) as store:
            metas = await sessions_to_export(store, user)
            with _progress() as progress:
                task = progress.add_task("exporting", total=len(metas))
                return await export_sessions(
                    store, metas, lambda n: progress.advance(task, n), [user] if user else ()
                )

    with reported_errors():
        return asyncio.run(main())


def _export_remote(url: str, api_key: str | None, user: str | None) -> dict[str, Any]:
    async def fetch(api: ChatmemClient) -> dict[str, Any]:
        if user:
            return await api.export(user)
        try:
            return await api.export_all()
        except ApiError as exc:
            if exc.status != 403:
                raise
            return await api.export()  # not an admin: their own sessions

    result: dict[str, Any] = call_api(url, None, api_key, fetch)
    return result


def import_(
    file: Annotated[Path, typer.Argument(help="a file made by `chatmem export` (- for stdin)")],
    redis_url: str | None = RedisUrlOpt,
    url: str | None = UrlOpt,
    api_key: str | None = KeyOpt,
) -> None:
    """Import an export (ids kept, what is already there skipped).

    Into the store, or into a running server with --url."""
    from chatmem.chat.runtime import character_registry, open_store
    from chatmem.ops.transfer import (
        check_characters,
        import_sessions,
        parse_export,
        parse_memories,
        parse_profiles,
    )

    doc = read_json(file)
    with reported_errors():
        sessions = parse_export(doc)
        memories = parse_memories(doc)
        profiles = parse_profiles(doc)
    if url:
        got = call_api(url, None, api_key, lambda api: api.import_(doc))
        err.print(
            f"imported {got['sessions']} sessions: {got['messages_added']} messages added, "
            f"{got['messages_skipped']} already there"
        )
        return
    settings = load_settings(redis_url)

    async def main() -> Any:
        async with open_store(settings) as store:
            await check_characters(sessions, character_registry(store.redis, settings))
            with _progress() as progress:
                task = progress.add_task("importing", total=len(sessions))
                return await import_sessions(
                    store, sessions, lambda n: progress.advance(task, n), memories, profiles
                )

    with reported_errors():
        report = asyncio.run(main())
    err.print(
        f"imported {report.sessions} sessions: {report.messages_added} messages added, "
        f"{report.messages_skipped} already there, {report.memories_added} memories added"
    )


# --- size -----------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


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
