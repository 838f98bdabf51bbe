"""Turn an untrusted mapping into a `Character`, with errors a person can act on."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from chatmem.errors import InvalidInput
from chatmem.models import Character


def validation_message(exc: ValidationError, *, labels: dict[str, str] | None = None) -> str:
    """One line per problem: `field: what is wrong`, fields renamed through `labels`."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(value)"
        if labels:
            head, _, rest = loc.partition(".")
            loc = labels.get(head, head) + ("." + rest if rest else "")
        problems.append(f"{loc}: {err['msg']}")
    return "; ".join(problems)


def parse_character(doc: Any, *, source: str = "", default_id: str | None = None) -> Character:
    """Validate one character document (a mapping of `Character` fields).

    `default_id` fills a missing `id` (a directory file's stem). `builtin` is not taken
    from the document: only the registry decides what is built in. `source` prefixes
    error messages.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(doc, dict):
        raise InvalidInput(
            f"{prefix}expected a mapping of character fields, got {type(doc).__name__}",
            code="invalid_character",
        )
    fields = {k: v for k, v in doc.items() if k != "builtin"}
    if "id" not in fields and default_id is not None:
        fields["id"] = default_id
    try:
        return Character.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(
            f"{prefix}not a valid character: {validation_message(exc)}",
            code="invalid_character",
        ) from exc
