"""chatmem's own upstream HTTP/1.1 client (providers/http1.py, http1_pool.py) against
small real asyncio servers, each written in the test to send exactly the bytes it
needs: chunked bodies cut anywhere, keep-alive, a server closing a kept connection,
slow and partial writes, every timeout, TLS with a locally made CA, malformed heads."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import uvloop

from chatmem.config import LLMSettings
from chatmem.errors import ProviderTimeout, ProviderUnavailable
from chatmem.providers import GenerationParams, http1, sse_decoder
from chatmem.providers.http1 import MAX_HEAD_BYTES, Http1Connection, parse_head
from chatmem.providers.http1_pool import Http1Client
from chatmem.providers.httpx_upstream import HttpxUpstream
from chatmem.providers.openai_compat import OpenAICompatProvider, UpstreamMalformed
from chatmem.providers.upstream import (
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    Timeouts,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamProtocolError,
    WriteTimeout,
    proxied,
)
from tests.api_support import make_test_settings, new_session, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.http_wire import Request, read_request

Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
T = Timeouts(connect_s=2.0, read_s=2.0, write_s=2.0, pool_s=2.0)
SSE = (
    b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":" there"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


class Server:
    """Serves `handler` for each request of each connection; counts both."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[Request] = []
        self.port = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if task := asyncio.current_task():
            self.tasks.add(task)
        try:
            while not writer.is_closing() and (request := await read_request(reader)):
                self.requests.append(request)
                await self.handler(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a test server: the test is over, or the client went away
        finally:
            writer.close()


@asynccontextmanager
async def serving(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        try:
            yield server
        finally:
            listener.close()
            for task in server.tasks:
                task.cancel()
            await asyncio.gather(*server.tasks, return_exceptions=True)


@asynccontextmanager
async def client_for(server: Server, **kw: Any) -> AsyncIterator[Http1Client]:
    scheme = kw.pop("scheme", "http")
    path = kw.pop("path", "/v1")
    values: dict[str, Any] = {"headers": {"Authorization": "Bearer k"}, "timeouts": T}
    values |= {"max_connections": 8} | kw
    client = Http1Client(f"{scheme}://127.0.0.1:{server.port}{path}", **values)
    try:
        yield client
    finally:
        await client.aclose()


def respond(*parts: bytes, pause_s: float = 0.0, delay_s: float = 0.0) -> Handler:
    async def handler(_: Request, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay_s)
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)

    return handler


def ok(body: bytes = b'{"ok":true}', *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join([*head, *extra]) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes) -> list[bytes]:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return [head, *(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces), b"0\r\nX-T: 1\r\n\r\n"]


async def post(client: Http1Client, body: bytes = b"{}", **kw: Any) -> tuple[int, bytes]:
    async with client.post("chat/completions", body, **kw) as resp:
        return resp.status, await resp.aread()


# -- requests and bodies ------------------------------------------------------------------


async def test_one_write_with_the_path_query_and_headers_of_the_config() -> None:
    async with serving(respond(ok())) as server, client_for(server, path="/v1?api-version=2") as c:
        assert await post(c, b'{"a":1}') == (200, b'{"ok":true}')
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions?api-version=2")
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.headers["accept-encoding"] == "gzip, deflate"
    assert request.raw_body == b'{"a":1}'


async def test_a_chunked_body_cut_anywhere_arrives_whole_and_as_it_comes() -> None:
    wire = b"".join(chunked(SSE[:30], SSE[30:]))
    cuts = [wire[i : i + 7] for i in range(0, len(wire), 7)]  # inside sizes, CRLFs, data
    async with serving(respond(*cuts, pause_s=0.002)) as server, client_for(server) as c:
        async with c.post("chat/completions", b"{}") as resp:
            blocks = [block async for block in resp.aiter_bytes()]
        assert b"".join(blocks) == SSE
        assert len(blocks) > 10  # handed on as they came, not at the end
        assert await post(c) == (200, SSE)  # the trailer was read: the connection is clean
    assert server.connections == 1


async def test_a_slow_partial_head_and_a_1xx_before_the_response() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"slow")
    pieces = [wire[i : i + 3] for i in range(0, len(wire), 3)]
    async with serving(respond(*pieces, pause_s=0.01)) as server, client_for(server) as c:
        assert await post(c) == (200, b"slow")


