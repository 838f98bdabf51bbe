"""Conversations on disk are their owner's only: the data dir and the directories in it
0700; the AOF, the RDB, the outbox and exports 0600 — also when an older chatmem left
them wider (SPEC §8)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from chatmem.cli.commands import app
from chatmem.durability.outbox import REJECTED_FILE, Outbox
from chatmem.models import Message, Role
from chatmem.ops.embedded import EmbeddedRedis
from chatmem.store.conversations import AnyRedis


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loose_files(directory: Path) -> dict[str, int]:
    """Everything under `directory` that another user could read."""
    return {
        str(p.relative_to(directory)): mode(p)
        for p in [directory, *directory.rglob("*")]
        if not p.is_symlink() and not p.is_socket() and mode(p) & 0o077
    }


def write_some(server: EmbeddedRedis) -> None:
    with redis.Redis.from_url(server.url) as c:
        c.set("k", "a conversation")
        c.save()  # an RDB as well as the AOF


def test_embedded_redis_files_are_private(tmp_path: Path) -> None:
    """The data dir was 0755 and the AOF (every conversation) 0644: readable by every
    user of the host."""
    data = tmp_path / "new" / "data"
    with EmbeddedRedis(data) as server:
        write_some(server)
    assert mode(data) == 0o700
    assert mode(data / "appendonly.aof") == 0o600
    assert mode(data / "dump.rdb") == 0o600
    assert loose_files(data) == {}


def test_wide_files_of_an_older_chatmem_are_narrowed_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with EmbeddedRedis(data) as server:
        write_some(server)
    data.chmod(0o755)
    for p in data.iterdir():
        if p.is_file():
            p.chmod(0o644)
    assert loose_files(data)
    with EmbeddedRedis(data):
        assert loose_files(data) == {}


async def test_outbox_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"  # created by the outbox (Redis elsewhere): 0700 too
    outbox = Outbox(data / "outbox")
    rec = await outbox.add("u", "s", "assistant", [Message(Role.USER, "secret", 1, msg_id="m1")])
    await outbox.reject(rec, "for the test")
    await outbox.close()
    assert (data / "outbox" / REJECTED_FILE).exists()
    assert mode(data) == 0o700
    assert loose_files(data) == {}


async def test_an_older_outbox_is_narrowed_when_scanned(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir(mode=0o755)
    (directory / REJECTED_FILE).write_text("{}\n")
    (directory / REJECTED_FILE).chmod(0o644)
    await Outbox(directory).adopt_orphans()
    assert loose_files(directory) == {}


def test_exports_are_private(
    redis_url: str, redis_client: AnyRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chatmem export --out` wrote every conversation into a 0644 file."""
    monkeypatch.setenv("CHATMEM_REDIS_URL", redis_url)
    monkeypatch.setenv("CHATMEM_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "export.json"
    out.write_text("")
    out.chmod(0o644)  # an existing file is narrowed too
    res = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("{") and mode(out) == 0o600
