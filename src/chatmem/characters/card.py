"""Character Card V2 (`spec: chara_card_v2`) and V3 (`chara_card_v3`) import, V2 export.

Import maps a card onto a `Character`:

- `first_mes` → greeting; `post_history_instructions` → the field of the same name;
  `creator_notes` (else the start of `description`) → description, the blurb a picker shows.
- The system prompt is assembled, in this order, from `system_prompt` (empty ⇒
  `DEFAULT_CARD_PROMPT`; `{{original}}` inside it ⇒ `DEFAULT_CARD_PROMPT` in its place),
  `description`, `personality`, `scenario` and `mes_example` (its `<START>` separators
  dropped). In `post_history_instructions` `{{original}}` becomes empty: chatmem has
  no default of its own there.
- `{{char}}` / `<BOT>` and `{{user}}` / `<USER>` (matched case-insensitively) are kept,
  as `{{char}}` and `{{user}}`, in the system prompt, greetings and post-history
  instructions: they are filled in when used, with the character's name and the user's
  display name (placeholders.py). In the description (a blurb the picker shows to
  everyone) they become the name and `USER_NAME` ("User") at import.
- The card's own `data` (all of it but the name, unknown fields and `extensions`
  included, verbatim) is kept in `Character.extensions["chara_card_v2"]`, so that
  `character_to_card` gives back the card that was imported.
- The id is, in order: the `character_id` argument, `data.extensions.chatmem.id`
  (written by chatmem's own export), or the name slugified to `[a-z0-9_.@-]{1,64}`.

A V3 card's `data` is V2's plus fields chatmem does not use (assets, nickname, …):
it is read as V2, all of it kept; export writes V2, which V3 tools read. V1 cards (no
`spec`) and anything else are rejected with `InvalidInput`. Cards inside PNG images:
png_card.py.
"""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from typing import Any

from pydantic import ValidationError

from chatmem.errors import InvalidInput
from chatmem.models import Character, MemoryPolicy, ModelParams

from .parse import validation_message
from .placeholders import USER_NAME, fill, normalize

CARD_SPEC = "chara_card_v2"
CARD_SPEC_V3 = "chara_card_v3"
CARD_SPEC_VERSION = "2.0"
# Where an imported card's own fields live inside `Character.extensions`.
CARD_EXTENSION = "chara_card_v2"
# The namespace chatmem writes into a card's `data.extensions` on export.
CHATMEM_EXTENSION = "chatmem"
DEFAULT_CARD_PROMPT = (
    "You are {{char}}. Stay in character and write {{char}}'s next reply "
    "in a conversation with {{user}}."
)
DESCRIPTION_PREVIEW_CHARS = 500
CHARACTER_ID_MAX_CHARS = 64

_TEXT_FIELDS = (
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "creator",
    "character_version",
)
_LIST_FIELDS = ("alternate_greetings", "tags")
# Character fields as the card calls them, for error messages.
_CARD_LABELS = {
    "id": "id",
    "name": "data.name",
    "greeting": "data.first_mes",
    "description": "data.creator_notes",
    "post_history_instructions": "data.post_history_instructions",
    "system_prompt": "system prompt (data.system_prompt, description, personality, "
    "scenario and mes_example together)",
    "params": "data.extensions.chatmem.params",
    "memory": "data.extensions.chatmem.memory",
}
_ORIGINAL_RE = re.compile(r"\{\{original\}\}", re.IGNORECASE)
_START_RE = re.compile(r"^[ \t]*<start>[ \t]*$\n?", re.IGNORECASE | re.MULTILINE)
_SLUG_DROP_RE = re.compile(r"[^a-z0-9_.@-]+")