async def test_a_gzip_body_is_decoded() -> None:
    body = gzip.compress(b'{"text":"' + b"x" * 5000 + b'"}')
    async with (
        serving(respond(ok(body, "Content-Encoding: gzip"))) as server,
        client_for(server) as c,
    ):
        got = await post(c)
    assert got == (200, b'{"text":"' + b"x" * 5000 + b'"}')


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_a_deflate_body_is_decoded_wrapped_or_raw(wbits: int) -> None:
    """`deflate` is meant zlib-wrapped; some servers send it raw (it was a 502)."""
    text = b'{"text":"' + b"y" * 5000 + b'"}'
    packer = zlib.compressobj(wbits=wbits)
    body = packer.compress(text) + packer.flush()
    async with (
        serving(respond(ok(body, "Content-Encoding: deflate"))) as server,
        client_for(server) as c,
    ):
        assert await post(c) == (200, text)


async def test_a_corrupt_deflate_body_is_a_protocol_error() -> None:
    async with (
        serving(respond(ok(b"\xff" * 64, "Content-Encoding: deflate"))) as server,
        client_for(server) as c,
    ):
        with pytest.raises(UpstreamProtocolError, match="undecodable"):
            await post(c)


async def test_a_close_delimited_body_is_read_to_the_end_and_not_reused() -> None:
    async def until_close(_: Request, __: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with serving(until_close) as server, client_for(server) as c:
        assert await post(c) == (200, b"all of it")
        assert await post(c) == (200, b"all of it")
        assert c.open_connections == 0
    assert server.connections == 2


# -- keep-alive ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "connections"),
    [(ok(), 1), (ok(b"{}", "Connection: close"), 3), (ok().replace(b"1.1", b"1.0", 1), 3)],
    ids=["kept-alive", "connection-close", "http-1.0"],
)
async def test_connections_are_reused_unless_the_server_says_not(
    response: bytes, connections: int
) -> None:
    async with serving(respond(response)) as server, client_for(server) as c:
        for _ in range(3):
            assert (await post(c))[0] == 200
    assert server.connections == connections
    assert len(server.requests) == 3


async def test_a_kept_connection_the_server_closed_is_not_used_and_nothing_is_sent_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def close_after(request: Request, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.02)  # the server's keep-alive timeout
        writer.close()

    sends: list[bool] = []
    real_send = Http1Connection.send_nowait

    def counted(self: Http1Connection, data: bytes) -> bool:
        sends.append(real_send(self, data))
        return sends[-1]

    monkeypatch.setattr(Http1Connection, "send_nowait", counted)
    async with serving(close_after) as server, client_for(server) as c:
        assert (await post(c))[0] == 200
        await asyncio.sleep(0.1)
        assert (await post(c))[0] == 200
    assert (server.connections, len(server.requests)) == (2, 2)
    assert sends == [True, True]  # the closed one was dropped, not tried


