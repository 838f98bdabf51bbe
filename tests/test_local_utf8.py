"""Regression: a local model's reply cut in the middle of a character (an emoji split
across byte-level tokens, cut at max_tokens) ended in "�" (U+FFFD): the provider's
final decode replaced the held bytes instead of dropping them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from chatmem.config import LLMSettings
from chatmem.providers import GenerationParams
from chatmem.providers.local import LocalLlamaProvider
from chatmem.providers.utf8 import TokenText

EMOJI = "😀"  # four bytes: F0 9F 98 80


def test_a_character_split_across_tokens_waits_for_its_last_byte() -> None:
    text = TokenText()
    data = f"a{EMOJI}b".encode()
    pieces = [text.feed(data[i : i + 1]) for i in range(len(data))]
    assert pieces == ["a", "", "", "", EMOJI, "b"]
    assert text.end() == ""


def test_a_character_cut_by_the_end_is_dropped_not_replaced() -> None:
    text = TokenText()
    assert text.feed(b"ok " + EMOJI.encode()[:2]) == "ok "
    assert text.end() == ""
    # Bytes that can never be UTF-8 are still shown as replaced (not silently lost).
    assert TokenText().feed(b"\xff") == "\ufffd"


@pytest.fixture(scope="module")
def model() -> Iterator[LocalLlamaProvider]:
    settings = LLMSettings(
        provider="local", local_model_path=None, local_n_ctx=512, local_queue_size=1
    )
    provider = LocalLlamaProvider(settings)
    provider.load()
    yield provider
    asyncio.run(provider.aclose())


@pytest.mark.local_model
async def test_a_local_reply_cut_mid_emoji_has_no_replacement_character(
    model: LocalLlamaProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    llama: Any = model._llama
    scripted = llama.tokenize(f"Hi {EMOJI}{EMOJI}".encode(), add_bos=False, special=False)
    # The emoji takes more than one token here, so the cut below lands inside it.
    emoji_tokens = llama.tokenize(EMOJI.encode(), add_bos=False, special=False)
    assert len(emoji_tokens) > 1

    def generate(*_: Any, **__: Any) -> Iterator[int]:
        yield from scripted

    monkeypatch.setattr(llama, "generate", generate)
    cut = len(scripted) - 1
    chunks = [
        c
        async for c in model.stream(
            [{"role": "user", "content": "hi"}], GenerationParams(max_tokens=cut)
        )
    ]
    reply = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "length"
    assert "\ufffd" not in reply
    assert reply == f"Hi {EMOJI}"
