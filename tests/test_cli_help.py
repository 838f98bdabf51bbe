"""Every command's help shows its flags, `--help` too, as flags (no `<bool>` value)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from chatmem.cli.commands import app


def _paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", {})
    return [path] + [p for name, sub in subcommands.items() for p in _paths(sub, (*path, name))]


COMMANDS = _paths(typer.main.get_command(app))


def test_the_walk_finds_every_command() -> None:
    assert {("sessions",), ("characters", "import"), ("import",), ()} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "chatmem")
def test_help_shows_the_help_flag_without_a_value(path: tuple[str, ...]) -> None:
    """Regression: `chatmem sessions --help` ended `--help <bool>`: typer labels the
    help flag it adds with its type, like any bool option without a metavar."""
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if "--help " in ln]
    assert "Show this message and exit." in line
    assert "<bool>" not in res.output, res.output


def test_a_command_s_summary_is_wrapped_to_the_terminal_not_cut_where_its_source_is() -> None:
    """Regression: `chatmem --help` broke export's and import's summaries mid-sentence,
    where their docstrings' lines end. Wide enough, every summary is one line."""
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    box = [ln for ln in res.output.split("Commands")[1].splitlines() if ln.startswith("│")]
    rows = [ln.strip("│ ").split(None, 1) for ln in box]
    assert len(rows) >= 9 and all(len(r) == 2 and r[1][0].isupper() for r in rows), box
    assert ["export", "Export sessions with their meta and messages as JSON."] in rows
