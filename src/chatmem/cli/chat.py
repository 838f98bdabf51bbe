"""`chatmem chat`: a terminal chat with streamed replies.

The prompt runs in the main thread (so Ctrl+C and Ctrl+D behave as in any terminal
program) and the HTTP client in an anyio blocking portal, a loop thread that lives for
the whole chat; the in-process app's lifespan is entered and left in that one thread.
Ctrl+C during a reply stops it (the server keeps the partial reply, marked stopped);
Ctrl+C or Ctrl+D at the prompt quits. Opened on a session whose reply the server is
still writing (`--session`), the chat shows that reply streaming before the first prompt.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from rich.console import Console
from rich.text import Text

from chatmem.cli import slash
from chatmem.cli.client import (
    END_EVENTS,
    ApiError,
    ChatmemClient,
    SseEvent,
    auth_headers,
    connect,
)
from chatmem.cli.reply_view import ReplyView, markdown
from chatmem.cli.terminal import LineReader
from chatmem.cli.text import printable, tool_lines

PROMPT = "you › "
STOP_GRACE_S = 3.0
HISTORY_ON_RESUME = 6
# Re-attaching replays a reply from its start: what arrives within this time is the
# replay's first burst, which tells a reply still running from one that has just ended
# (and is shown already, in the history).
REPLAY_SETTLE_S = 0.3


def money(usd: float | int | None) -> str:
    v = float(usd or 0)
    return f"${v:.4f}" if v >= 0.0001 or v == 0 else "<$0.0001"


@dataclass(slots=True)
class ChatOptions:
    url: str | None = None
    user: str | None = None
    api_key: str | None = None
    character: str | None = None
    session: str | None = None
    title: str = ""


@dataclass
class TerminalChat:
    console: Console
    portal: BlockingPortal
    api: ChatmemClient
    names: dict[str, str]
    reader: LineReader
    session: dict[str, Any] = field(default_factory=dict)
    shown_ids: set[str] = field(default_factory=set)
    echoes_input: bool = field(default_factory=lambda: sys.stdin.isatty())

    # --- setting up -------------------------------------------------------------------

    async def open(self, opts: ChatOptions) -> None:
        if opts.session:
            meta = await self.api.session(opts.session)
            if opts.character and meta["character_id"] != opts.character:
                raise ApiError(
                    400,
                    "character_mismatch",
                    f"session {opts.session} is with {meta['character_id']!r}, "
                    f"not {opts.character!r}",
                )
            self.session = meta
            self.banner(resumed=True)
            for msg in await self.api.history(opts.session, HISTORY_ON_RESUME):
                self.show_message(msg)
                self.shown_ids.add(str(msg.get("msg_id")))
        else:
            await self.new_session(opts.character, opts.title)

    async def new_session(self, character: str | None, title: str = "") -> None:
        data = await self.api.create_session(character, title)
        self.session = data["session"]
        self.banner(resumed=False)
        if data.get("greeting"):
            self.show_message(data["greeting"])

    def banner(self, *, resumed: bool) -> None:
        s = self.session
        verb = "Resuming" if resumed else "New session"
        line = Text.assemble(
            (f"{verb} ", "bold"),
            (printable(s["session_id"]), "cyan"),
            f" with {printable(self.name())} — /help for commands, Ctrl+C stops a reply",
        )
        self.console.print(line, soft_wrap=True)

    def name(self) -> str:
        cid = str(self.session.get("character_id", ""))
        return self.names.get(cid, cid)

    def show_message(self, msg: dict[str, Any]) -> None:
        tools = tool_lines(msg)
        if msg["role"] == "tool" or (tools and not msg["content"]):
            # A tool's result, tool calls with no text: compact lines (text, no markup).
            who = "" if msg["role"] == "tool" else f"{printable(self.name())} › "
            for line in tools:
                self.console.print(Text(who + line, "dim"), soft_wrap=True)
            return
        who = "you" if msg["role"] == "user" else self.name()
        stopped = (msg.get("metadata") or {}).get("interrupted")
        if msg["role"] != "user" and self.console.is_terminal:
            self.console.print(Text(f"{printable(who)} ›", "bold"))
            self.console.print(markdown(printable(msg["content"])))
            if stopped:
                self.console.print(Text(" [stopped]", "dim"))
            for line in tools:
                self.console.print(Text(line, "dim"), soft_wrap=True)
            return
        text = Text.assemble((f"{printable(who)} › ", "bold"), printable(msg["content"]))
        if stopped:
            text.append(" [stopped]", "dim")
        for line in tools:
            text.append(f"\n{line}", "dim")
        self.console.print(text, soft_wrap=True)

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        while True:
            try:
                line = self.reader.read(PROMPT)
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                return
            if not self.echoes_input:
                # Piped input: show it, so that the transcript reads like a chat.
                self.console.print(Text(printable(line)), soft_wrap=True)
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            self.turn(text)

    def command(self, text: str) -> bool:
        return slash.command(self, text)

    def edit_line(self, text: str) -> str:
        """The user's own line again, on the prompt, to change."""
        return self.reader.read(PROMPT, default=text)

    def show_usage(self) -> None:
        self.session = self.portal.call(self.api.session, self.session["session_id"])
        u = self.session.get("usage") or {}
        self.console.print(
            Text(
                f"session: {u.get('prompt_tokens', 0)} prompt + "
                f"{u.get('completion_tokens', 0)} completion tokens, "
                f"{money(u.get('cost_usd'))}; {self.session.get('total_tokens', 0)} tokens "
                "held in memory",
                "dim",
            )
        )

    def error(self, exc: ApiError) -> None:
        hint = {
            "session_busy": "another reply is still being written in this session; retry soon",
            "rate_limited": "too many messages; wait a moment",
        }.get(exc.code, "")
        msg = f"error: {exc.message}" + (f" — {hint}" if hint else "")
        self.console.print(Text(printable(msg), "red"))

    # --- one reply --------------------------------------------------------------------

    def turn(self, text: str) -> None:
        self.watch(self.stream, text)

    def reattach(self) -> None:
        """Show the reply the server is still writing in this session, if there is one."""
        self.watch(self.follow_running)

    def watch(self, func: Any, *args: Any) -> None:
        future = self.portal.start_task_soon(func, *args)
        try:
            with self.reader.quiet():
                _wait(future)
        except KeyboardInterrupt:
            self.interrupt(future)
        except ApiError as exc:
            self.console.print()
            self.error(exc)
        except concurrent.futures.CancelledError:
            pass

    def interrupt(self, future: concurrent.futures.Future[None]) -> None:
        """Ask the server to stop, let the reply end by itself, else stop watching it
        (a second Ctrl+C stops waiting: quietly, no traceback)."""
        with contextlib.suppress(Exception, KeyboardInterrupt):
            self.portal.call(self._stop)
        try:
            future.result(timeout=STOP_GRACE_S)
        except (concurrent.futures.TimeoutError, KeyboardInterrupt):
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=STOP_GRACE_S)
            self.console.print(Text(" [stopped]", "dim"))
        except (ApiError, concurrent.futures.CancelledError):
            pass

    async def _stop(self) -> None:
        with anyio.fail_after(STOP_GRACE_S):
            await self.api.stop(self.session["session_id"])

    async def stream(self, text: str) -> None:
        async with contextlib.aclosing(self.api.send(self.session["session_id"], text)) as events:
            await self.show_reply(events)

    async def revise(self, revision: str) -> None:
        events = self.api.revise(self.session["session_id"], revision)
        async with contextlib.aclosing(events):
            await self.show_reply(events)

    async def follow_running(self) -> None:
        send, receive = anyio.create_memory_object_stream[SseEvent](1000)
        failures: list[ApiError] = []

        async def pump() -> None:
            events = self.api.follow(self.session["session_id"])
            async with send, contextlib.aclosing(events):
                try:
                    async for event in events:
                        await send.send(event)
                except ApiError as exc:
                    # 404: a server without re-attach; nothing to show then.
                    if exc.status != 404:
                        failures.append(exc)

        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(pump)
            first: list[SseEvent] = []
            nothing = False
            with anyio.move_on_after(REPLAY_SETTLE_S):
                async for event in receive:
                    first.append(event)
                    if event.event in END_EVENTS:
                        break
                else:
                    nothing = not first  # 204, or a server without re-attach
            if not nothing and not (first and self._shown_already(first[-1])):
                await self.show_reply(_chain(first, receive))
            tg.cancel_scope.cancel()
        if failures:
            raise failures[0]

    def _shown_already(self, event: SseEvent) -> bool:
        if event.event != "done":
            return False
        return str((event.data.get("message") or {}).get("msg_id")) in self.shown_ids

    async def show_reply(self, events: AsyncIterator[SseEvent]) -> None:
        status = None
        if self.console.is_terminal:
            status = self.console.status(f"{self.name()} is typing…")
            status.start()
        view = ReplyView(self.console, printable(self.name()))
        ended = False

        def begin() -> None:
            if status is not None:
                status.stop()
            view.begin()

        try:
            async for ev in events:
                if ev.event == "delta":
                    begin()
                    view.add(printable(str(ev.data.get("content", ""))))
                elif ev.event == "done":
                    ended = True
                    begin()
                    self.finish(view, ev.data)
                    break
                elif ev.event == "error":
                    if view.started:
                        view.end()
                    raise ApiError(200, str(ev.data.get("code")), str(ev.data.get("message")))
        finally:
            if status is not None:
                status.stop()
            if view.started and not ended:
                view.end()  # stopped, cancelled or cut: what came is shown
        if view.started and not ended:
            self.console.print(Text("  (the end of this reply was lost; /history shows it)", "dim"))

    def finish(self, view: ReplyView, done: dict[str, Any]) -> None:
        message = done.get("message") or {}
        metadata = message.get("metadata") or {}
        marks = []
        if metadata.get("interrupted"):
            marks.append(Text(" [stopped]", "dim"))
        elif metadata.get("finish_reason") == "length":
            marks.append(Text(" [cut off: the reply reached its length limit]", "dim"))
        view.end(marks)
        u = done.get("usage") or {}
        self.console.print(
            Text(
                f"  {u.get('prompt_tokens', 0)} in + {u.get('completion_tokens', 0)} out tokens"
                f" · {money(u.get('cost_usd'))}",
                "dim",
            )
        )
        if done.get("memory", "ok") != "ok":
            self.console.print(Text(f"  memory: {done['memory']}", "yellow"))


async def _chain(first: list[SseEvent], rest: AsyncIterator[SseEvent]) -> AsyncIterator[SseEvent]:
    for event in first:
        yield event
    if first and first[-1].event in END_EVENTS:
        return
    async for event in rest:
        yield event


def _wait(future: concurrent.futures.Future[None]) -> None:
    # Short waits keep the main thread responsive to Ctrl+C.
    while True:
        try:
            future.result(timeout=0.2)
            return
        except concurrent.futures.TimeoutError:
            continue


async def _character_names(api: ChatmemClient) -> dict[str, str]:
    data = await api.characters()
    return {c["id"]: c["name"] for c in data["characters"]}


def run_chat(console: Console, opts: ChatOptions) -> None:
    """Run the chat until the user quits; ApiError for a failure before the first prompt."""
    headers = auth_headers(opts.user, opts.api_key)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(connect(opts.url, headers)) as http,
    ):
        api = ChatmemClient(http)
        names = portal.call(_character_names, api)
        chat = TerminalChat(console, portal, api, names, LineReader(console))
        portal.call(chat.open, opts)
        if opts.session:
            chat.reattach()
        chat.run()