def slugify_id(name: str) -> str:
    """A character id from a display name; names with no ASCII letters get a hash."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _SLUG_DROP_RE.sub("-", ascii_name.lower()).strip("-_.")
    slug = slug[:CHARACTER_ID_MAX_CHARS].rstrip("-_.")
    if slug:
        return slug
    return "card-" + hashlib.sha256(name.encode()).hexdigest()[:10]


def _assemble_prompt(data: dict[str, Any]) -> str:
    base = data["system_prompt"].strip()
    if not base:
        base = DEFAULT_CARD_PROMPT
    else:
        base = _ORIGINAL_RE.sub(lambda _: DEFAULT_CARD_PROMPT, base)
    parts = [base]
    if description := data["description"].strip():
        parts.append(description)
    if personality := data["personality"].strip():
        parts.append(f"{{{{char}}}}'s personality: {personality}")
    if scenario := data["scenario"].strip():
        parts.append(f"Scenario: {scenario}")
    if examples := _START_RE.sub("", data["mes_example"]).strip():
        parts.append(f"Example dialogue:\n{examples}")
    return "\n\n".join(parts)


def _blurb(data: dict[str, Any]) -> str:
    if notes := data["creator_notes"].strip():
        return str(notes)
    text = str(data["description"]).strip()
    if len(text) > DESCRIPTION_PREVIEW_CHARS:
        text = text[: DESCRIPTION_PREVIEW_CHARS - 1].rstrip() + "…"
    return text


def _normalized_data(card: Any) -> dict[str, Any]:
    """The card's `data` with every field chatmem reads present and type-checked."""
    if not isinstance(card, dict):
        raise InvalidInput(
            f"a Character Card V2 must be a JSON object, got {type(card).__name__}",
            code="invalid_card",
        )
    spec = card.get("spec")
    if spec not in (CARD_SPEC, CARD_SPEC_V3):
        hint = (
            "the 'spec' field is missing (a V1 card? re-export it as V2)"
            if spec is None
            else f"spec is {spec!r}"
        )
        raise InvalidInput(
            f"not a Character Card V2 or V3: {hint}; expected spec {CARD_SPEC!r} "
            f"or {CARD_SPEC_V3!r}",
            code="invalid_card",
        )
    data = card.get("data")
    if not isinstance(data, dict):
        raise InvalidInput("card field 'data' must be an object", code="invalid_card")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("card field 'data.name' must be a non-empty string", code="invalid_card")
    out: dict[str, Any] = {"name": name.strip()}
    for key in _TEXT_FIELDS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"card field 'data.{key}' must be a string", code="invalid_card")
        out[key] = value or ""
    for key in _LIST_FIELDS:
        value = data.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise InvalidInput(
                f"card field 'data.{key}' must be a list of strings", code="invalid_card"
            )
        out[key] = value or []
    extensions = data.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        raise InvalidInput("card field 'data.extensions' must be an object", code="invalid_card")
    out["extensions"] = extensions or {}
    book = data.get("character_book")
    if book is not None and not isinstance(book, dict):
        raise InvalidInput(
            "card field 'data.character_book' must be an object", code="invalid_card"
        )
    return out


def greetings_of(ch: Character) -> list[str]:
    """The character's greeting, then its card's `alternate_greetings` (placeholders
    still in: see placeholders.py); [] for a character without a greeting."""
    if not ch.greeting:
        return []
    stored = ch.extensions.get(CARD_EXTENSION)
    data = stored.get("data") if isinstance(stored, dict) else None
    alts = data.get("alternate_greetings") if isinstance(data, dict) else None
    extra = [a for a in alts if isinstance(a, str) and a.strip()] if isinstance(alts, list) else []
    return [ch.greeting, *(normalize(a) for a in extra)]


