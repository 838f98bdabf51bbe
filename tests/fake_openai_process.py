"""The fake OpenAI-compatible model in a process of its own, for bench/: a benchmark's CPU
figures must not count the fake's.

    python -m tests.fake_openai --chunks 1000 --piece "tok " --delay-s 0
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tests.fake_openai import FakeOpenAI, Reply


@contextlib.contextmanager
def serve_in_process(
    command: list[str], *, cwd: Path, stderr: IO[str] | None = None
) -> Iterator[tuple[int, int]]:
    """Run `command` (this module's `main`, or a bench's own wrapper of it), which prints
    `PORT <n>` once listening and serves until its stdin closes; yields (port, pid).

    A process of its own, so that a benchmark's CPU figures do not count the fake.
    """
    with subprocess.Popen(
        command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
    ) as proc:  # closes its pipes however this ends
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = proc.stdout.readline()
            if not line.startswith("PORT "):
                raise RuntimeError(f"the fake model did not start: {line!r}")
            yield int(line.split()[1]), proc.pid
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes; prints `PORT <n>` once listening (for bench/)."""
    parser = argparse.ArgumentParser(
        description="the fake OpenAI-compatible model, until stdin closes"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--piece", default="tok ", help="the text of each delta")
    parser.add_argument("--delay-s", type=float, default=0.0, help="pause before each chunk")
    args = parser.parse_args(argv)
    reply = Reply(text=args.piece * args.chunks, chunks=args.chunks, delay_s=args.delay_s)
    with FakeOpenAI(default=reply, port=args.port) as fake:
        print(f"PORT {fake.port}", flush=True)
        sys.stdin.read()