async def test_a_kept_connection_the_server_spoke_on_while_idle_is_not_reused() -> None:
    async def then_408(request: Request, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(ok())
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")

    async with serving(then_408) as server, client_for(server) as c:
        assert await post(c) == (200, b'{"ok":true}')
        await asyncio.sleep(0.1)
        assert await post(c) == (200, b'{"ok":true}')
    assert (server.connections, len(server.requests)) == (2, 2)


async def test_a_reused_connection_closed_after_the_request_is_not_retried() -> None:
    """The server may have read the POST: retrying could run a generation twice; the
    provider retries it, before the first token, as its own decision."""

    async def answer_once(request: Request, reader: Any, writer: asyncio.StreamWriter) -> None:
        if len(server.requests) == 1:
            writer.write(ok())
        else:
            writer.transport.abort()

    async with serving(answer_once) as server, client_for(server) as c:
        assert (await post(c))[0] == 200
        with pytest.raises(UpstreamDisconnected, match="without sending a response"):
            await post(c)
    assert len(server.requests) == 2


async def test_a_write_that_fails_at_once_on_a_reused_connection_goes_out_on_a_new_one() -> None:
    async with serving(respond(ok())) as server, client_for(server) as c:
        assert (await post(c))[0] == 200
        [conn] = c._idle
        conn.transport.get_extra_info("socket").shutdown(2)  # writes now fail at once
        assert (await post(c))[0] == 200
    assert (server.connections, len(server.requests)) == (2, 2)


async def test_idle_connections_expire_and_only_max_keepalive_are_kept() -> None:
    async with (
        serving(respond(ok(), delay_s=0.05)) as server,
        client_for(server, max_keepalive=2, keepalive_expiry_s=0.1) as c,
    ):
        await asyncio.gather(*(post(c) for _ in range(4)))
        assert (server.connections, c.open_connections) == (4, 2)
        await asyncio.sleep(0.15)
        assert (await post(c))[0] == 200
        assert server.connections == 5  # both kept ones had expired
        assert c.open_connections == 1


async def test_past_max_connections_a_request_waits_for_one_then_times_out() -> None:
    async with serving(respond(ok(), delay_s=0.3)) as server:
        t = Timeouts(connect_s=1, read_s=1, write_s=1, pool_s=0.1)
        async with client_for(server, max_connections=1, timeouts=t) as c:
            first = asyncio.create_task(post(c))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                await post(c)
            assert 0.08 < time.monotonic() - started < 2.0
            patient = Timeouts(connect_s=1, read_s=1, write_s=1, pool_s=2)
            assert (await post(c, timeouts=patient))[0] == 200  # the first's, once freed
            assert (await first)[0] == 200
    assert server.connections == 1


# -- timeouts and errors ----------------------------------------------------------------


async def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    async with serving(respond()) as server:
        t = Timeouts(connect_s=1, read_s=0.15, write_s=1, pool_s=1)
        async with client_for(server, timeouts=t) as c:
            started = time.monotonic()
            with pytest.raises(ReadTimeout):
                await post(c)
            assert 0.1 < time.monotonic() - started < 2.0


async def test_a_stall_inside_the_body_is_a_read_timeout() -> None:
    wire = b"".join(chunked(SSE[:30])[:2])  # a chunk, then nothing
    async with serving(respond(wire, pause_s=5)) as server:
        t = Timeouts(connect_s=1, read_s=0.15, write_s=1, pool_s=1)
        async with client_for(server, timeouts=t) as c, c.post("x", b"{}") as resp:
            blocks = resp.aiter_bytes()
            assert await anext(blocks) == SSE[:30]
            with pytest.raises(ReadTimeout):
                await anext(blocks)


async def test_the_read_timeout_counts_from_the_last_byte_not_the_first_wait() -> None:
    head, piece, _ = chunked(b"one")
    async with serving(respond(head, piece, pause_s=0.3)) as server:  # then it stalls
        t = Timeouts(connect_s=1, read_s=0.5, write_s=1, pool_s=1)
        async with client_for(server, timeouts=t) as c, c.post("x", b"{}") as resp:
            blocks = resp.aiter_bytes()
            assert await anext(blocks) == b"one"  # 0.3 s after the head, 0.2 s before
            last = time.monotonic()  # the head's read timeout would have ended
            with pytest.raises(ReadTimeout):
                await anext(blocks)
            assert 0.45 < time.monotonic() - last < 2.0


async def test_a_head_trickled_a_byte_at_a_time_is_a_read_timeout_all_the_same() -> None:
    """Each byte in time for the read timeout, the head not: a JSON turn was held past
    60 s by a server that sent its head a byte a second (or `100 Continue` every second)."""
    trickle = [bytes([b]) for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 200]
    continues = [b"HTTP/1.1 100 Continue\r\n\r\n"] * 200
    for parts in (trickle, continues):
        async with serving(respond(*parts, pause_s=0.05)) as server:
            t = Timeouts(connect_s=1, read_s=0.4, write_s=1, pool_s=1)
            async with client_for(server, timeouts=t) as c:
                started = time.monotonic()
                with pytest.raises(ReadTimeout):
                    await post(c)
                assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
async def test_a_body_past_the_bound_is_refused_not_held(encoding: str) -> None:
    """A 300 KB gzip bomb of 300 MB took the server to 1 GB: the body is decoded step by
    step and refused past MAX_BODY_BYTES."""
    size = http1.MAX_BODY_BYTES + 1024
    if encoding == "gzip":
        body, extra = gzip.compress(b"x" * size), "Content-Encoding: gzip"
    else:
        body, extra = b"x" * size, "X-Plain: 1"
    async with serving(respond(ok(body, extra))) as server, client_for(server) as c:
        with pytest.raises(UpstreamProtocolError, match="over"):
            await post(c)


async def test_a_tls_handshake_that_never_comes_is_a_connect_timeout() -> None:
    async with serving(respond()) as server:  # plain TCP: the TLS hello is never answered
        t = Timeouts(connect_s=0.2, read_s=1, write_s=1, pool_s=1)
        async with client_for(server, scheme="https", timeouts=t) as c:
            with pytest.raises(ConnectTimeout):
                await post(c)
            assert c.open_connections == 0


async def test_a_server_that_does_not_read_is_a_write_timeout() -> None:
    async def no_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        writer.close()

    listener = await asyncio.start_server(no_read, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    t = Timeouts(connect_s=1, read_s=1, write_s=0.2, pool_s=1)
    client = Http1Client(f"http://127.0.0.1:{port}", headers={}, timeouts=t, max_connections=1)
    async with listener:
        with pytest.raises(WriteTimeout):
            await post(client, b"x" * (64 * 1024 * 1024))
        await client.aclose()
        listener.close()
        await asyncio.sleep(0.1)  # the server side sees the close


@pytest.mark.parametrize(
    ("url", "headers"),
    [("ftp://127.0.0.1/v1", {}), ("localhost:8000/v1", {}), ("http://h/v1", {"X": "a\r\nB: c"})],
)
async def test_a_bad_base_url_or_header_fails_each_request_not_the_start(
    url: str, headers: dict[str, str]
) -> None:
    client = Http1Client(url, headers=headers, timeouts=T, max_connections=1)
    with pytest.raises(UpstreamConnectError):
        await post(client)
    with pytest.raises(ProviderUnavailable):
        await reply(provider_for(url, api_key=headers.get("X")))


async def test_connection_refused_is_a_connect_error() -> None:
    async with serving(respond()) as server:
        port = server.port
    client = Http1Client(f"http://127.0.0.1:{port}", headers={}, timeouts=T, max_connections=1)
    with pytest.raises(UpstreamConnectError):
        await post(client)


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
    ],
    ids=["status", "protocol", "header", "length", "chunk-size", "oversize-head"],
)
async def test_a_malformed_response_is_a_protocol_error(wire: bytes) -> None:
    async with serving(respond(wire)) as server, client_for(server) as c:
        with pytest.raises(UpstreamProtocolError):
            await post(c)
        assert c.open_connections == 0


