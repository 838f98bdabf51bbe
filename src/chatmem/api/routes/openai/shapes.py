"""OpenAI's chat-completions wire format, shaped from chatmem values (pure: no I/O).

Requests are read the way OpenAI-compatible servers are used: parameters chatmem has
no use for are accepted and ignored, while the ones it reads are strictly typed, as
OpenAI types them (`"stream": "yes"` is a 400, not true). The last message of
`messages` is the new one (see `new_message`); the ones before it are reconciled with
the session. Responses follow OpenAI's objects field for field; the streamed ones are
built as plain dicts, not models, because one is built per relayed token. The tool
fields are in tool_shapes.py.

The pydantic response models below document `/openapi.json` (and let schemathesis
check the answers against it); the dicts the routes send must keep to them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from chatmem.api.routes.openai import tool_shapes
from chatmem.api.routes.openai.tool_shapes import ToolCallDelta, ToolCallIn, ToolCallOut
from chatmem.chat.reconcile import ClientMessage
from chatmem.chat.service import TurnDone
from chatmem.errors import InvalidInput
from chatmem.ids import ID_PATTERN
from chatmem.models import Message, Usage

COMPLETION_ID_PREFIX = "chatcmpl-"
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls", "function_call"})
DONE_DATA = "[DONE]"

# --- requests ---------------------------------------------------------------------------


# Strict: no coercions (a string for a number, 0 for false), as OpenAI validates.
_REQUEST = ConfigDict(extra="ignore", strict=True)


def _integral(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer, which strict pydantic alone would refuse.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The bounds go before the validator: after it, pydantic leaves them out of the schema.
TokenCount = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
ChoiceCount = Annotated[int, Field(ge=1, le=1), BeforeValidator(_integral)]


class ContentPart(BaseModel):
    model_config = _REQUEST

    type: str = Field(max_length=64)
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = _REQUEST

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=tool_shapes.MAX_TOOL_CALLS)
    tool_call_id: str | None = Field(None, max_length=256)


class RequestMetadata(BaseModel):
    """OpenAI's free string pairs; chatmem reads `session_id`."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, str] = Field(init=False)

    session_id: str | None = Field(None, pattern=ID_PATTERN, description="the session")


class StreamOptions(BaseModel):
    model_config = _REQUEST

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body; what chatmem does with each field is in the route's doc."""

    model_config = _REQUEST

    model: str = Field(max_length=256, description="a character id, or any other model name")
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, pattern=ID_PATTERN, description="a user id (see the route)")
    metadata: RequestMetadata | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    n: ChoiceCount | None = Field(None, description="chatmem answers with one choice")
    # Passed on to the model as given (SPEC §4).
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=tool_shapes.MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


PASSED_ON = (
    "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "response_format",
    "tools", "tool_choice", "parallel_tool_calls",
)  # fmt: skip


def client_message(message: ChatMessageIn) -> ClientMessage:
    return tool_shapes.client_message(
        message.role, message_text(message), message.tool_calls, message.tool_call_id
    )


def new_message(messages: list[ChatMessageIn]) -> ClientMessage:
    """The new message: the last one, which must be the user's or a tool's result (what
    comes before it is reconciled with the session: see the route's doc)."""
    last = messages[-1]
    if last.role not in ("user", "tool"):
        raise InvalidInput(
            "the last message must be the user's new message or a tool's result, "
            f"not a {last.role!r} message",
            code="no_user_message",
        )
    return client_message(last)


def message_text(message: ChatMessageIn) -> str:
    """A message's text: its text parts joined by newlines (other parts: 400)."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidInput(
                f"only text content is supported, not {part.type!r}", code="unsupported_content"
            )
        texts.append(part.text)
    return "\n".join(texts)


# --- responses --------------------------------------------------------------------------


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class ChoiceOut(BaseModel):
    index: int
    message: AssistantMessageOut
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut
    system_fingerprint: None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
    system_fingerprint: None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _inline_defs(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_defs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_defs(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline_defs(v, defs) for v in schema]
    return schema


def stream_event_schema() -> dict[str, Any]:
    """The JSON Schema of one event of a streamed reply, for `/openapi.json`: its `data`
    is a `chat.completion.chunk`, an error object, or `[DONE]`."""
    payload = TypeAdapter(ChatCompletionChunk | ErrorResponse).json_schema()
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": _inline_defs(payload, payload.get("$defs", {})),
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"anyOf": [{"const": DONE_DATA}, json_data]}},
    }


def completion_id(reply_id: str) -> str:
    return COMPLETION_ID_PREFIX + reply_id


def finish_reason(message: Message) -> str:
    if tool_shapes.reply_calls(message):
        return "tool_calls"  # what agent loops test, whatever the upstream called it
    reason = message.metadata.get("finish_reason")
    return reason if isinstance(reason, str) and reason in FINISH_REASONS else "stop"


def usage_fields(done: TurnDone) -> dict[str, int]:
    """The turn's token usage; a replayed turn reports what the original one used."""
    usage = done.usage
    stored = done.message.metadata.get("usage")
    if done.replayed and isinstance(stored, dict):
        usage = Usage(
            int(stored.get("prompt_tokens") or 0), int(stored.get("completion_tokens") or 0)
        )
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion(done: TurnDone, *, model: str, created: int) -> dict[str, Any]:
    """A `chat.completion` object for a finished turn."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": done.message.content,
        "refusal": None,
    }
    if calls := tool_shapes.reply_calls(done.message):
        message["tool_calls"] = calls
        message["content"] = done.message.content or None  # as OpenAI answers
    return {
        "id": completion_id(done.message.msg_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(done.message),
                "logprobs": None,
            }
        ],
        "usage": usage_fields(done),
        "system_fingerprint": None,
    }


class ChunkShaper:
    """Builds the `chat.completion.chunk` objects of one streamed reply.

    As OpenAI: the first chunk carries the role, each next one a piece of content, the
    last one the finish reason. With `include_usage`, every chunk has `usage: null` and
    a last chunk with no choices carries the usage.
    """

    __slots__ = ("_base", "include_usage")

    def __init__(self, reply_id: str, *, model: str, created: int, include_usage: bool) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id(reply_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk = {
            **self._base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def role(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> dict[str, Any]:
        return self._chunk({"content": text})

    def finish(self, done: TurnDone) -> dict[str, Any]:
        return self._chunk({}, finish_reason(done.message))

    def usage(self, done: TurnDone) -> dict[str, Any]:
        return {**self._base, "choices": [], "usage": usage_fields(done)}

    def closing(self, done: TurnDone) -> list[dict[str, Any]]:
        """The chunks that end the reply: its tool calls, the finish reason, then the
        usage if asked."""
        calls = tool_shapes.call_deltas(tool_shapes.reply_calls(done.message))
        out = [self._chunk(delta) for delta in calls]
        out.append(self.finish(done))
        if self.include_usage:
            out.append(self.usage(done))
        return out


# --- errors -----------------------------------------------------------------------------

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's `error.type` for a status: what SDKs and clients branch on."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, code: str, message: str, *, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object; `code` and `message` are chatmem's own, as on every route."""
    return {"error": {"message": message, "type": error_type(status), "code": code, "param": param}}
