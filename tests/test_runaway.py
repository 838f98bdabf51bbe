"""The local model's runaway guard (providers/runaway.py), fed as a model streams."""

from __future__ import annotations

from chatmem.providers.runaway import RunawayGuard


def stops_at(pieces: list[str]) -> int | None:
    """The index of the piece after which the guard stops the reply, or None."""
    guard = RunawayGuard()
    for i, piece in enumerate(pieces):
        if guard.feed(piece):
            return i
    return None


def test_a_repeated_sentence_stops_at_its_third_time() -> None:
    line = "I am Luna and I love to chat with you.\n"
    pieces = ["Hello there!\n", *([line] * 10)]
    assert stops_at(pieces) == 3


def test_repeats_are_compared_without_case_and_spacing() -> None:
    pieces = ["I like  tea a lot.\n", "i like tea a lot.\n", "I LIKE TEA A LOT.  \n"]
    assert stops_at(pieces) == 2


def test_one_character_looping_without_a_newline_stops() -> None:
    pieces = ["Sure", "："] + ["；"] * 100
    at = stops_at(pieces)
    assert at is not None and at < 60


def test_a_short_phrase_looping_stops() -> None:
    assert stops_at(["Ha"] + ["ha "] * 40) is not None


def test_a_normal_reply_with_code_is_not_stopped() -> None:
    reply = (
        "Here is a function:\n\n```python\ndef f(x):\n    if x:\n        return 1\n"
        "    return 0\n```\n\n```python\ndef g(y):\n    if y:\n        return 1\n"
        "    return 0\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n"
        + "        " * 10  # indentation is not a loop
        + "Done. " * 3
        + "\n"
    )
    # Token-sized pieces, as a model streams them.
    assert stops_at([reply[i : i + 3] for i in range(0, len(reply), 3)]) is None


def test_a_line_twice_is_fine() -> None:
    line = "That sounds lovely, tell me more!\n"
    assert stops_at([line, "Something else entirely here.\n", line]) is None