def test_parse_head_joins_repeated_headers_and_folded_lines() -> None:
    status, headers, http11 = parse_head(b"HTTP/1.1 404 Not Found\r\nA: 1\r\na: 2\r\nB: x\r\n  y")
    assert (status, headers, http11) == (404, {"a": "1, 2", "b": "x y"}, True)


# -- through the provider: the errors a client sees -----------------------------------


def provider_for(base_url: str, **kw: Any) -> OpenAICompatProvider:
    values = {"base_url": base_url, "api_key": "k", "max_retries": 1, "retry_backoff_s": 0.01}
    return OpenAICompatProvider(LLMSettings(**(values | kw)))


async def reply(provider: OpenAICompatProvider, *, close: bool = True) -> str:
    try:
        chunks = [c async for c in provider.stream([{"role": "user", "content": "hi"}], GP)]
    finally:
        if close:
            await provider.aclose()
    return "".join(c.text for c in chunks)


GP = GenerationParams()
USER = {"X-User-Id": "alice"}


async def test_a_malformed_status_line_is_a_502_retried_before_the_first_token() -> None:
    async with serving(respond(b"HTTP/1.1 OK\r\n\r\n")) as server:
        with pytest.raises(UpstreamMalformed) as caught:
            await reply(provider_for(f"http://127.0.0.1:{server.port}/v1"))
    assert "malformed status line" in caught.value.detail
    assert caught.value.message == "The model provider sent an invalid response."
    assert len(server.requests) == 2  # retried once (max_retries=1)


