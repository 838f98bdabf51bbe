"""A character card inside a PNG image, as SillyTavern and the card sites share them: a
`tEXt` chunk whose keyword is `ccv3` (a Card V3) or `chara` (a Card V2), holding the
card's JSON in base64. When both are there, `ccv3` is the newer card and wins."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from chatmem.errors import InvalidInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = (b"ccv3", b"chara")  # in order of preference
_CHUNK_HEAD = struct.Struct(">I4s")


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_card")


def card_from_png(data: bytes) -> Any:
    """The card (decoded JSON) embedded in a PNG; InvalidInput when there is none."""
    if not data.startswith(PNG_SIGNATURE):
        raise _invalid("not a PNG image")
    texts: dict[bytes, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while pos + _CHUNK_HEAD.size <= len(data):
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        start = pos + _CHUNK_HEAD.size
        body = data[start : start + length]
        if len(body) < length:
            raise _invalid("the PNG is truncated")
        if kind == b"tEXt":
            keyword, _, text = body.partition(b"\0")
            if keyword.lower() in CARD_KEYWORDS:
                texts.setdefault(keyword.lower(), text)
        elif kind == b"IEND":
            break
        pos = start + length + 4  # the chunk's CRC
    raw = next((texts[k] for k in CARD_KEYWORDS if k in texts), None)
    if raw is None:
        raise _invalid("the PNG holds no character card (no 'ccv3' or 'chara' text chunk)")
    try:
        return json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise _invalid("the PNG's card is not base64-encoded JSON") from exc


def png_with_card(card: Any, image: bytes, keyword: bytes = b"chara") -> bytes:
    """`image` (a PNG) with `card` embedded after its header chunk, as card tools write it."""
    if not image.startswith(PNG_SIGNATURE):
        raise _invalid("not a PNG image")
    payload = keyword + b"\0" + base64.b64encode(json.dumps(card).encode())
    chunk = _CHUNK_HEAD.pack(len(payload), b"tEXt") + payload
    chunk += struct.pack(">I", binascii.crc32(b"tEXt" + payload))
    ihdr_end = len(PNG_SIGNATURE) + _CHUNK_HEAD.size + 13 + 4
    return image[:ihdr_end] + chunk + image[ihdr_end:]
