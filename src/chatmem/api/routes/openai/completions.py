"""OpenAI-compatible chat with server-side memory: `POST /v1/chat/completions`, `GET /v1/models`.

Point any OpenAI client (the official SDK included, streaming too) at `<chatmem>/v1`.
Unlike OpenAI, the server keeps the conversation, whether the client sends only its new
message or, as most do, the whole conversation every time.

- **Messages.** The last message of `messages` is the new one: the user's, or a tool's
  result (else 400 `no_user_message`); text content parts are joined by newlines, other
  parts are refused (400 `unsupported_content`). The user, assistant and tool messages
  before it are reconciled with the stored ones (chat/reconcile.py): agreeing (or none)
  → the new message is appended; the same last message again, unanswered (a retry after
  a failure) → it is answered, not stored twice; answered (a regenerate) → a new
  alternative of its reply; different (an earlier message edited) → the stored version
  is kept as a fork and the session goes on from the client's. Other roles before the
  new message are left out. The system/developer messages, joined, are the system
  prompt of this turn instead of the character's.
- **Tools.** `tools`, `tool_choice` and `parallel_tool_calls` go to the model; its tool
  calls come back in OpenAI's shape (`message.tool_calls`, or streamed as
  `delta.tool_calls` fragments once the model has finished them; `finish_reason`
  `tool_calls`) and are stored with the reply. The client's tool results (`role:
  "tool"`, `tool_call_id`) are stored after it and answered. A tool message that
  answers no call of the assistant message before it is 400 `invalid_tool_message`,
  and a model that cannot do tools (the embedded one) answers a request with tools or
  tool messages 400 `tools_unsupported`; either way nothing is stored.
- **Session.** The `X-Session-Id` header, or `metadata.session_id` in the body (both
  given and different: 400 `session_id_mismatch`). A session the caller does not have
  yet is created on first use, with its character's greeting as its first message.
  Neither given: stateless, as OpenAI is — the client's messages are the context
  exactly as sent (its system prompt included), nothing is stored in any session, and
  the usage is added to the user's totals (chat/stateless.py).
- **Model.** `model` names the character when it is a character id (`"teacher"`);
  anything else (`"gpt-4o-mini"`) means the default character. It only chooses the
  character of a session being created: an existing session keeps its own. The reply
  echoes `model`; `GET /v1/models` lists the characters and the configured model name.
- **User.** The caller, as on every route. A body `user` names the user the way the seed
  routes' `user_id` does: taken as given in open mode or from an admin, otherwise it must
  be the caller's own id (else 404). Session and user ids follow chatmem's id rule
  (1-128 of letters, digits, `-_.@`), stated as a pattern in the schema.
- **Parameters.** `temperature` is honoured; `max_tokens` / `max_completion_tokens` may
  lower the reply limit, never raise it (the context budget was reserved for it);
  `top_p`, `stop`, `seed`, `presence_penalty`, `frequency_penalty` and
  `response_format` are passed on to an OpenAI-compatible model as given (the embedded
  model leaves them out), as are the tool parameters; `n` must be 1; other OpenAI
  parameters are accepted and ignored.
- **Replies.** A `chat.completion` object, or with `stream: true` `chat.completion.chunk`
  events (`data:` lines only), a usage chunk when `stream_options.include_usage`, then
  `data: [DONE]`. A failure mid-stream is sent as `data: {"error": …}` with no `[DONE]`,
  which the SDK raises as an `APIError`. The `X-Session-Id` response header names the
  session used (none when stateless). In a session, an `Idempotency-Key` header makes a
  retry return the stored reply (a new user message is then a plain send, not
  reconciled; a tool result is always reconciled, which is retry-safe by itself).
- **Errors** use OpenAI's shape, `{"error": {"message", "type", "code", "param"}}` with
  chatmem's machine-readable `code`. Invalid requests are 400 `invalid_request` here
  (OpenAI's status), not the 422 of the native routes; the fields chatmem reads are
  strictly typed, as OpenAI types them (`"stream": "yes"` is refused, not coerced).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatmem.api.deps import AppParts, Caller, Parts, Service
from chatmem.api.errors import error_response
from chatmem.api.routes.openai import model_shapes, shapes, tool_shapes
from chatmem.api.sse.response import sse_response
from chatmem.auth import resolve_user
from chatmem.chat.reconcile import ClientMessage
from chatmem.chat.service import ChatService, Delta, Generation
from chatmem.errors import (
    CharacterNotFound,
    ChatmemError,
    InvalidInput,
    NotFound,
    SessionNotFound,
)
from chatmem.ids import validate_id
from chatmem.models import Character
from chatmem.providers.base import GenerationParams

SESSION_HEADER = "X-Session-Id"
_ERROR_HEADERS = frozenset({"retry-after", "www-authenticate"})
_ERROR_DESCRIPTIONS: dict[int | str, str] = {
    400: "invalid request",
    401: "a credential is required",
    404: "no such user or model",
    409: "the session is busy with another turn, or has ended",
    429: "rate limited",
    502: "the model provider failed",
    503: "Redis or the model provider is unavailable",
    504: "the model provider timed out",
    # Also keeps FastAPI from documenting a 422: these routes answer 400 instead.
    "4XX": "any other client error",
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": shapes.ErrorResponse, "description": description}
    for status, description in _ERROR_DESCRIPTIONS.items()
}


class OpenAIErrorRoute(APIRoute):
    """Answers this router's errors in OpenAI's shape, validation errors as 400."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ChatmemError as exc:
                return openai_error_response(exc)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except StarletteHTTPException as exc:
                return JSONResponse(
                    shapes.error_body(exc.status_code, "http_error", str(exc.detail)),
                    status_code=exc.status_code,
                    headers=exc.headers,
                )

        return route