async def turn_through_app(
    wire: bytes, redis_url: str, tmp_data_dir: Path
) -> tuple[httpx.Response, list[str], int]:
    """One turn of the app against an upstream that answers `wire`: the response, the
    roles then stored in the session, and how many requests the upstream got."""
    async with serving(respond(wire)) as server:
        base = f"http://127.0.0.1:{server.port}/v1"
        settings = make_test_settings(redis_url, base, tmp_data_dir)
        async with running_app(settings) as (_, client):
            sid = await new_session(client)
            r = await client.post(
                f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=USER
            )
            history = await client.get(f"/v1/sessions/{sid}/messages", headers=USER)
    return r, [m["role"] for m in history.json()["messages"]], len(server.requests)


async def test_a_malformed_upstream_response_is_a_502_for_the_client(
    redis_url: str, tmp_data_dir: Path
) -> None:
    """Through the app: a 502 `provider_error` with chatmem's sentence, not the bytes."""
    wire = b"HTTP/1.1 OK SECRET-HOST\r\n\r\n"
    r, _, requests = await turn_through_app(wire, redis_url, tmp_data_dir)
    assert r.status_code == 502, r.text
    assert r.json()["error"] == {
        "code": "provider_error",
        "message": "The model provider sent an invalid response.",
    }
    assert requests == 1  # max_retries=0 in the tests' settings


async def test_an_event_line_without_end_is_a_502_not_a_stall() -> None:
    """A stream line of 50 MB without a newline took 3.8 s of CPU (re-joined at every
    read); past a MiB it is a malformed response."""
    head = chunked(b"")[0]
    line = b"data: " + b"x" * (sse_decoder.MAX_EVENT_BYTES + 10)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line)
    async with serving(respond(head, body)) as server:
        with pytest.raises(UpstreamMalformed, match="event line over"):
            await reply(provider_for(f"http://127.0.0.1:{server.port}/v1", max_retries=0))


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"".join(chunked()),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["204", "chunked-no-event", "length-0"],
)
async def test_a_body_without_a_single_event_is_a_502_not_an_empty_reply(wire: bytes) -> None:
    """It was relayed as a reply with no text and stored as the model's answer."""
    async with serving(respond(wire)) as server:
        with pytest.raises(UpstreamMalformed, match="empty response"):
            await reply(provider_for(f"http://127.0.0.1:{server.port}/v1"))
    assert len(server.requests) == 2  # retried once (max_retries=1), nothing relayed


