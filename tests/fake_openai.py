"""A fake OpenAI-compatible server: real sockets, real HTTP/1.1, scripted replies.

Its HTTP is tests/http_wire.py's own: a framework would hide what tests need.

    with FakeOpenAI() as fake:                  # a thread serving 127.0.0.1:<free port>
        fake.script(Reply(text="Hi there", delay_s=0.01), Reply(status=500))
        settings = LLMSettings(base_url=fake.base_url, api_key="k")
        ...
        fake.chat_bodies[-1]["messages"]        # exactly what the model was sent
        await fake.wait_requests(1)             # the model was asked (a turn is under way)
        await fake.wait_disconnected()          # a stream was closed by its client

Replies are consumed one per chat request, in order; then `respond(body)`, if set,
chooses one from the request; else `default` answers. Tests get the server through the
`fake` fixture (conftest), reset for each test. `python -m tests.fake_openai --chunks N`
serves in a process of its own (bench/, through tests/fake_openai_process.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from tests.fake_openai_tools import ToolCall, call_deltas
from tests.http_wire import Request, closed_within, error_body, read_request, send_json

UsageMode = Literal["final", "inline", "null", "absent"]
Outcome = Literal["pending", "completed", "client_closed", "dropped"]


@dataclass
class Reply:
    """One scripted answer to `POST /v1/chat/completions`."""

    text: str = "Hello from the fake model."
    # None: one delta per word; n: the text cut into n nearly equal deltas.
    chunks: int | None = None
    delay_s: float = 0.0  # before each chunk
    headers_delay_s: float = 0.0  # before the response starts (for read timeouts)
    status: int = 200  # anything else: an OpenAI-style error body
    error_message: str = "fake upstream error"
    retry_after_s: float | None = None
    reasoning: str = ""  # sent first, as `reasoning_content` deltas
    # final: OpenAI's way (`usage: null` on each chunk, then a usage chunk with empty
    # `choices`, only if stream_options.include_usage); inline: on the finishing
    # chunk; null: `usage: null` everywhere, never a figure; absent: no field at all.
    usage: UsageMode = "final"
    comments: bool = False  # `: keep-alive` comment lines between events
    empty_choices: bool = False  # an event with `choices: []` and no usage first
    drop_after: int | None = None  # close the socket after this many text deltas
    stall_after: int | None = None  # pause `stall_s` after this many text deltas
    stall_s: float = 0.0
    error_in_stream: str | None = None  # an `error` event after the text, then the end
    plain: bool = False  # a JSON completion even to a streamed request
    done: bool = True  # end with `data: [DONE]`
    finish_reason: str = "stop"  # "tool_calls" when the reply has tool calls
    prompt_tokens: int | None = None  # None: a word count of the request's messages
    tool_calls: list[ToolCall] = field(
        default_factory=list
    )  # after the text (tests/fake_openai_tools.py)

    def deltas(self) -> list[str]:
        if self.chunks is None:
            return re.findall(r"\S+\s*|\s+", self.text)
        n, size = self.chunks, len(self.text)
        return [self.text[i * size // n : (i + 1) * size // n] for i in range(n)]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    outcome: Outcome = "pending"  # for chat requests: how the reply ended
    chunks_sent: int = 0


class FakeOpenAI:
    """An OpenAI-compatible server in a background thread on 127.0.0.1."""

    def __init__(
        self,
        *,
        default: Reply | None = None,
        model: str = "fake-model",
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        self._initial = default or Reply(), api_key
        self.default, self.api_key = self._initial  # api_key: other bearer tokens get a 401
        self.respond: Callable[[Any], Reply] | None = None
        self.model = model
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.disconnected = threading.Event()  # set when a client closes a stream early
        self.connections = 0  # TCP connections accepted (keep-alive reuse shows here)
        self._script: deque[Reply] = deque()
        self._arrived = threading.Condition()  # notified as each request is recorded
        self._epoch = 0  # bumped by reset: a request of an earlier test reports nothing
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- control, from the test's thread ------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next chat requests, in order."""
        self._script.extend(replies)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def chat_bodies(self) -> list[Any]:
        """The JSON bodies of the chat requests received, oldest first."""
        return [r.body for r in self.chat_requests]

    @property
    def request_count(self) -> int:
        return len(self.chat_requests)

    @property
    def client_disconnects(self) -> int:
        return sum(r.outcome == "client_closed" for r in self.chat_requests)

    async def wait_disconnected(self, timeout_s: float = 5.0) -> bool:
        """Wait (without blocking the caller's loop) until a client closes a stream early."""
        return await asyncio.to_thread(self.disconnected.wait, timeout_s)

    def requests_arrived(self, n: int, timeout_s: float = 10.0) -> bool:
        """Block until `n` chat requests have arrived (False after `timeout_s`)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.request_count >= n, timeout_s)

    async def wait_requests(self, n: int, timeout_s: float = 10.0) -> None:
        """Wait (without blocking the caller's loop) until `n` chat requests have arrived."""
        if not await asyncio.to_thread(self.requests_arrived, n, timeout_s):
            raise AssertionError(f"{self.request_count} chat requests after {timeout_s} s, not {n}")

    def reset(self, *, default: Reply | None = None, api_key: str | None = None) -> None:
        """Forget scripts, requests and hooks; answer with `default` (else the one given
        at construction) and require `api_key` (else the one given at construction)."""
        self._epoch += 1
        self._script.clear()
        self.requests.clear()
        self.disconnected.clear()
        self.connections = 0
        self.respond = None
        self.default = default or self._initial[0]
        self.api_key = api_key or self._initial[1]

    def start(self) -> FakeOpenAI:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready)), name="fake-openai", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the server, in its own thread and loop --------------------------------------

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            self.connections += 1
            try:
                await self._connection(reader, writer)
            finally:
                connections.discard(task)

        server = await asyncio.start_server(on_connect, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop.wait()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_request(reader)) is not None:
                if not await self._answer(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        body = orjson.loads(req.raw_body) if req.raw_body.strip() else None
        record = RecordedRequest(req.method, req.path, req.headers, body)
        epoch = self._epoch
        with self._arrived:
            self.requests.append(record)
            self._arrived.notify_all()
        keep_alive = req.headers.get("connection", "").lower() != "close"
        if self.api_key and req.headers.get("authorization") != f"Bearer {self.api_key}":
            await send_json(writer, 401, error_body(401, "Incorrect API key provided"))
            return keep_alive
        if req.method == "GET" and req.path.rstrip("/").endswith("/models"):
            models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            await send_json(writer, 200, models)
            return keep_alive
        if req.method != "POST" or not req.path.endswith("/chat/completions"):
            await send_json(writer, 404, error_body(404, f"no route {req.path}"))
            return keep_alive
        if self._script:
            reply = self._script.popleft()
        else:
            reply = self.respond(body) if self.respond is not None else self.default
        closed = asyncio.ensure_future(reader.read(1))  # completes when the client hangs up
        try:
            await self._reply(reply, body, record, writer, closed)
            # A byte read by `closed` would be lost, so a connection that sent one is not reused.
            return keep_alive and record.outcome == "completed" and not closed.done()
        finally:
            closed.cancel()
            # Let the cancelled read finish before the next request reads this stream
            # (waiting, not awaiting it: a cancellation of this task must not be eaten).
            await asyncio.wait([closed])
            if record.outcome == "client_closed" and epoch == self._epoch:
                self.disconnected.set()

    async def _reply(
        self,
        reply: Reply,
        body: Any,
        record: RecordedRequest,
        writer: asyncio.StreamWriter,
        closed: asyncio.Future[bytes],
    ) -> None:
        if reply.headers_delay_s and await closed_within(closed, reply.headers_delay_s):
            record.outcome = "client_closed"
        elif reply.status != 200:
            headers = {}
            if reply.retry_after_s is not None:
                headers["retry-after"] = f"{reply.retry_after_s:g}"
            await send_json(
                writer, reply.status, error_body(reply.status, reply.error_message), headers
            )
            record.outcome = "completed"
        elif reply.plain or not (isinstance(body, dict) and body.get("stream")):
            # A reply asked for whole takes the model as long as a streamed one.
            delay_s = self._whole_delay_s(reply)
            if delay_s and await closed_within(closed, delay_s):
                record.outcome = "client_closed"
                return
            await send_json(writer, 200, self._completion(reply, body))
            record.outcome = "completed"
        else:
            await self._stream(reply, body, record, writer, closed)

    async def _stream(
        self,
        reply: Reply,
        request: dict[str, Any],
        record: RecordedRequest,
        writer: asyncio.StreamWriter,
        closed: asyncio.Future[bytes],
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for event in self._events(reply, request, reply.deltas()):
            if event is _DROP:
                await writer.drain()
                record.outcome = "dropped"
                return
            if event is _STALL:
                await writer.drain()
                if await closed_within(closed, reply.stall_s):
                    record.outcome = "client_closed"
                    return
                continue
            gone = await closed_within(closed, reply.delay_s) if reply.delay_s else closed.done()
            if gone:
                record.outcome = "client_closed"
                return
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            record.chunks_sent += 1
            try:
                await writer.drain()
            except ConnectionError:
                record.outcome = "client_closed"
                return
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        record.outcome = "completed"

    def _events(self, reply: Reply, request: dict[str, Any], deltas: list[str]) -> list[bytes]:
        wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        usage = self._usage(reply, request, len(deltas))
        base: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": request.get("model") or self.model,
            "system_fingerprint": "fp_fake",
        }
        null_usage = {"usage": None} if reply.usage in ("null", "final") and wants_usage else {}

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            payload = {**base, "choices": [choice], **null_usage, **extra}
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        out: list[bytes] = []
        if reply.empty_choices:
            out.append(b"data: " + orjson.dumps({**base, "choices": []}) + b"\n\n")
        out.append(event({"role": "assistant", "content": ""}))
        for piece in re.findall(r"\S+\s*|\s+", reply.reasoning):
            out.append(event({"reasoning_content": piece, "content": None}))
        for n, piece in enumerate(deltas):
            if reply.drop_after is not None and n == reply.drop_after:
                return [*out, _DROP]
            if reply.stall_after is not None and n == reply.stall_after:
                out.append(_STALL)
            out.append(event({"content": piece}))
            if reply.comments:
                out.append(b": keep-alive\n\n")
        if reply.error_in_stream is not None:
            err = error_body(500, reply.error_in_stream)
            return [*out, b"data: " + orjson.dumps(err) + b"\n\n"]
        out.extend(event(delta) for delta in call_deltas(reply.tool_calls))
        inline = {"usage": usage} if reply.usage == "inline" else {}
        out.append(event({}, _finish(reply), **inline))
        if reply.usage == "final" and wants_usage:
            out.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        if reply.done:
            out.append(b"data: [DONE]\n\n")
        return out

    @staticmethod
    def _whole_delay_s(reply: Reply) -> float:
        stall = reply.stall_s if reply.stall_after is not None else 0.0
        return reply.delay_s * len(reply.deltas()) + stall

    def _completion(self, reply: Reply, request: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [call.wire() for call in reply.tool_calls]
            message["content"] = reply.text or None
        deltas = reply.deltas()
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": (request or {}).get("model") or self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
            "usage": self._usage(reply, request or {}, len(deltas)),
        }

    @staticmethod
    def _usage(reply: Reply, request: dict[str, Any], completion_tokens: int) -> dict[str, int]:
        prompt = reply.prompt_tokens
        if prompt is None:
            messages = request.get("messages") or []
            prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }


def _finish(reply: Reply) -> str:
    return (
        "tool_calls" if reply.tool_calls and reply.finish_reason == "stop" else reply.finish_reason
    )


# Markers in a reply's event list (compared by identity).
_DROP = b"<drop>"  # close the socket here instead of going on
_STALL = b"<stall>"  # pause here for `stall_s`


if __name__ == "__main__":
    from tests.fake_openai_process import main

    main()
