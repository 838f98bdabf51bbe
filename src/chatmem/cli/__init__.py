"""The command line: `chatmem serve`, `chatmem chat` and the admin commands."""

from chatmem.cli.commands import main

__all__ = ["main"]
