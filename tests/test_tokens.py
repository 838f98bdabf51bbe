"""Token counting (cl100k_base, offline) and cost from the price table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatmem.config import LLMSettings, ModelPrice
from chatmem.tokens import (
    _encoding,
    cost_usd,
    count_tokens,
    price_for,
)


def test_counts_with_cl100k_base() -> None:
    # Reference ids from tiktoken's own cl100k_base.
    assert _encoding().encode("hello world") == [15339, 1917]
    assert count_tokens("hello world") == 2
    assert count_tokens("") == 0
    assert count_tokens("tiktoken is great!") == 6


def test_special_token_text_is_counted_as_text() -> None:
    # A user typing "<|endoftext|>" must not raise or be read as a control token.
    assert count_tokens("<|endoftext|>") > 1


def test_counts_non_latin_text() -> None:
    assert count_tokens("你好，世界") > 0
    assert count_tokens("🙂" * 10) >= 10


def test_tokenizer_loads_offline(tmp_path: Path) -> None:
    """No download at run time: load the encoding in a fresh process whose every socket
    connection fails and whose tiktoken cache is an empty directory."""
    code = (
        "import socket\n"
        "def deny(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = deny\n"
        "socket.create_connection = deny\n"
        "from chatmem.tokens import count_tokens\n"
        "assert count_tokens('hello world') == 2\n"
    )
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


PRICES = LLMSettings().prices


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4-turbo", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("deepseek-chat", "deepseek-chat"),
    ],
)
def test_price_lookup_takes_the_longest_prefix(model: str, expected: str) -> None:
    assert price_for(model, PRICES) == PRICES[expected]


def test_unknown_model_costs_nothing() -> None:
    assert price_for("llama-3-8b", PRICES) == ModelPrice()
    assert cost_usd("llama-3-8b", 1000, 1000, PRICES) == 0.0


def test_cost_from_the_price_table() -> None:
    # gpt-4o-mini: $0.15 / 1M input, $0.60 / 1M output.
    assert cost_usd("gpt-4o-mini", 1_000_000, 0, PRICES) == pytest.approx(0.15)
    assert cost_usd("gpt-4o-mini", 2000, 1000, PRICES) == pytest.approx(0.0003 + 0.0006)
    prices = {"m": ModelPrice(input_per_1m=1.0, output_per_1m=2.0)}
    assert cost_usd("m", 500_000, 250_000, prices) == pytest.approx(1.0)