async def test_an_empty_upstream_response_is_not_stored_as_the_reply(
    redis_url: str, tmp_data_dir: Path
) -> None:
    wire = b"HTTP/1.1 204 No Content\r\n\r\n"
    r, roles, _ = await turn_through_app(wire, redis_url, tmp_data_dir)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "provider_error"
    # The greeting and the user message (durable before the model is asked, kept for
    # the client's retry), no empty reply.
    assert roles == ["assistant", "user"]


async def test_a_reply_past_max_tokens_ends_as_cut_off() -> None:
    """A server that ignores max_tokens sent 20 MB of deltas, all stored: the reply ends
    at MAX_CHARS_PER_TOKEN × max_tokens, `finish_reason` "length"."""
    delta = b'data: {"choices":[{"delta":{"content":"' + b"z" * 100 + b'"}}]}\n\n'
    wire = chunked(*([delta] * 20))
    async with serving(respond(*wire)) as server:
        provider = provider_for(f"http://127.0.0.1:{server.port}/v1")
        params = GenerationParams(max_tokens=20)  # 640 characters
        try:
            chunks = [c async for c in provider.stream([{"role": "user", "content": "x"}], params)]
        finally:
            await provider.aclose()
    text = "".join(c.text for c in chunks)
    assert len(text) == 600 and chunks[-1].finish_reason == "length"


async def test_read_and_connect_failures_keep_their_provider_errors() -> None:
    async with serving(respond()) as server:
        with pytest.raises(ProviderTimeout):
            await reply(provider_for(f"http://127.0.0.1:{server.port}/v1", read_timeout_s=0.1))
        port = server.port
    with pytest.raises(ProviderUnavailable, match="cannot connect"):
        await reply(provider_for(f"http://127.0.0.1:{port}/v1"))


def test_under_uvloop_as_chatmem_serve_runs_it(fake: FakeOpenAI) -> None:
    """Regression: uvloop's transports are not asyncio.Transport instances; the first
    version asserted they were, and every request failed under `chatmem serve`."""

    async def three_then_a_timeout() -> list[str]:
        provider = provider_for(fake.base_url)
        texts = [await reply(provider, close=False) for _ in range(3)]
        fake.script(Reply(headers_delay_s=2), Reply(headers_delay_s=2))
        slow = provider_for(fake.base_url, read_timeout_s=0.1)
        with pytest.raises(ProviderTimeout):
            await reply(slow)
        await provider.aclose()
        return texts

    assert uvloop.run(three_then_a_timeout()) == ["Hello from the fake model."] * 3
    assert fake.connections == 3  # one kept alive for three replies, two timed out


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_with_a_trusted_ca(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with serving(respond(*chunked(SSE)), server_context) as server:
        # Not trusted: the handshake fails, a connect error.
        async with client_for(server, scheme="https") as untrusting:
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(untrusting)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        base = f"https://127.0.0.1:{server.port}/v1"
        assert await reply(provider_for(base)) == "Hi there"
        async with client_for(server, scheme="https") as c:
            for _ in range(2):
                assert await post(c) == (200, SSE)
    assert server.connections == 2  # the provider's, then one kept alive for two


# -- proxies: httpx -----------------------------------------------------------------------


def test_proxied_reads_the_environment_as_httpx_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert not proxied("https://api.openai.com/v1")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert proxied("https://api.openai.com/v1")
    assert not proxied("http://api.openai.com/v1")
    monkeypatch.setenv("no_proxy", "openai.com")
    assert not proxied("https://api.openai.com/v1")
    monkeypatch.setenv("ALL_PROXY", "http://proxy:3128")
    assert proxied("http://vllm.internal:8000/v1")


async def test_behind_a_proxy_the_request_goes_through_it_with_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving(respond(*chunked(SSE))) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        provider = provider_for("http://model.invalid:8000/v1")
        assert isinstance(provider._upstream, HttpxUpstream)
        assert await reply(provider) == "Hi there"
    # An HTTP proxy gets the absolute URL: chatmem never connected to the model itself.
    assert proxy.requests[0].path == "http://model.invalid:8000/v1/chat/completions"
