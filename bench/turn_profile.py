"""Where a turn's CPU goes: py-spy samples of the app, grouped by what runs.

`record(pid, seconds, out)` samples a running process with py-spy (raw, collapsed
stacks: `frame;frame;… count` per line, idle threads left out) while the caller drives
load; `breakdown(out)` attributes every sample to the innermost frame's component (the
code that was on the CPU) and `report(...)` prints each component's share as
microseconds per turn, given the app's CPU per turn measured over the same span.

    .venv/bin/python bench/http_bench.py --profile /tmp/profiles    # writes and prints

py-spy is in the bench extra (`pip install -e '.[bench]'`); it reads the target's
memory with ptrace, so it needs root or `kernel.yama.ptrace_scope = 0`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (component, pattern on a frame's file, as py-spy names it: `httpx/_client.py`); a
# sample goes to the innermost frame that matches one, passing over generic helpers.
COMPONENTS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(rf"^(?:.*/)?(?:{pattern})"))
    for name, pattern in [
        ("upstream client (httpx, httpcore, h11, anyio)", r"(httpx|httpcore|h11|anyio)/"),
        ("SSE response (sse_starlette)", r"sse_starlette/"),
        ("HTTP server (uvicorn, httptools)", r"(uvicorn|httptools)/"),
        ("ASGI framework (starlette, fastapi)", r"(starlette|fastapi|fastapi_offline)/"),
        ("validation (pydantic)", r"pydantic(_core)?/"),
        ("redis client (redis-py)", r"redis/"),
        ("tokens (tiktoken)", r"tiktoken"),
        ("metrics (prometheus_client)", r"prometheus_client/"),
        ("event loop (asyncio, uvloop)", r"(asyncio|uvloop)/"),
        ("logging", r"logging/"),
    ]
]
# Helpers any code calls: a sample in them is its caller's.
GENERIC = re.compile(
    r"^(contextlib|typing|functools|abc|enum|dataclasses|copy|re/.*|re|json/.*|uuid|"
    r"secrets|random|time|datetime|collections/.*|<frozen .*>)(\.py)?$"
)
_CHATMEM = re.compile(r"^(?:.*/)?chatmem/([\w/]+)\.py")
_FRAME_FILE = re.compile(r"\((.+?)(?::\d+)?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]' (or py-spy)")
    return found


def record(pid: int, seconds: float, out: Path, *, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into `out`; the caller waits for the process."""
    args = [py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    args += ["--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frame_file(frame: str) -> str:
    match = _FRAME_FILE.search(frame)
    return match.group(1) if match else frame


def component(path: str) -> str | None:
    """The component a frame's file belongs to; None for a generic helper."""
    own = _CHATMEM.search(path)
    if own:
        return f"chatmem: {own.group(1).replace('/', '.')}"
    for name, pattern in COMPONENTS:
        if pattern.search(path):
            return name
    return None if GENERIC.match(path) else f"other: {path.split('/')[0]}"


def stack_component(frames: list[str]) -> str:
    for frame in reversed(frames):
        found = component(frame_file(frame))
        if found is not None:
            return found
    return "other"


def breakdown(out: Path) -> Counter[str]:
    """Samples per component, by each stack's innermost frame."""
    counts: Counter[str] = Counter()
    for line in out.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[stack_component(stack.split(";"))] += int(n)
    return counts


def report(title: str, counts: Counter[str], cpu_ms_per_turn: float, *, top: int = 14) -> None:
    """Each component's share of the samples, as µs of one turn's CPU."""
    total = sum(counts.values())
    print(f"\n{title}: {total} samples, {cpu_ms_per_turn * 1000:.0f} µs of app CPU per turn")
    if not total:
        return
    chatmem = sum(n for name, n in counts.items() if name.startswith("chatmem: "))
    rows = [(name, n) for name, n in counts.most_common() if not name.startswith("chatmem: ")]
    rows.append(("chatmem's own code (all modules)", chatmem))
    rows.sort(key=lambda row: -row[1])
    for name, n in rows[:top]:
        share = n / total
        print(f"  {name:48}{1000 * cpu_ms_per_turn * share:8.0f} µs  {100 * share:5.1f} %")
    own = [(name, n) for name, n in counts.most_common() if name.startswith("chatmem: ")][:6]
    for name, n in own:
        print(f"    {name:46}{1000 * cpu_ms_per_turn * n / total:8.0f} µs")