def card_to_character(card: Any, *, character_id: str | None = None) -> Character:
    """Import a Character Card V2 document (see the module docstring for the mapping)."""
    data = _normalized_data(card)
    name = data["name"]
    ours = data["extensions"].get(CHATMEM_EXTENSION)
    ours = ours if isinstance(ours, dict) else {}
    cid = character_id or ours.get("id") or slugify_id(name)
    preserved = copy.deepcopy({k: v for k, v in card["data"].items() if k != "name"})
    # A V3 card is kept as the V2 card it is read as (export writes V2).
    spec_version = card.get("spec_version", CARD_SPEC_VERSION)
    if card.get("spec") == CARD_SPEC_V3:
        spec_version = CARD_SPEC_VERSION
    fields: dict[str, Any] = {
        "id": cid,
        "name": name,
        "system_prompt": normalize(_assemble_prompt(data)),
        "greeting": normalize(data["first_mes"]),
        "description": fill(_blurb(data), name, USER_NAME),
        "post_history_instructions": normalize(
            _ORIGINAL_RE.sub("", data["post_history_instructions"]).strip()
        ),
        "extensions": {CARD_EXTENSION: {"spec_version": spec_version, "data": preserved}},
    }
    if "params" in ours:
        fields["params"] = ours["params"]
    if "memory" in ours:
        fields["memory"] = ours["memory"]
    try:
        return Character.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(
            f"card {name!r} cannot be imported: {validation_message(exc, labels=_CARD_LABELS)}",
            code="invalid_card",
        ) from exc


def _empty_card_data() -> dict[str, Any]:
    data: dict[str, Any] = {key: "" for key in _TEXT_FIELDS}
    data.update({key: [] for key in _LIST_FIELDS})
    data["extensions"] = {}
    return data


def character_to_card(ch: Character) -> dict[str, Any]:
    """Export as a Character Card V2.

    A character imported from a card comes back as that card (with any later edits of
    name, greeting, description, post-history instructions or system prompt applied).
    chatmem's own id and model parameters travel in `data.extensions.chatmem` when an
    import could not recover them otherwise; other `Character.extensions` entries go
    into `data.extensions` as they are.
    """
    stored = ch.extensions.get(CARD_EXTENSION)
    if isinstance(stored, dict) and isinstance(stored.get("data"), dict):
        spec_version = stored.get("spec_version", CARD_SPEC_VERSION)
        data = {"name": ch.name, **_empty_card_data(), **copy.deepcopy(stored["data"])}
        try:
            derived: Character | None = card_to_character(
                {"spec": CARD_SPEC, "data": data}, character_id=ch.id
            )
        except InvalidInput:
            derived = None  # the stored card no longer fits: treat every field as edited
        if derived is None or ch.system_prompt != derived.system_prompt:
            # The prompt was edited after import: it now stands for all its sources.
            data.update(
                system_prompt=ch.system_prompt,
                description="",
                personality="",
                scenario="",
                mes_example="",
            )
        if derived is None or ch.greeting != derived.greeting:
            data["first_mes"] = ch.greeting
        if derived is None or ch.description != derived.description:
            data["creator_notes"] = ch.description
        if derived is None or ch.post_history_instructions != derived.post_history_instructions:
            data["post_history_instructions"] = ch.post_history_instructions
    else:
        spec_version = CARD_SPEC_VERSION
        data = _empty_card_data()
        data.update(
            name=ch.name,
            system_prompt=ch.system_prompt,
            first_mes=ch.greeting,
            creator_notes=ch.description,
            post_history_instructions=ch.post_history_instructions,
        )
    if not isinstance(data.get("extensions"), dict):
        data["extensions"] = {}
    extras = {k: v for k, v in ch.extensions.items() if k != CARD_EXTENSION}
    data["extensions"].update(copy.deepcopy(extras))
    ours: dict[str, Any] = {}
    if ch.id != slugify_id(ch.name):
        ours["id"] = ch.id
    if ch.params != ModelParams():
        ours["params"] = ch.params.model_dump(exclude_none=True)
    if ch.memory != MemoryPolicy():
        ours["memory"] = ch.memory.model_dump()
    if ours:
        data["extensions"][CHATMEM_EXTENSION] = ours
    else:
        data["extensions"].pop(CHATMEM_EXTENSION, None)
    return {"spec": CARD_SPEC, "spec_version": spec_version, "data": data}