def openai_error_response(exc: ChatmemError) -> JSONResponse:
    native = error_response(exc)  # for the status and its headers, as on every route
    headers = {k: v for k, v in native.headers.items() if k.lower() in _ERROR_HEADERS}
    status = native.status_code
    return JSONResponse(
        shapes.error_body(status, exc.code, exc.message), status_code=status, headers=headers
    )


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "header")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    return JSONResponse(
        shapes.error_body(400, "invalid_request", f"{param}: {msg}" if param else msg, param=param),
        status_code=400,
    )


router = APIRouter(
    prefix="/v1",
    tags=["openai-compatible"],
    route_class=OpenAIErrorRoute,
    responses=_ERROR_RESPONSES,
)


async def _character_for(service: ChatService, model: str) -> Character:
    """The character `model` names, or the default one."""
    characters = service.characters
    with contextlib.suppress(InvalidInput):
        validate_id(model, "model")
        with contextlib.suppress(CharacterNotFound):
            return await characters.get(model)
    return await characters.get(characters.default_id)


def _requested_session(header: str | None, from_body: str | None) -> str | None:
    if header is not None and from_body is not None and header != from_body:
        raise InvalidInput(
            f"the {SESSION_HEADER} header and metadata.session_id name different sessions",
            code="session_id_mismatch",
        )
    requested = header if header is not None else from_body
    if requested is None:
        return None
    return validate_id(requested, SESSION_HEADER if header is not None else "metadata.session_id")


async def _prepare(
    service: ChatService,
    user_id: str,
    body: shapes.ChatCompletionRequest,
    requested_session: str | None,
    new: ClientMessage,
    idempotency_key: str | None,
) -> Generation:
    """Prepare the turn (stateless without a session), creating the session first if the
    caller does not have it.

    The hot path (the session exists) costs no extra round trip: the turn is tried as it
    is, and only a missing session is created, then the turn retried once.
    """
    prior, system_prompt = _conversation(body.messages)

    # As OpenAI does, a client that goes away stops the reply.
    def adjust(gen: Generation) -> None:
        gen.params = _apply_params(gen.params, body)
        if system_prompt is not None and requested_session is not None:
            _use_system_prompt(gen, system_prompt)

    if requested_session is None:  # stateless, as OpenAI is (chat/stateless.py)
        character = await _character_for(service, body.model)
        sent = [shapes.client_message(m) for m in body.messages]
        return await service.stateless.prepare(
            user_id, character, sent, relay=bool(body.stream), adjust=adjust
        )
    session_id = requested_session
    opts: dict[str, Any] = {
        "idempotency_key": idempotency_key,
        "stream": bool(body.stream),
        "on_disconnect": "stop",
        "adjust": adjust,
    }
    try:
        return await service.prepare_client_turn(user_id, session_id, prior, new, **opts)
    except SessionNotFound:
        pass
    character = await _character_for(service, body.model)
    await service.create_session(user_id, character.id, session_id=session_id, ensure=True)
    return await service.prepare_client_turn(user_id, session_id, prior, new, **opts)


def _conversation(
    messages: list[shapes.ChatMessageIn],
) -> tuple[list[ClientMessage], str | None]:
    """The user, assistant and tool messages before the new one, and the system prompt
    the client gave (its system and developer messages joined; None: it gave none)."""
    prior: list[ClientMessage] = []
    system: list[str] = []
    for msg in messages[:-1]:
        if msg.role in ("system", "developer"):
            system.append(shapes.message_text(msg))
        elif msg.role in ("user", "assistant", "tool"):
            prior.append(shapes.client_message(msg))
    return prior, "\n\n".join(system) if system else None


