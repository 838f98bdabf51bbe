"""The `chatmem` command line (typer + rich).

`serve` runs the HTTP server. `chat`, `sessions`, `history`, `users` and `characters`
talk to the native API: of a running server with `--url`, else of an app run in-process
on the same settings (the embedded Redis by default). `export` and `import` read and
write the memory store directly, ids included. Exit codes: 0 ok, 1 failure, 2 bad
arguments or settings (a one-line error, never a traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from chatmem.cli import data
from chatmem.cli.chat import ChatOptions, money, run_chat
from chatmem.cli.client import ChatmemClient
from chatmem.cli.common import (
    App,
    JsonOpt,
    KeyOpt,
    UrlOpt,
    UserOpt,
    call_api,
    cell,
    fail,
    load_settings,
    out,
    print_json,
    read_json,
    reported_errors,
    when,
)
from chatmem.cli.text import printable

app = App(
    help="chatmem: a chat backend with conversation memory.",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks with locals could print API keys; and errors are one line anyway.
    pretty_exceptions_enable=False,
)
characters_app = App(
    help="List the characters (the default), or import a Character Card V2 JSON file.",
    invoke_without_command=True,
)
app.add_typer(characters_app, name="characters")


# --- serve ----------------------------------------------------------------------------


@app.command()
def serve(
    host: str | None = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int | None = typer.Option(None, min=1, max=65535, help="port (default 8000)"),
    workers: int | None = typer.Option(None, min=1, max=64, help="worker processes"),
    reload: bool = typer.Option(
        False, "--reload", metavar="", help="restart when the code changes (dev)"
    ),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Run the HTTP server: the page at /, the API at /v1, the docs at /docs."""
    from chatmem.cli.serve import LOG_LEVELS, run_server, startup_banner

    settings = load_settings()
    workers = workers or settings.server.workers
    if reload and workers > 1:
        fail("--reload works with one worker only", 2)
    if log_level.lower() not in LOG_LEVELS:
        fail(f"unknown log level {log_level!r}", 2)
    settings.server = settings.server.model_copy(
        update={"host": host or settings.server.host, "port": port or settings.server.port}
    )
    sys.stderr.write(startup_banner(settings, workers=workers))
    sys.stderr.flush()
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
    try:
        with reported_errors():
            run_chat(out, opts)
    except KeyboardInterrupt:
        # Ctrl+C while connecting, or once more while a reply was being stopped: leave
        # quietly, as any terminal program does.
        out.print()
        raise typer.Exit(130) from None


# --- reading --------------------------------------------------------------------------


WIDE_TABLE_COLUMNS = 140
PREVIEW_CHARS = 80


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
    # Ids are what the other commands take: never cut. Below WIDE_TABLE_COLUMNS the
    # figures stack in one column and the preview goes under the title, so that every
    # field is still there at 80 columns.
    if out.width < WIDE_TABLE_COLUMNS:
        table = Table(Column("session", no_wrap=True), "chat", Column("activity", no_wrap=True))
        for s in rows:
            usage = s.get("usage") or {}
            chat_cell = Text(printable(str(s["title"])), "bold")
            if s.get("preview"):
                chat_cell.append("\n" + printable(str(s["preview"]))[:PREVIEW_CHARS], "dim")
            activity = (
                f"{printable(str(s['character_id']))} · {s['message_count']} msgs\n"
                f"{usage.get('total_tokens', 0)} tok · {money(usage.get('cost_usd'))}\n"
                f"{when(s.get('last_active_at'))}"
            )
            table.add_row(cell(s["session_id"]), chat_cell, Text(activity))
        out.print(table)
        return
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


# --- export / import / size (cli/data.py) ---------------------------------------------

app.command()(data.export)
app.command("import")(data.import_)
app.command()(data.size)


def main() -> None:
    app()
