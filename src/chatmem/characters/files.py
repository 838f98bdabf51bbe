"""Characters that live in files: the built-ins shipped in this package, and a directory.

A directory holds one character per `*.yaml`, `*.yml` or `*.json` file (not recursive,
read in name order). A file is either a mapping of `Character` fields (a missing `id`
defaults to the file's stem) or a Character Card V2 (`spec: chara_card_v2`), imported
by `card_to_character`. A bad file never stops the service: it is skipped, logged, and
reported in `DirectoryLoad.errors` with the file named.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from chatmem.errors import InvalidInput
from chatmem.models import Character

from .card import card_to_character
from .parse import parse_character

log = logging.getLogger(__name__)

DEFAULT_CHARACTER_ID = "assistant"
# The seed 002 roles first (the default leads), then the companions.
BUILTIN_IDS = ("assistant", "teacher", "programmer", "companion", "luna")
CHARACTER_FILE_SUFFIXES = (".yaml", ".yml", ".json")
MAX_CHARACTER_FILE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CharacterLoadError:
    """A character file that was skipped, and why."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(slots=True)
class DirectoryLoad:
    characters: list[Character] = field(default_factory=list)
    errors: list[CharacterLoadError] = field(default_factory=list)


def _parse_document(text: str, suffix: str) -> Any:
    if suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def character_from_document(doc: Any, *, default_id: str | None = None) -> Character:
    """A file's parsed content as a character: a Card V2 or plain character fields."""
    if isinstance(doc, dict) and "spec" in doc:
        return card_to_character(doc)
    if isinstance(doc, dict) and "first_mes" in doc:
        raise InvalidInput(
            "this looks like a V1 character card; only Character Card V2 "
            "(spec: chara_card_v2) is supported",
            code="invalid_card",
        )
    return parse_character(doc, default_id=default_id)


def load_builtins() -> list[Character]:
    """The characters shipped with chatmem, marked `builtin=True`, in `BUILTIN_IDS` order."""
    package = resources.files(__package__)
    out = []
    for cid in BUILTIN_IDS:
        text = package.joinpath(f"{cid}.yaml").read_text(encoding="utf-8")
        ch = parse_character(yaml.safe_load(text), source=f"built-in {cid}.yaml")
        if ch.id != cid:  # a packaging mistake, not a runtime condition
            raise RuntimeError(f"built-in {cid}.yaml declares id {ch.id!r}")
        out.append(ch.model_copy(update={"builtin": True}))
    return out


def _load_file(path: Path) -> Character:
    size = path.stat().st_size
    if size > MAX_CHARACTER_FILE_BYTES:
        raise InvalidInput(f"file is {size} bytes; the limit is {MAX_CHARACTER_FILE_BYTES}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        doc = _parse_document(text, suffix)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if suffix == ".json" else "YAML"
        raise InvalidInput(f"invalid {kind}: {exc}") from exc
    if doc is None:
        raise InvalidInput("the file is empty")
    return character_from_document(doc, default_id=path.stem)


def load_directory(directory: Path) -> DirectoryLoad:
    """Every character file of `directory`; problems are collected, never raised."""
    result = DirectoryLoad()
    if not directory.is_dir():
        error = CharacterLoadError(directory, "characters directory does not exist")
        log.warning("characters: %s", error)
        result.errors.append(error)
        return result
    seen: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in CHARACTER_FILE_SUFFIXES or not path.is_file():
            continue
        try:
            ch = _load_file(path)
            if ch.id in seen:
                raise InvalidInput(f"id {ch.id!r} is already defined by {seen[ch.id].name}")
        except (InvalidInput, OSError) as exc:
            message = exc.message if isinstance(exc, InvalidInput) else str(exc)
            error = CharacterLoadError(path, message)
            log.warning("characters: skipped %s", error)
            result.errors.append(error)
            continue
        seen[ch.id] = path
        result.characters.append(ch)
    return result
