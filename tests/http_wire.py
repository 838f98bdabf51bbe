"""Just enough HTTP/1.1 for the fake model: read a request, answer JSON, notice a client
that hangs up. Its own asyncio code, not a framework: tests need to drop a connection in
the middle of a chunked body and to see the instant a client closes a stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes


async def closed_within(closed: asyncio.Future[bytes], delay_s: float) -> bool:
    await asyncio.wait([closed], timeout=delay_s)
    return closed.done()


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed an idle keep-alive connection
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


async def send_json(
    writer: asyncio.StreamWriter,
    status: int,
    payload: Any,
    headers: dict[str, str] | None = None,
) -> None:
    body = orjson.dumps(payload)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    head += ["content-type: application/json", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
