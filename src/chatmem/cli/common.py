"""What the command line's commands share: the consoles, the common options, one-line
errors with exit codes (0 ok, 1 failure, 2 bad arguments or settings), settings, and
calling the native API (of a server, or of the app in-process)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import orjson
import pydantic
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType

from chatmem.cli.client import ApiError, ChatmemClient, auth_headers, connect
from chatmem.cli.text import printable
from chatmem.config import Settings
from chatmem.errors import ChatmemError, InvalidInput

T = TypeVar("T")

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
# A flag takes no value: no type shown in help (typer would show `--json <bool>`).
JsonOpt = typer.Option(False, "--json", metavar="", help="print JSON instead of a table")


def _flag_help(option: TyperOption | None) -> TyperOption | None:
    if option is not None:
        option.metavar = ""  # like JsonOpt: typer would show `--help <bool>`
    return option


class _FlagHelpCommand(TyperCommand):
    def get_help_option(self, ctx: Any) -> TyperOption | None:
        return _flag_help(super().get_help_option(ctx))


class _FlagHelpGroup(TyperGroup):
    def get_help_option(self, ctx: Any) -> TyperOption | None:
        return _flag_help(super().get_help_option(ctx))


class App(typer.Typer):
    """A typer app whose commands (and itself) show `--help` as the flag it is."""

    def __init__(self, *, cls: type[TyperGroup] | None = None, **kwargs: Any) -> None:
        # Markdown: a docstring's paragraph is wrapped to the terminal, not cut where
        # the source breaks its lines.
        kwargs.setdefault("rich_markup_mode", "markdown")
        super().__init__(cls=cls or _FlagHelpGroup, **kwargs)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls or _FlagHelpCommand, **kwargs)


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


def read_json(path: Path) -> Any:
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", 2)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        fail(f"{path} is not valid JSON: {exc}", 2)
