"""A small async client of the native `/v1` API, for the CLI (remote or in-process).

Errors come back as `ApiError(status, code, message)` from the API's
`{"error": {"code", "message"}}` body; a streamed reply is an async iterator of
`SseEvent(event, data, id)` parsed from its server-sent events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})" if code else message)
        self.status = status
        self.code = code
        self.message = message


# The server owns a reply (SPEC §3.4-3.6): these end it; anything else may be followed by more.
END_EVENTS = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: Any
    id: str | None = None


def auth_headers(user: str | None, api_key: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if user:
        headers["X-User-Id"] = user
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


async def _raise_for_error(res: httpx.Response) -> None:
    if res.is_success:
        return
    await res.aread()
    code, message = f"http_{res.status_code}", res.reason_phrase or "error"
    try:
        err = res.json().get("error") or {}
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    except (ValueError, AttributeError):
        pass
    if res.status_code == 401:
        message += " (give an API key with --api-key or CHATMEM_API_KEY)"
    raise ApiError(res.status_code, code, message)


@asynccontextmanager
async def connect(
    url: str | None, headers: dict[str, str], timeout_s: float = 30.0
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a running server at `url`, or of an in-process app (`url` None)
    built from the environment's settings, its lifespan run (embedded Redis and all)."""
    if url:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s) as http:
            yield http
        return
    from chatmem.api.app import create_app
    from chatmem.cli.inprocess import app_client
    from chatmem.config import Settings

    async with app_client(create_app(Settings()), headers=headers, timeout=timeout_s) as http:
        yield http


def _sid(session_id: str) -> str:
    return quote(session_id, safe="")


async def iter_sse(res: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream body into events (comments and pings skipped)."""
    event, data, event_id = "message", list[str](), None
    async for line in res.aiter_lines():
        if not line:
            if data:
                yield SseEvent(event, json.loads("\n".join(data)), event_id)
            event, data, event_id = "message", list[str](), None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield SseEvent(event, json.loads("\n".join(data)), event_id)


class ChatmemClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            res = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "network", f"cannot reach {self.http.base_url}: {exc}") from exc
        await _raise_for_error(res)
        return None if res.status_code == 204 else res.json()

    async def characters(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/v1/characters")
        return result

    async def import_card(self, card: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", "/v1/characters/import", json=card)
        return result

    async def create_session(self, character_id: str | None, title: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"character_id": character_id}
        if title:
            body["title"] = title
        result: dict[str, Any] = await self._json("POST", "/v1/sessions", json=body)
        return result

    async def session(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/v1/sessions/{_sid(session_id)}")
        return result

    async def sessions(self, limit: int = 100) -> list[dict[str, Any]]:
        data = await self._json("GET", "/v1/sessions", params={"limit": limit})
        sessions: list[dict[str, Any]] = data["sessions"]
        return sessions

    async def history(self, session_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` messages, oldest first (following the API's pages)."""
        messages: list[dict[str, Any]] = []
        before: int | None = None
        while len(messages) < limit:
            params: dict[str, Any] = {"limit": min(limit - len(messages), 1000)}
            if before:
                params["before"] = before
            page = await self._json(
                "GET", f"/v1/sessions/{_sid(session_id)}/messages", params=params
            )
            messages = page["messages"] + messages
            before = page.get("next_before")
            if not before or not page["messages"]:
                break
        return messages

    async def stop(self, session_id: str) -> bool:
        data = await self._json("POST", f"/v1/sessions/{_sid(session_id)}/stop")
        return bool(data.get("stopped"))

    async def me(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/v1/me")
        return result

    async def set_display_name(self, name: str | None) -> dict[str, Any]:
        """Your name for `{{user}}` in prompts and greetings (None: back to "User")."""
        result: dict[str, Any] = await self._json("PATCH", "/v1/me", json={"display_name": name})
        return result

    async def users(self, limit: int = 100) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/v1/admin/users", params={"limit": limit})
        return result

    async def user(self, user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/v1/admin/users/{_sid(user_id)}")
        return result

    async def edit_message(self, session_id: str, msg_id: str, content: str) -> dict[str, Any]:
        path = f"/v1/sessions/{_sid(session_id)}/messages/{_sid(msg_id)}"
        data = await self._json("PATCH", path, json={"content": content})
        message: dict[str, Any] = data["message"]
        return message

    async def fork(self, session_id: str, msg_id: str) -> dict[str, Any]:
        path = f"/v1/sessions/{_sid(session_id)}/fork"
        result: dict[str, Any] = await self._json("POST", path, json={"message_id": msg_id})
        return result

    async def context(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/v1/sessions/{_sid(session_id)}/context")
        return result

    async def memories(self, character_id: str | None = None) -> dict[str, Any]:
        params = {"character_id": character_id} if character_id else {}
        result: dict[str, Any] = await self._json("GET", "/v1/memories", params=params)
        return result

    async def export(self, user_id: str | None = None) -> dict[str, Any]:
        """The export of one user's sessions (the caller's unless an admin names another)."""
        params = {"user_id": user_id} if user_id else {}
        result: dict[str, Any] = await self._json("GET", "/v1/export", params=params)
        return result

    async def export_all(self) -> dict[str, Any]:
        """Every user's sessions (admin)."""
        result: dict[str, Any] = await self._json("GET", "/v1/export", params={"all": "true"})
        return result

    async def import_(self, doc: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", "/v1/import", json=doc)
        return result

    async def revise(self, session_id: str, revision: str) -> AsyncGenerator[SseEvent, None]:
        """Regenerate or continue the session's last reply (SPEC §3b): its events."""
        path = f"/v1/sessions/{_sid(session_id)}/{revision}"
        async for event in self._events("POST", path, json={"stream": True}):
            yield event
            if event.event in END_EVENTS:
                return

    async def send(self, session_id: str, content: str) -> AsyncGenerator[SseEvent, None]:
        """Send a message and yield the reply's events as they arrive.

        The server writes the reply whether or not anyone reads it: closing the iterator
        early does not stop it (`stop` does). A connection that drops before the reply's
        end is resumed once, after the last event received.
        """
        last_id: str | None = None
        try:
            async for event in self._events(
                "POST",
                f"/v1/sessions/{_sid(session_id)}/messages",
                json={"content": content, "stream": True},
            ):
                last_id = event.id or last_id
                yield event
                if event.event in END_EVENTS:
                    return
        except ApiError as exc:
            if exc.status != 0 or last_id is None:
                raise
        if last_id is None:
            return
        try:
            async for event in self.follow(session_id, last_id):
                yield event
        except ApiError as exc:
            if exc.status != 404:  # a server that cannot resume: the reply's end is lost here
                raise

    async def follow(
        self, session_id: str, last_event_id: str | None = None
    ) -> AsyncGenerator[SseEvent, None]:
        """The events of the reply being written in the session (SPEC §3.5): from its
        start, or after `last_event_id`, then live until its end. None when no reply is
        running or recently ended (204)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        async for event in self._events(
            "GET", f"/v1/sessions/{_sid(session_id)}/stream", headers=headers
        ):
            yield event

    async def _events(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[SseEvent]:
        headers = {"Accept": "text/event-stream", **kwargs.pop("headers", {})}
        try:
            async with self.http.stream(
                method, path, headers=headers, timeout=httpx.Timeout(10.0, read=None), **kwargs
            ) as res:
                await _raise_for_error(res)
                if res.status_code == 204:
                    return
                async for event in iter_sse(res):
                    yield event
        except httpx.TransportError as exc:
            raise ApiError(0, "network", f"connection to the server lost: {exc}") from exc
