"""One outbox file (durability/outbox_file.py): its lines, its lock, reading it back after
a crash. Real files in a temporary directory; no Redis, no app."""

from __future__ import annotations

from pathlib import Path

import orjson

from chatmem.durability.outbox_file import REJECTED_FILE, OutboxRecord, adopt, create
from chatmem.models import Message, Role, Usage


def record(n: int) -> OutboxRecord:
    msg = Message(Role.USER, f"message {n}", 3, msg_id=f"m{n}")
    return OutboxRecord(n, "alice", "s1", "assistant", [msg], Usage(2, 1, 1e-9))


def test_record_round_trip() -> None:
    msg = Message(Role.ASSISTANT, "hi", 1, metadata={"usage": {"prompt_tokens": 2}})
    rec = OutboxRecord(7, "u", "s", "c", [msg], Usage(2, 1, 1e-9))
    back = OutboxRecord.from_doc(orjson.loads(rec.to_line()))
    assert back.messages == [msg] and back.usage == rec.usage and back.n == 7


async def test_a_torn_last_line_is_cut_off_and_the_records_before_it_are_read(
    tmp_path: Path,
) -> None:
    """A process that dies in the middle of an append leaves a torn last line. Nobody was
    told that record was written, so it is dropped (not kept as unreadable), the records
    before it are replayed, and the line is cut off: the acknowledgement appended next
    starts a line of its own."""
    path = tmp_path / "1-dead.jsonl"
    writer = create(path)
    for n in (1, 2):
        await writer.write(record(n).to_line())
    writer.close_sync(remove=False)  # the process died...
    with path.open("ab") as f:
        f.write(record(3).to_line()[:30])  # ...while appending record 3

    adopted = adopt(path)
    assert adopted is not None
    assert sorted(adopted.pending) == [1, 2] and adopted.next_n == 3
    assert adopted.pending[2].messages[0].content == "message 2"
    await adopted.write(b'{"ack": [1]}\n')
    adopted.close_sync(remove=False)

    assert [orjson.loads(line) for line in path.read_bytes().splitlines()][-1] == {"ack": [1]}
    assert not (tmp_path / REJECTED_FILE).exists()
    again = adopt(path)
    assert again is not None and sorted(again.pending) == [2]
    again.close_sync(remove=False)


async def test_the_lock_keeps_a_second_writer_out_while_the_first_holds_the_file(
    tmp_path: Path,
) -> None:
    """A file is written by the process that holds its flock, and only by it: while its
    writer lives nobody adopts it; once the writer is gone one adopter takes it, and a
    second one is kept out by that adopter's lock in turn."""
    path = tmp_path / "1-live.jsonl"
    writer = create(path)
    await writer.write(record(1).to_line())
    assert adopt(path) is None  # its writer is alive
    writer.close_sync(remove=False)  # the writer dies: its lock goes with it

    adopted = adopt(path)
    assert adopted is not None and sorted(adopted.pending) == [1]
    assert adopt(path) is None  # one adopter at a time
    await adopted.write(b'{"ack": [1]}\n')
    adopted.close_sync(remove=False)
    # All acknowledged: the next adopter finds nothing to replay and removes the file.
    assert adopt(path) is None and not path.exists()
