"""Bounds on what a client may store beyond a message's text (SPEC §3.1)."""

from __future__ import annotations

from typing import Any

import orjson

from chatmem.errors import InvalidInput, TooLarge


def check_metadata(metadata: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """A message's client metadata, refused past `max_bytes` serialized (or if not storable)."""
    if not metadata:
        return metadata
    try:
        size = len(orjson.dumps(metadata))
    except orjson.JSONEncodeError:
        raise InvalidInput(
            "metadata cannot be stored (a lone surrogate, or a non-text key)",
            code="invalid_metadata",
        ) from None
    if size > max_bytes:
        raise TooLarge(
            f"metadata is {size} bytes serialized; the limit is {max_bytes}",
            code="metadata_too_large",
        )
    return metadata
