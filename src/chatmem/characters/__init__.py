"""Characters: who the model plays, with its system prompt, greeting and parameters.

`CharacterRegistry` answers lookups across built-ins, a directory and Redis;
`card_to_character` / `character_to_card` convert Character Card V2 documents.
"""

from chatmem.characters.card import (
    CARD_EXTENSION,
    CARD_SPEC,
    CHATMEM_EXTENSION,
    DEFAULT_CARD_PROMPT,
    card_to_character,
    character_to_card,
    greetings_of,
    slugify_id,
)
from chatmem.characters.files import (
    BUILTIN_IDS,
    DEFAULT_CHARACTER_ID,
    CharacterLoadError,
    DirectoryLoad,
    load_builtins,
    load_directory,
)
from chatmem.characters.parse import parse_character
from chatmem.characters.placeholders import USER_NAME, fill, mentions_user
from chatmem.characters.registry import CharacterRegistry

__all__ = [
    "BUILTIN_IDS",
    "CARD_EXTENSION",
    "CARD_SPEC",
    "CHATMEM_EXTENSION",
    "DEFAULT_CARD_PROMPT",
    "DEFAULT_CHARACTER_ID",
    "USER_NAME",
    "CharacterLoadError",
    "CharacterRegistry",
    "DirectoryLoad",
    "card_to_character",
    "character_to_card",
    "fill",
    "greetings_of",
    "load_builtins",
    "load_directory",
    "mentions_user",
    "parse_character",
    "slugify_id",
]
