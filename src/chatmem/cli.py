"""The `chatmem` command line (typer)."""

from __future__ import annotations

import typer

app = typer.Typer(help="chatmem: a chat backend with conversation memory.", no_args_is_help=True)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (default 8000)"),
    workers: int | None = typer.Option(None, help="worker processes"),
) -> None:
    """Run the HTTP server (embedded Redis and model unless configured otherwise)."""
    raise typer.Exit(1)


def main() -> None:
    app()