def _validated(service: ChatService, new: ClientMessage) -> ClientMessage:
    """The new message, its text as stored. A tool's result is stored exactly as sent
    (it may be empty; trimmed, it would not match what the client sends back next time)
    and only its length is checked."""
    if new.role != "tool":
        return dataclasses.replace(new, content=service.validate_content(new.content))
    if new.content.strip():
        service.validate_content(new.content)
    return new


def _use_system_prompt(gen: Generation, prompt: str) -> None:
    messages = gen.context.messages
    if messages and messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": prompt}
    else:
        messages.insert(0, {"role": "system", "content": prompt})


def _apply_params(params: GenerationParams, body: shapes.ChatCompletionRequest) -> GenerationParams:
    if body.temperature is not None:
        params = dataclasses.replace(params, temperature=body.temperature)
    options = {k: getattr(body, k) for k in shapes.PASSED_ON if getattr(body, k) is not None}
    if options:
        params = dataclasses.replace(params, options=options)
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None:
        limit = min(asked, params.max_tokens) if params.max_tokens else asked
        params = dataclasses.replace(params, max_tokens=limit)
    return params


def _sse_data(obj: Any) -> dict[str, str]:
    return {"data": orjson.dumps(obj).decode()}


async def _chunks(gen: Generation, shape: shapes.ChunkShaper) -> AsyncIterator[dict[str, str]]:
    yield _sse_data(shape.role())
    finished = False
    try:
        async for event in gen.events():
            if isinstance(event, Delta):
                yield _sse_data(shape.content(event.text))
            else:
                for chunk in shape.closing(event):
                    yield _sse_data(chunk)
        finished = True
    except ChatmemError as exc:
        finished = True
        status = openai_error_response(exc).status_code
        yield _sse_data(shapes.error_body(status, exc.code, exc.message))
        return
    finally:
        if not finished:
            gen.request_stop()  # the client went away: OpenAI stops too
    yield {"data": shapes.DONE_DATA}


@router.post(
    "/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": shapes.ChatCompletion,
            "description": "a `chat.completion`, or `chat.completion.chunk` events when streamed",
            "content": {"text/event-stream": {"schema": shapes.stream_event_schema()}},
        }
    },
)
async def chat_completions(
    body: shapes.ChatCompletionRequest,
    caller: Caller,
    service: Service,
    x_session_id: Annotated[
        str | None, Header(pattern=shapes.ID_PATTERN, description="the session to talk in")
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Send the user's new message; the session supplies the history (see the module doc)."""
    new = _validated(service, shapes.new_message(body.messages))
    if not service.provider.info.tools and tool_shapes.uses_tools(
        body.tools, [shapes.client_message(m) for m in body.messages]
    ):
        raise InvalidInput(
            "the model cannot use tools: send no tools and no tool messages",
            code="tools_unsupported",
        )
    user_id = resolve_user(caller, body.user) if body.user is not None else caller.user_id
    from_body = body.metadata.session_id if body.metadata is not None else None
    requested = _requested_session(x_session_id, from_body)
    gen = await _prepare(service, user_id, body, requested, new, idempotency_key)
    created = int(time.time())
    headers = {"Cache-Control": "no-store"}
    if requested is not None:
        headers[SESSION_HEADER] = gen.session_id
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        shape = shapes.ChunkShaper(
            gen.reply_id, model=body.model, created=created, include_usage=include_usage
        )
        return sse_response(
            gen,
            _chunks(gen, shape),
            grace_s=service.settings.server.shutdown_grace_s,
            headers=headers,
        )
    done = await service.complete(gen)
    return JSONResponse(shapes.completion(done, model=body.model, created=created), headers=headers)


@router.get("/models", response_model=model_shapes.ModelList)
async def list_models(_: Caller, parts: Parts) -> dict[str, Any]:
    """The characters, each as a model id, then the configured model (the default character)."""
    registry = parts.characters
    return model_shapes.model_list(
        await registry.list(),
        default=await registry.get(registry.default_id),
        configured_model=_configured_model(parts),
    )


@router.get("/models/{model_id}", response_model=model_shapes.ModelOut)
async def get_model(model_id: str, _: Caller, parts: Parts) -> dict[str, Any]:
    registry = parts.characters
    try:
        return model_shapes.model_entry(await registry.get(validate_id(model_id, "model")))
    except (CharacterNotFound, InvalidInput):
        if model_id != _configured_model(parts):
            raise NotFound(f"model {model_id[:64]!r} not found", code="model_not_found") from None
    return model_shapes.model_entry(await registry.get(registry.default_id), model_id=model_id)


def _configured_model(parts: AppParts) -> str:
    return parts.settings.llm.model or parts.service.provider.info.name
