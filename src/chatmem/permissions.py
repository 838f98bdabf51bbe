"""Files that hold conversations are readable by their owner only.

The data dir and the directories chatmem makes in it are 0700; the AOF, the RDB, the
outbox and exports 0600. Directories and files that an older chatmem left with wider
modes are narrowed when chatmem next starts on them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path, files: Iterable[str] = ("*",)) -> Path:
    """Create `path` (missing parents too) as 0700, or narrow it to 0700, and narrow the
    regular files in it that match one of the `files` patterns to 0600."""
    # Not mkdir(parents=True): it creates the parents with the default mode.
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)
    for pattern in files:
        for child in path.glob(pattern):
            if child.is_file() and not child.is_symlink():
                # A file may vanish meanwhile (an outbox replayed, a rewrite's temp file).
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(child, PRIVATE_FILE_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """os.open with mode 0600, also narrowing a file that already existed."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, data: bytes) -> None:
    """Write a whole file, readable by its owner only."""
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
        f.write(data)


def append_private(path: Path, data: bytes) -> None:
    """Append to a file, readable by its owner only, and fsync it."""
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
