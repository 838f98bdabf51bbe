"""CharacterRegistry: built-in, directory and API-created characters behind one lookup.

Three sources, merged in this order (an id is answered by the first that has it):

1. directory characters (`Settings.characters_dir`), read at start and on `reload()`;
   a directory file may redefine a built-in id to customize it (the operator's call);
2. built-ins shipped with chatmem (`builtin=True`);
3. characters created through the API, kept in Redis (store/characters.py, a HASH
   id → Character JSON) so that every API process sees the same ones.

The first two are read-only through the API: `create` with one of their ids raises
`AlreadyExists` (the id is taken, 409), `update` and `delete` raise `Forbidden` (403).
Redis never holds a read-only id unless a directory file was added later with an id
already stored; then the file wins and the stored copy is unreachable until the file goes.
"""

from __future__ import annotations

import builtins
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chatmem.errors import AlreadyExists, CharacterNotFound, Forbidden
from chatmem.models import Character
from chatmem.store.characters import CharacterStore

from .card import card_to_character, character_to_card
from .files import DEFAULT_CHARACTER_ID, CharacterLoadError, load_builtins, load_directory

log = logging.getLogger(__name__)


class CharacterRegistry:
    def __init__(
        self,
        stored: CharacterStore,
        characters_dir: Path | None = None,
        *,
        preferred_default: str | None = None,
    ) -> None:
        self._stored = stored
        self._preferred_default = preferred_default
        self._characters_dir = characters_dir
        self._builtins = {ch.id: ch for ch in load_builtins()}
        self._static: dict[str, Character] = {}
        self._sources: dict[str, str] = {}
        self._load_errors: builtins.list[CharacterLoadError] = []
        self.reload()

    def reload(self) -> None:
        """Re-read the characters directory (built-ins never change)."""
        loaded = load_directory(self._characters_dir) if self._characters_dir else None
        static = dict(self._builtins)
        sources = dict.fromkeys(static, "built in")
        for ch in loaded.characters if loaded else []:
            if ch.id in self._builtins:
                log.info(
                    "characters: %r from %s replaces the built-in", ch.id, self._characters_dir
                )
            static[ch.id] = ch
            sources[ch.id] = f"loaded from {self._characters_dir}"
        self._static, self._sources = static, sources
        self._load_errors = loaded.errors if loaded else []
        if self._preferred_default and self._preferred_default not in static:
            log.warning(
                "characters: the default character %r does not exist; using %r",
                self._preferred_default,
                DEFAULT_CHARACTER_ID,
            )

    @property
    def default_id(self) -> str:
        """The preferred default (configured, or the one that suits the model) when it
        is a built-in or directory character, else `assistant`."""
        preferred = self._preferred_default
        return preferred if preferred in self._static else DEFAULT_CHARACTER_ID

    @property
    def load_errors(self) -> builtins.list[CharacterLoadError]:
        """Directory files skipped at the last (re)load, each naming its file."""
        return builtins.list(self._load_errors)

    def is_readonly(self, character_id: str) -> bool:
        """Built-in or directory characters, which the API cannot change."""
        return character_id in self._static

    def _readonly(self, character_id: str, verb: str) -> Forbidden:
        return Forbidden(
            f"character {character_id!r} is {self._sources[character_id]} "
            f"and cannot be {verb} through the API"
        )

    @staticmethod
    def _decode(character_id: str, raw: str | bytes) -> Character | None:
        try:
            return Character.model_validate_json(raw)
        except ValidationError as exc:
            log.error("characters: stored character %r is unreadable: %s", character_id, exc)
            return None

    @staticmethod
    def _storable(character: Character) -> Character:
        return character.model_copy(update={"builtin": False})

    async def get(self, character_id: str) -> Character:
        if (ch := self._static.get(character_id)) is not None:
            return ch
        raw = await self._stored.get(character_id)
        ch = self._decode(character_id, raw) if raw is not None else None
        if ch is None:
            raise CharacterNotFound(f"character {character_id!r} not found")
        return ch

    async def create(self, character: Character) -> Character:
        """Store a new character; `AlreadyExists` if its id is taken by any source."""
        if character.id in self._static:
            raise AlreadyExists(
                f"character {character.id!r} already exists ({self._sources[character.id]})"
            )
        stored = self._storable(character)
        if not await self._stored.add(stored.id, stored.model_dump_json()):
            raise AlreadyExists(f"character {character.id!r} already exists")
        return stored

    async def update(self, character: Character) -> Character:
        """Replace the stored character with the same id."""
        if character.id in self._static:
            raise self._readonly(character.id, "changed")
        stored = self._storable(character)
        if not await self._stored.replace(stored.id, stored.model_dump_json()):
            raise CharacterNotFound(f"character {character.id!r} not found")
        return stored

    async def delete(self, character_id: str) -> None:
        if character_id in self._static:
            raise self._readonly(character_id, "deleted")
        if not await self._stored.delete(character_id):
            raise CharacterNotFound(f"character {character_id!r} not found")

    async def import_card(self, card: Any, *, character_id: str | None = None) -> Character:
        """Create a character from a Character Card V2 document."""
        return await self.create(card_to_character(card, character_id=character_id))

    async def export_card(self, character_id: str) -> dict[str, Any]:
        return character_to_card(await self.get(character_id))

    async def list(self) -> builtins.list[Character]:
        """Static characters first (built-ins in their order, then the directory's), then
        the stored ones by id."""
        stored = []
        for cid, doc in sorted((await self._stored.all()).items()):
            if cid in self._static:
                continue
            if (ch := self._decode(cid, doc)) is not None:
                stored.append(ch)
        return [*self._static.values(), *stored]
