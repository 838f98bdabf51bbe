"""The command line: `chatmem serve`, `chatmem chat` and the admin commands."""

from chatmem.cli.commands import app, main

__all__ = ["app", "main"]
