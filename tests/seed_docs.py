"""The seed documents' own code, cut out of them at run time (never copied into the repo).

The documents live beside the repository, in `../shared/seeds/` (SPEC.md's "seeds"); the
tests that run their client code, and bench/http_bench.py that runs seed 001's app, take
their fenced code blocks from there. Without the documents those tests skip, saying why.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEEDS_DIR = ROOT.parent / "shared" / "seeds"
# What the documents' client code talks to; only this is changed when it is run.
DOCUMENT_BASE_URL = "http://localhost:8000"


def seed_document(number: str, seeds_dir: Path | None = None) -> Path:
    """The document `NNN_*.txt` (in SEEDS_DIR by default); a LookupError when it is not
    there."""
    seeds_dir = SEEDS_DIR if seeds_dir is None else seeds_dir
    found = sorted(seeds_dir.glob(f"{number}_*.txt"))
    if len(found) != 1:
        raise LookupError(f"no seed document {number}_*.txt in {seeds_dir}")
    return found[0]


def require_seed_document(number: str) -> Path:
    """The document, or skip the test: the seeds are not part of the repository."""
    try:
        return seed_document(number)
    except LookupError as exc:
        pytest.skip(f"{exc}: the seed documents live beside the repo, in ../shared/seeds/")


def code_blocks(path: Path, language: str) -> list[str]:
    """Every fenced block of that language, in document order."""
    text = path.read_text(encoding="utf-8")
    return re.findall(rf"```{re.escape(language)}\n(.*?)```", text, re.S)


def one_block(path: Path, language: str, *markers: str) -> str:
    """The one block of that language holding every marker (ValueError otherwise)."""
    found = [b for b in code_blocks(path, language) if all(m in b for m in markers)]
    if len(found) != 1:
        raise ValueError(
            f"{path.name}: expected one {language} block with {markers}, got {len(found)}"
        )
    return found[0]


def with_base_url(code: str, base_url: str) -> str:
    """The document's code with its server's address (and nothing else) changed."""
    if DOCUMENT_BASE_URL not in code:
        raise ValueError(f"the code does not name {DOCUMENT_BASE_URL}")
    return code.replace(DOCUMENT_BASE_URL, base_url)
