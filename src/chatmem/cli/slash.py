"""The terminal chat's slash commands: /regenerate, /continue, /edit, /fork, /context,
/memories, /sessions and the rest; `command` runs one line that starts with "/"."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from anyio.from_thread import BlockingPortal
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from chatmem.cli.client import ApiError, ChatmemClient
from chatmem.cli.text import printable

HELP = """\
/regenerate       another reply to your last message (the earlier ones are kept)
/continue         more of the last reply (after a cut-off one, say)
/edit [TEXT]      change your last message (without TEXT: edit it on the prompt)
/fork             a new session with this one's history, to try another way
/context          what the model sees next turn, with its token budget
/memories         what chatmem remembers about you beyond this session
/new [CHARACTER]  start a new session (with another character)
/history          the session's recent messages
/sessions         your sessions
/name [NAME]      your name, as characters call you ({{user}}); "/name -" resets it
/usage            tokens and cost of this session
/quit             leave (Ctrl+D does too); Ctrl+C stops a reply"""

# How much of a long message /context shows in its table.
CONTEXT_PREVIEW_CHARS = 70


class Chat(Protocol):
    """What the commands use of the terminal chat (chat.TerminalChat)."""

    console: Console
    portal: BlockingPortal
    api: ChatmemClient
    session: dict[str, Any]

    def show_message(self, msg: dict[str, Any]) -> None: ...
    def show_usage(self) -> None: ...
    def error(self, exc: ApiError) -> None: ...
    def watch(self, func: Any, *args: Any) -> None: ...
    def edit_line(self, text: str) -> str: ...
    async def new_session(self, character: str | None, title: str = "") -> None: ...
    async def revise(self, revision: str) -> None: ...


def command(chat: Chat, text: str) -> bool:
    """Run one slash command; False when the chat should end."""
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit", "/q"):
        return False
    handler = _COMMANDS.get(name)
    if handler is None:
        chat.console.print(Text(f"unknown command {name}; /help lists them", "yellow"))
        return True
    try:
        handler(chat, arg)
    except ApiError as exc:
        chat.error(exc)
    return True


def _sid(chat: Chat) -> str:
    return str(chat.session["session_id"])


def _call(chat: Chat, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    return chat.portal.call(func, *args)


def _help(chat: Chat, _: str) -> None:
    chat.console.print(HELP, markup=False, highlight=False)


def _new(chat: Chat, arg: str) -> None:
    chat.portal.call(chat.new_session, arg or None)


def _history(chat: Chat, _: str) -> None:
    for msg in _call(chat, chat.api.history, _sid(chat), 20):
        chat.show_message(msg)


def _sessions(chat: Chat, _: str) -> None:
    for s in _call(chat, chat.api.sessions):
        mark = "*" if s["session_id"] == _sid(chat) else " "
        chat.console.print(
            Text(
                f"{mark} {s['session_id']}  {printable(s['title'])}  "
                f"({s['message_count']} messages)"
            )
        )


def _name(chat: Chat, arg: str) -> None:
    """Show or set the display name (`PATCH /v1/me`): new sessions' greetings and every
    next turn's prompt use it."""
    if arg:
        me = _call(chat, chat.api.set_display_name, None if arg == "-" else arg)
        what = "your name is now"
    else:
        me = _call(chat, chat.api.me)
        what = "characters call you"
    chat.console.print(
        Text.assemble(f"{what} ", (printable(str(me.get("display_name") or "User")), "bold"))
    )


def _usage(chat: Chat, _: str) -> None:
    chat.show_usage()


def _regenerate(chat: Chat, _: str) -> None:
    chat.watch(chat.revise, "regenerate")


def _continue(chat: Chat, _: str) -> None:
    chat.watch(chat.revise, "continue")


def _last(chat: Chat, role: str) -> dict[str, Any] | None:
    for msg in reversed(_call(chat, chat.api.history, _sid(chat), 20)):
        if msg["role"] == role:
            return dict(msg)
    return None


def _edit(chat: Chat, arg: str) -> None:
    mine = _last(chat, "user")
    if mine is None:
        chat.console.print(Text("nothing to edit: you have not said anything yet", "yellow"))
        return
    text = arg
    if not text:
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            text = chat.edit_line(str(mine["content"])).strip()
    if not text or text == mine["content"]:
        chat.console.print(Text("unchanged", "dim"))
        return
    _call(chat, chat.api.edit_message, _sid(chat), str(mine["msg_id"]), text)
    chat.console.print(Text("edited; /regenerate for a new reply to it", "dim"))


def _fork(chat: Chat, _: str) -> None:
    msgs = _call(chat, chat.api.history, _sid(chat), 1)
    if not msgs:
        chat.console.print(Text("nothing to fork: the session is empty", "yellow"))
        return
    old = _sid(chat)
    data = _call(chat, chat.api.fork, old, str(msgs[-1]["msg_id"]))
    chat.session = data["session"]
    chat.console.print(
        Text.assemble(
            ("Forked ", "bold"),
            (printable(old), "cyan"),
            " into ",
            (printable(_sid(chat)), "cyan"),
            f" ({len(data['messages'])} messages); you are in the new one",
        ),
        soft_wrap=True,
    )


def _context(chat: Chat, _: str) -> None:
    view = _call(chat, chat.api.context, _sid(chat))
    tokens = view.get("tokens") or {}
    table = Table(
        "role",
        Column("tokens", justify="right"),
        Column("content", overflow="ellipsis", no_wrap=True),
        box=None,
        pad_edge=False,
    )
    for msg in view.get("messages") or []:
        content = printable(str(msg.get("content") or "")).replace("\n", " ")
        if len(content) > CONTEXT_PREVIEW_CHARS:
            content = content[: CONTEXT_PREVIEW_CHARS - 1] + "…"
        count = msg.get("token_count")
        table.add_row(str(msg.get("role")), "" if count is None else str(count), content)
    chat.console.print(table)
    summary = (view.get("memory") or {}).get("summary") or {}
    text = summary.get("text") if isinstance(summary, dict) else None
    if isinstance(text, str) and text:
        chat.console.print(Text(f"summary of earlier messages: {printable(text)}", "dim"))
    total, budget = int(tokens.get("total", 0)), int(tokens.get("budget", 0))
    dropped = sum(
        int(tokens.get(k, 0))
        for k in ("dropped_by_window", "dropped_by_count", "dropped_by_budget")
    )
    line = f"{total} of {budget} tokens" if budget else f"{total} tokens"
    line += f" (system {tokens.get('system', 0)}, history {tokens.get('history', 0)})"
    if dropped:
        line += f"; {dropped} older messages left out"
    chat.console.print(Text(line, "bold"))


def _memories(chat: Chat, _: str) -> None:
    try:
        data = _call(chat, chat.api.memories, chat.session.get("character_id"))
    except ApiError as exc:
        if exc.status in (404, 405):
            chat.console.print(Text("memories are not available on this server", "yellow"))
            return
        raise
    items = data.get("memories") or []
    if not items:
        chat.console.print(Text("no memories yet", "dim"))
    for m in items:
        chat.console.print(Text(f"- {printable(str(m.get('content') or m.get('text') or ''))}"))


_COMMANDS: dict[str, Callable[[Chat, str], None]] = {
    "/help": _help,
    "/new": _new,
    "/history": _history,
    "/sessions": _sessions,
    "/name": _name,
    "/usage": _usage,
    "/regenerate": _regenerate,
    "/continue": _continue,
    "/edit": _edit,
    "/fork": _fork,
    "/context": _context,
    "/memories": _memories,
}
