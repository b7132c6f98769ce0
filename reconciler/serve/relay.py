"""The HTTP/1.1 front of `reconciler serve`: one listening socket, requests relayed as bytes.

Why a server of its own rather than an ASGI app under uvicorn: on the inference path the
gateway only moves bytes between a client and a model server, and the ASGI detour (events per
body chunk, aiohttp's client parsing and re-framing the answer, uvicorn encoding it again) cost
~430 µs of CPU per prediction, 3.5x a bare byte relay; at ~1.7 ms model latency that was a
quarter of the latency through the gateway. This front costs ~170 µs (the bare relay ~80 µs,
nearly all of it the kernel's): on the churn bench, +0.1 ms p50 and over 90 % of the direct
throughput at 1 client. How:

* `httptools` (llhttp) parses requests (`HttpRequestParser`) and answers
  (`HttpResponseParser`); no HTTP parsing is written by hand. The answer's parser only tells
  where its head and the message end (no per-header callbacks): the answer's bytes go to the
  client as they arrive, unchanged (chunked stays chunked, server-sent events flow as they
  come). The head is rewritten only where it has to be (hop-by-hop headers in it, HTTP/1.0,
  a close-delimited answer, a client that leaves); then llhttp parses it again on its own.
* Upstream connections are kept alive in a pool per address (LIFO: the warmest first). A
  request head is rebuilt once (hop-by-hop headers, and for the gateway the caller's token and
  resource group, out; Host for the upstream) and sent with a buffered body in one write. A
  typical prediction costs one read and one write on each side.
* Control flow is callbacks on asyncio protocols (uvloop when installed); a coroutine is
  started only off the fast path (connecting, refreshing the routing table): a task per
  request would cost as much as the rest of the relay. Python runs cold between requests, so
  every call on the path counts several times over: fields most requests never change are
  class attributes, and metrics are recorded in batches (see `Gateway.flush_metrics`).
* A request head that a client sends again, byte for byte, on its connection (SDKs and load
  generators do: same path, token, content type) is not parsed again: its Request is reused
  (`ClientConnection._repeat`), and handlers keep what they derive from the head in
  `Request.memo`. Every request is still checked, routed and relayed on its own.
* Whoever handles a request (a `Dispatch`: the gateway, or the AI API's relay) gets an
  `Exchange` and either refuses it (`Exchange.refuse`: an AI API error body) or forwards it
  (`Exchange.forward`), possibly later, from a task.

Also handled: keep-alive and pipelining (answered in order, one at a time), `Expect:
100-continue`, request bodies streamed with back-pressure above `BUFFER_LIMIT` (smaller ones are
buffered, so that a request can be sent again when a pooled connection turns out to have been
closed by the server while idle, or a replica refuses the connection), client disconnects (the
upstream connection is closed, never pooled), a close-delimited answer ends the client's
connection, an answer cut off ends it too, `--timeout` as the longest silence of a model
server, idle connection timeouts on both sides, head size and connection limits, graceful
shutdown (`HttpFront.shutdown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
import socket
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import httptools

from ..api.errors import error_bytes, request_id

log = logging.getLogger("reconciler.relay")

BUFFER_LIMIT = 1 << 20  # request bodies up to this size are read first, so they can be resent
MAX_HEAD_BYTES = 64 * 1024  # a request or answer head larger than this is refused
MAX_PIPELINED = 64  # requests parsed ahead of the one being answered, before reading pauses
KEEP_ALIVE_SECONDS = 5.0  # idle client connections are closed after this (uvicorn's default)
POOL_IDLE_SECONDS = 30.0  # idle upstream connections are closed after this (aiohttp's default)
POOL_MAX_IDLE = 256  # idle upstream connections kept per address
CONNECT_SECONDS = 5.0
MAX_CONNECTIONS = 10_000  # client connections; beyond, requests are answered 503
# Client connections from one address; beyond, a connection is answered 503 and closed at once,
# so that one source cannot hold every slot (a slow-head attack from many connections).
MAX_PER_ADDRESS = 256
# A request head must be whole this long after its first byte (else 408): a head sent one byte
# at a time would otherwise hold its connection for as long as the bytes keep coming.
HEAD_SECONDS = 10.0
# A request body may pause this long between reads (nginx's client_body_timeout).
BODY_IDLE_SECONDS = 60.0
WATCH_SECONDS = 1.0  # how often timeouts are checked (at most; less for short timeouts)

# Hop-by-hop headers belong to one connection, not to the message (RFC 9110 7.6.1); `expect` is
# answered here; `host` is set for the upstream where the caller's does not fit.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
# In answers, `transfer-encoding` and `trailer` stay: the body passes through as it was framed.
_RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"upgrade"}
)
# Where a message ends is told by these (and by the method and status): never dropped as
# hop-by-hop, whatever a Connection header names (a request that names them is refused).
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
_HEAD_END = re.compile(rb"\r?\n\r?\n")  # the blank line ending a head llhttp has accepted
# A header line of an answer that must not be passed on as it is: a hop-by-hop one, or a
# Transfer-Encoding other than one `chunked` (looked at closely in `_response_headers`).
_HOP_BY_HOP_LINE = re.compile(
    rb"\n(?:connection|keep-alive|proxy-connection|proxy-authenticate|upgrade)[ \t]*:"
    rb"|\ntransfer-encoding[ \t]*:"
    rb"(?![ \t]*chunked[ \t]*\r?\n(?!(?:.*\n)?transfer-encoding[ \t]*:))",
    re.I | re.S,
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})

Dispatch = Callable[["Exchange"], None]


class Relayed(Protocol):
    """Told about a forwarded exchange: a connection that could not be made, or one that broke
    before any byte of the answer came (it may forward again, elsewhere: else that is a 502),
    and the end (status, and whether the upstream did its part)."""

    def connect_failed(self, ex: Exchange, exc: OSError) -> None: ...

    def lost_unanswered(self, ex: Exchange, exc: Exception | None) -> None: ...

    def done(self, ex: Exchange, status: int, upstream_ok: bool) -> None: ...


class Request:
    """A parsed request head. `fields` maps lower-case names to their (last) value."""

    __slots__ = (
        "chunked",
        "expect_continue",
        "fields",
        "headers",
        "keep_alive",
        "length",
        "memo",
        "method",
        "path",
        "peer",
        "query",
        "target",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes, bytes]],
        fields: dict[bytes, bytes],
        version: bytes,
        keep_alive: bool,
        peer: str,
    ) -> None:
        self.method = method
        self.target = target  # as sent: origin-form path and query
        path, _, query = target.partition(b"?")
        self.path = path
        self.query = query
        self.headers = headers  # (lower-case name, name as sent, value)
        self.fields = fields
        self.version = version  # b"1.1" or b"1.0"
        self.keep_alive = keep_alive
        self.peer = peer
        # (A Transfer-Encoding other than `chunked` never gets this far: `framing_error`.)
        self.chunked = b"transfer-encoding" in fields
        cl = fields.get(b"content-length")
        self.length = int(cl) if cl is not None and not self.chunked else 0
        self.expect_continue = fields.get(b"expect", b"").lower() == b"100-continue"
        # A connection hands the same Request to every request whose head is byte for byte
        # this one (see `ClientConnection._repeat`): what a handler derives from the head
        # alone (the upstream head, say) may be kept here, for the next time.
        self.memo: dict[Any, Any] = {}

    @property
    def repeatable(self) -> bool:
        """Whether a byte-identical head may skip parsing next time: the plain case, a body
        of known, buffered size on a kept-alive HTTP/1.1 connection."""
        return (
            self.version == b"1.1"
            and self.keep_alive
            and not self.chunked
            and not self.expect_continue
            and self.length <= BUFFER_LIMIT
            and b"upgrade" not in self.fields
        )

    def decoded_path(self) -> str:
        """The path as ASGI's scope["path"] has it (percent-decoded), for error bodies."""
        return urllib.parse.unquote(self.path.decode("latin-1"))


def connection_options(req: Request) -> set[bytes]:
    """The names that the request's Connection headers (all of them) list, lower-case."""
    return {
        t.strip().lower()
        for lname, _, value in req.headers
        if lname == b"connection"
        for t in value.split(b",")
    }


def framing_error(req: Request, version: str, duplicated: bool) -> str:
    """Why where this request ends, or what it is, cannot be told for sure ("": it can): the
    relay refuses such a request (400) rather than forward bytes that the server behind it might
    frame otherwise, and reads nothing more on that connection. llhttp has refused already
    Content-Length twice, with Transfer-Encoding, or not a number, and obs-fold, bare CR or LF.
    `duplicated`: some header name comes more than once."""
    fields = req.fields
    if version != "1.1" and version != "1.0":
        return f"HTTP/{version} is not supported"
    if duplicated:
        counts: dict[bytes, int] = {}
        for lname, _, _ in req.headers:
            counts[lname] = counts.get(lname, 0) + 1
        twice = sorted(n for n in (b"transfer-encoding", b"host") if counts.get(n, 0) > 1)
        if twice:
            return f"more than one {twice[0].decode()} header"
    connection = fields.get(b"connection")
    if connection is not None and (duplicated or connection.lower() not in _PLAIN_CONNECTION):
        named = connection_options(req) & FRAMING
        if named:
            # RFC 9110 7.6.1 would drop them; the body would then be read as another request.
            return f"Connection names {sorted(named)[0].decode()}, which frames the request"
    te = fields.get(b"transfer-encoding")
    if te is not None:
        if version != "1.1":
            return "Transfer-Encoding in an HTTP/1.0 request"  # RFC 9112 6.1
        if te.strip().lower() != b"chunked":
            return f"Transfer-Encoding {te.decode('latin-1')!r}: only chunked is accepted"
    if version == "1.1" and b"host" not in fields:
        return "no Host header"  # RFC 9112 3.2
    if b"upgrade" in fields and (req.chunked or req.length):
        # llhttp ends an upgrade request at its head: its body would be read as the next one.
        return "a body with Upgrade"
    return ""


def request_head(
    req: Request,
    target: bytes,
    drop: frozenset[bytes],
    host: bytes | None = None,
    extra: bytes = b"",
) -> bytes:
    """The head to send upstream: `req`'s headers less `drop` and those its Connection headers
    name (never the framing ones), `host` as Host (else the caller's), `extra` (ready-made
    header lines) and the body's framing. An HTTP/1.0 caller's request goes out as HTTP/1.0, so
    that the answer is never chunked (a 1.0 client could not read it)."""
    version = b" HTTP/1.0\r\n" if req.version == b"1.0" else b" HTTP/1.1\r\n"
    parts = [req.method, b" ", target, version]
    if host is not None:
        parts += (b"Host: ", host, b"\r\n")
    if b"connection" in req.fields:
        drop = drop | (connection_options(req) - FRAMING)
    for lname, name, value in req.headers:
        if lname not in drop:
            parts += (name, b": ", value, b"\r\n")
    if req.chunked:  # re-chunked as it is read
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    return b"".join(parts)


def error_response(
    status: int,
    message: str,
    target: str = "",
    close: bool = False,
    head_only: bool = False,
    headers: bytes = b"",
) -> bytes:
    """An answer with the AI API's error body (`headers`: more header lines, each ending in
    CRLF)."""
    body = error_bytes(status, message, target, request_id())
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode()),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            headers,
            b"connection: close\r\n\r\n" if close else b"\r\n",
            b"" if head_only else body,
        )
    )


def connect_failure(exc: OSError, seconds: float) -> tuple[int, str]:
    """The status and message for a connection to a model server that could not be made."""
    if isinstance(exc, TimeoutError):
        return 504, f"model server did not accept a connection within {seconds:g}s"
    return 502, f"model server unreachable: {exc}"


def _plain_response(status: int, text: str) -> bytes:
    body = text.encode()
    phrase = http.HTTPStatus(status).phrase.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, phrase, len(body), body)
    )


def _response_headers(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] = _RESPONSE_DROP
) -> tuple[list[bytes], bool, bool] | None:
    """An answer's header lines without hop-by-hop headers (those its Connection headers name
    too, but never the framing ones), with a slot for the status line first; and whether it
    has a length, or is chunked. None when a client might frame it otherwise than llhttp did:
    Transfer-Encoding other than one `chunked` (llhttp refuses Content-Length twice, or with
    Transfer-Encoding)."""
    parts = [b""]
    length = False
    codings = 0
    chunked = False
    named: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection":
                named.append(value)
            continue
        if lname == b"content-length":
            length = True
        elif lname == b"transfer-encoding":
            codings += 1
            chunked = value.strip().lower() == b"chunked"
        parts += (name, b": ", value, b"\r\n")
    if codings > 1 or (codings and not chunked):
        return None
    if named and drop is _RESPONSE_DROP:
        extra = {t.strip().lower() for v in named for t in v.split(b",")}
        extra -= FRAMING | {b"close", b"keep-alive"}
        if extra:
            return _response_headers(headers, drop | extra)
    return parts, length, chunked


# --- upstream connections --------------------------------------------------------------------


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a model server (or the AI API), serving one exchange at a
    time. Its parser only finds where the answer's head and the answer end (no per-header
    callbacks: the head is looked at only when it has to be rewritten); the bytes go to the
    client as they are read."""

    # Bytes came after the end of the answer, unasked: they are not passed on, and the
    # connection is not used again (set only then: such a connection is never reset).
    overrun = False

    def __init__(self, pool: UpstreamPool, address: str) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.reusable = True
        self._reset()

    def _reset(self) -> None:
        """State of the answer to the next request."""
        self.buf = b""  # the head received so far (kept until it is complete)
        self.head_start = 0  # where the final head starts in buf (after 1xx interim answers)
        self.head_end = -1
        self.got_bytes = False
        self.status = 0
        self.complete = False
        self.broken = ""  # why the answer could not be parsed
        self.keep_alive = False  # framed by length or chunks, and the server keeps it open
        self.no_body = False  # an answer to HEAD: the head is the whole message

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        ex = self.exchange
        if ex is None:
            self.pool.discard(self)
        else:
            self.exchange = None
            ex.upstream_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # an idle connection has nothing to say: do not trust it any more
            self.close()
            return
        ex.wait_since = self.pool.loop.time()
        if self.head_end >= 0:  # the body, passed on as it came
            if not self.complete:
                data = self._feed(data)
                if self.broken or self.overrun:
                    # Bytes that llhttp could not frame, or that follow the answer, are not for
                    # the client: its connection ends with what came before them.
                    self._failed(ex)
                    return
            ex.response_body(data)
            self._ended(ex)
            return
        self.got_bytes = True
        self.buf = buf = self.buf + data if self.buf else data  # (the parser's callbacks read it)
        kept = self._feed(data)
        if kept is not data:
            self.buf = buf = buf[: len(buf) - len(data) + len(kept)]
        if self.head_end < 0:
            if self.broken:
                self._failed(ex)
            elif len(buf) - self.head_start > MAX_HEAD_BYTES:
                ex.upstream_failed(502, "model server sent an oversized answer head")
            return
        if self.broken or self.overrun:
            self._failed(ex)
            return
        self.buf = b""
        ex.response_head(self, buf)
        self._ended(ex)

    def _failed(self, ex: Exchange) -> None:
        why = "bytes after the end of its answer" if self.overrun else self.broken
        ex.upstream_failed(502, f"model server sent an invalid answer: {why}")

    def _ended(self, ex: Exchange) -> None:
        if self.exchange is not ex:  # the client went away meanwhile
            return
        if self.complete:
            ex.response_complete()
        elif self.broken:  # the client has what came; it cannot be told more than that it ends
            ex.upstream_failed(502, f"model server sent an invalid answer: {self.broken}")

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.pause_reading("upstream")

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.resume_reading("upstream")

    MAX_TAIL = 64  # CR/LF bytes at the end of a read fed one at a time, at most

    def _feed(self, data: bytes) -> bytes:
        """Parse `data`; what of it belongs to the answer (`data` itself, but for empty lines
        after its end). llhttp skips, silently, empty lines (CR, LF) after a message: passed
        on, they would come before the client's next answer, which a strict client then
        refuses. So the CR/LF bytes that end a read are fed one at a time, to tell where the
        answer ends (other bytes after it: see `overrun`)."""
        last = data[-1] if data else 0
        if last != 10 and last != 13:  # (the usual read: nothing more to it)
            self._parse(data)
            return data
        n = len(data)
        run = 1
        while run <= self.MAX_TAIL and run < n and data[n - run - 1] in (10, 13):
            run += 1
        if run > self.MAX_TAIL:  # where in such a run the answer ends, llhttp does not say
            self._parse(data)
            if self.complete:
                self.overrun = True
            return data
        view = memoryview(data)
        at = n - run
        if at:
            self._parse(view[:at])
        while at < n and not self.complete and not self.broken:
            self._parse(view[at : at + 1])
            at += 1
        if self.complete and at < n:  # empty lines after the answer: not passed on
            self.reusable = False
            return data[:at]
        return data

    def _parse(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # Raised on purpose: after the head of an answer to HEAD (the parser is replaced),
            # or at another answer after the end of this one (never reused then).
            if not self.no_body:
                self.reusable = False
                if not self.complete:
                    self.broken = str(exc.__context__ or exc)
        except httptools.HttpParserError as exc:
            self.reusable = False
            self.broken = str(exc) or type(exc).__name__
        except httptools.HttpParserUpgrade:  # (not an HttpParserError)
            self.reusable = False
            self.broken = "a protocol switch, which no request asked for"

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # (no request asked for it: another answer would go to the next one)
            self.overrun = True
            raise ValueError("bytes after the end of the answer")

    def on_headers_complete(self) -> None:
        if self.complete:
            raise ValueError("another answer after the end of the answer")
        status = self.parser.get_status_code()
        if status == 101:  # the relay never asks for a protocol switch (Upgrade is not passed on)
            raise ValueError("101 Switching Protocols, which no request asked for")
        end = _head_end(self.buf, self.head_start)
        if 100 <= status < 200 and status != 101:
            # An interim answer (103 Early Hints, a stray 100 Continue): not passed on; the
            # final answer's head starts after it.
            self.head_start = end
            return
        self.status = status
        self.head_end = end
        # Asked now: llhttp forgets the answer's Connection header once the message ends. False
        # also when the answer is close-delimited (it ends when the server closes).
        self.keep_alive = self.parser.should_keep_alive()
        exchange = self.exchange
        if exchange is not None and exchange.req.method == b"HEAD":
            # llhttp cannot be told that the answer is to HEAD: it would wait for
            # Content-Length bytes. The head is the message; a fresh parser takes the next.
            self.no_body = self.complete = True
            raise ValueError("answer to HEAD")

    def on_message_complete(self) -> None:
        if self.head_end >= 0:
            self.complete = True

    # used by Exchange

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def release(self) -> None:
        """The exchange is over: back to the pool, or closed."""
        self.exchange = None
        transport = self.transport
        if (
            self.reusable
            and self.complete
            and self.keep_alive
            and transport is not None
            and not transport.is_closing()
            and not transport.get_write_buffer_size()  # all of the request has left
        ):
            if self.no_body:
                self.parser = httptools.HttpResponseParser(self)
            self._reset()
            transport.resume_reading()  # paused if the client was slow to take the answer
            self.pool.put(self)
        else:
            self.close()


class _HeadFields:
    """Collects an answer head's status reason and headers: for the rare head that must be
    rewritten, parsed again (by llhttp) on its own."""

    def __init__(self, head: bytes) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        parser = httptools.HttpResponseParser(self)
        with contextlib.suppress(httptools.HttpParserError):  # (a HEAD answer "lacks" its body)
            parser.feed_data(head)

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        raise ValueError("stop: the body is not ours to parse")


def _head_end(buf: bytes, start: int) -> int:
    """Where the head that starts at `start` ends (after its blank line), in a buffer that
    llhttp has just found a complete head in."""
    end = buf.find(b"\r\n\r\n", start)
    if end >= 0 and buf.find(b"\n\n", start, end) < 0:
        return end + 4
    match = _HEAD_END.search(buf, start)  # bare LF line ends (llhttp is lenient there)
    return match.end() if match else len(buf)


class UpstreamPool:
    """Idle keep-alive connections per address ("host:port", or "unix:/path")."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: dict[str, list[Upstream]] = {}
        self.closed = False

    def put(self, up: Upstream) -> None:
        idle = self.idle.setdefault(up.address, [])
        if self.closed or len(idle) >= POOL_MAX_IDLE:
            up.close()
            return
        up.idle_since = self.loop.time()
        idle.append(up)

    def discard(self, up: Upstream) -> None:
        idle = self.idle.get(up.address)
        if idle and up in idle:
            idle.remove(up)

    async def connect(self, address: str, timeout: float = CONNECT_SECONDS) -> Upstream:
        if address.startswith("unix:"):
            _, up = await asyncio.wait_for(
                self.loop.create_unix_connection(lambda: Upstream(self, address), address[5:]),
                timeout,
            )
            return up
        host, _, port = address.rpartition(":")
        _, up = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: Upstream(self, address), host.strip("[]"), int(port)
            ),
            timeout,
        )
        return up

    def sweep(self, now: float) -> None:
        for address, idle in list(self.idle.items()):
            stale = [up for up in idle if now - up.idle_since > POOL_IDLE_SECONDS]
            for up in stale:
                idle.remove(up)
                up.close()
            if not idle:
                del self.idle[address]

    def close(self) -> None:
        self.closed = True
        for idle in self.idle.values():
            for up in idle:
                up.close()
        self.idle.clear()


# --- one request and its answer --------------------------------------------------------------


class Exchange:
    """One request from a client and its answer: refused here, or relayed to an upstream.

    Fields that most requests never change are class attributes: setting fewer per request is
    measurably cheaper on this path."""

    finished = False  # answered (or abandoned): nothing more is sent to the client
    body_size = 0
    continue_sent = False
    upstream: Upstream | None = None
    address = ""
    head = b""  # the request head for the upstream
    head_sent = False
    reused = False  # the upstream connection came from the pool
    retried = False
    responded = False  # the answer's head has gone to the client
    close_delimited = False
    status = 0
    timeout: float | None = None
    wait_since = 0.0  # when the upstream last owed us something (0: it owes nothing)
    handler: Relayed | None = None
    task: asyncio.Task[None] | None = None
    tag = ""  # the handler's: the gateway's deployment id
    attempt = 1  # the handler's: connection attempts so far
    avoid: frozenset[str] = frozenset()  # the handler's: addresses that failed this request
    failed_over = False  # the handler's: sent to another replica after one broke unanswered
    connect_seconds = CONNECT_SECONDS  # the handler's: how long one connection attempt may take

    def __init__(self, conn: ClientConnection, req: Request) -> None:
        self.conn = conn
        self.req = req
        self.started = time.perf_counter()  # for metrics: uvloop's clock has 1 ms steps
        # Bodies of known, small size are read whole before they are sent, so that they can be
        # sent again; others are streamed (their chunks wait here until a connection is made).
        self.buffered = not req.chunked and req.length <= BUFFER_LIMIT
        self.body: list[bytes] = []
        self.body_done = not req.chunked and not req.length
        self.close_after = not req.keep_alive

    # -- for handlers -----------------------------------------------------------------------

    @property
    def replayable(self) -> bool:
        """Whether the request can still be sent (again) in full: nothing of a streamed body
        has left; a buffered body is kept until the answer starts."""
        return not self.responded and (self.buffered or not self.head_sent)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a step of this exchange off the fast path (cancelled if the client leaves)."""
        self.task = self.conn.loop.create_task(coro)
        self.task.add_done_callback(self._task_done)

    def refuse(self, status: int, message: str, target: str = "", headers: bytes = b"") -> None:
        """Answer with an AI API error body (nothing was relayed, or nothing reached the client
        yet); `headers` as `error_response`'s."""
        if self.finished:
            return
        if self.responded:  # the answer has begun: all that can be said is that it ends early
            self._finish(close=True)
            return
        # A client that waits for 100 Continue may or may not send its body now: the
        # connection cannot be trusted to be in step afterwards.
        close = self.close_after or (self.req.expect_continue and not self.body_done)
        close = close or self.conn.front.shutting_down
        self.responded = True
        self.status = status
        self.conn.write(
            error_response(status, message, target, close, self.req.method == b"HEAD", headers)
        )
        self._finish(close)

    def forward(
        self, address: str, head: bytes, timeout: float | None, handler: Relayed | None = None
    ) -> None:
        """Relay the request to `address` with `head` (see `request_head`); `handler` hears of
        a connection that cannot be made (else that is a 502) and of the end."""
        if self.finished:
            return
        self.address = address
        self.head = head
        self.timeout = timeout
        self.handler = handler
        if self.req.expect_continue and not self.body_done and not self.continue_sent:
            self.continue_sent = True
            self.conn.write(_CONTINUE)
        idle = self.conn.front.pool.idle.get(address)
        while idle:  # the warmest pooled connection that is still open
            up = idle.pop()
            if not up.transport.is_closing():  # type: ignore[union-attr]
                self.upstream = up
                self.reused = True
                up.exchange = self
                if self.conn.write_paused:
                    up.transport.pause_reading()  # type: ignore[union-attr]
                self._send()
                return
        self.spawn(self._connect())

    # -- sending ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            up = await self.conn.front.pool.connect(self.address, self.connect_seconds)
        except OSError as exc:  # (TimeoutError is one)
            if self.finished:
                return
            if self.handler is not None:
                self.handler.connect_failed(self, exc)
            else:
                self.upstream_failed(*connect_failure(exc, self.connect_seconds))
            return
        if self.finished:
            up.release()
            return
        self._attach(up, reused=False)

    def _attach(self, up: Upstream, reused: bool) -> None:
        self.upstream = up
        self.reused = reused
        up.exchange = self
        if self.conn.write_paused:
            assert up.transport is not None
            up.transport.pause_reading()
        self._send()

    def _send(self) -> None:
        """Write what can be written: the head with a buffered body once it is complete, or the
        head and the streamed chunks so far."""
        up = self.upstream
        if up is None or self.head_sent:
            return
        if self.buffered:
            if not self.body_done:
                return
            up.send(self.head + b"".join(self.body) if self.body else self.head)
            self.head_sent = True
            self.wait_since = self.conn.loop.time()
            return
        parts = [self.head]
        if self.req.chunked:
            parts += [b"%x\r\n%s\r\n" % (len(c), c) for c in self.body]
            if self.body_done:
                parts.append(b"0\r\n\r\n")
        else:
            parts += self.body
        self.body = []
        self.body_size = 0
        if self.conn.paused_by:
            self.conn.resume_reading("backlog")
        up.send(b"".join(parts))
        self.head_sent = True
        if self.body_done:
            self.wait_since = self.conn.loop.time()

    def body_received(self, chunk: bytes) -> None:
        if self.finished:
            return  # answered already: the rest of the body is read and dropped
        if self.head_sent and not self.buffered:
            assert self.upstream is not None
            self.upstream.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.req.chunked else chunk)
            return
        self.body.append(chunk)
        self.body_size += len(chunk)
        if not self.buffered and self.body_size > BUFFER_LIMIT:
            self.conn.pause_reading("backlog")  # until a connection takes the chunks

    def body_complete(self) -> None:
        if self.body_done:
            return
        self.body_done = True
        if self.finished:
            return
        if self.head_sent and not self.buffered:
            assert self.upstream is not None
            if self.req.chunked:
                self.upstream.send(b"0\r\n\r\n")
            self.wait_since = self.conn.loop.time()
        else:
            self._send()

    # -- the answer -------------------------------------------------------------------------

    def response_head(self, up: Upstream, buf: bytes) -> None:
        """The answer's head is complete: the client gets it with the body bytes that came
        with it. Usually exactly as read: an HTTP/1.1 answer framed by length or chunks,
        without hop-by-hop headers, to a client that stays. Otherwise the head is rewritten:
        hop-by-hop headers out, this connection's own handling in."""
        if self.finished:
            return
        self.status = status = up.status
        start, end = up.head_start, up.head_end
        if start:
            buf = buf[start:]
            end -= start
        req = self.req
        if self.conn.front.shutting_down:
            self.close_after = True
        if (
            up.keep_alive
            and buf.startswith(b"HTTP/1.1 ")
            and _HOP_BY_HOP_LINE.search(buf, 0, end) is None
            and buf.endswith(b"\r\n\r\n", 0, end)
        ):
            # Framed by length or chunks: this connection's handling is at most one line more.
            self.responded = True
            if self.buffered:
                self.body = []  # no sending again from here on
            if self.close_after:
                extra = b"connection: close\r\n\r\n"
            elif req.version != b"1.1":
                extra = b"connection: keep-alive\r\n\r\n"
            else:
                self.conn.write(buf[:end] if up.no_body else buf)
                return
            rest = b"" if up.no_body else buf[end:]
            self.conn.write(b"".join((buf[: end - 2], extra, rest)))
            return
        fields = _HeadFields(buf[:end])
        rewritten = _response_headers(fields.headers)
        if rewritten is None:
            self.upstream_failed(502, "model server sent an answer of ambiguous length")
            return
        self.responded = True
        if self.buffered:
            self.body = []
        parts, length, chunked = rewritten
        parts[0] = b"HTTP/1.1 %d %s\r\n" % (status, fields.reason)
        no_body = up.no_body or status in _NO_BODY_STATUS
        # Without a length and unchunked, the answer ends when the model server closes the
        # connection: the client's connection must end with it.
        self.close_delimited = not no_body and not length and not chunked
        if self.close_delimited:
            self.close_after = True
        if self.close_after:
            parts.append(b"connection: close\r\n\r\n")
        elif req.version == b"1.0":
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        if not up.no_body and end < len(buf):
            parts.append(buf[end:])
        self.conn.write(b"".join(parts))

    def response_body(self, data: bytes) -> None:
        if not self.finished:
            self.conn.write(data)

    def response_complete(self) -> None:
        if self.finished:
            return
        self.wait_since = 0.0
        up = self.upstream
        if up is not None:
            # A request whose body the upstream did not wait for leaves the connection out
            # of step: it is not reused.
            if not self.body_done or (not self.buffered and self.body):
                up.reusable = False
            self.upstream = None
            up.release()
        handler = self.handler
        if handler is not None:
            self.handler = None
            handler.done(self, self.status, True)
        self._finish(self.close_after)

    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        """The upstream connection closed with this exchange on it."""
        self.upstream = None
        if self.finished:
            return
        if self.responded:
            if self.close_delimited:  # that is how this answer ends
                self._done(self.status, True)
                self._finish(close=True)
            else:
                log.warning("%s: answer cut off: %s", self.address, exc or "connection closed")
                self._done(self.status, False)
                self._finish(close=True)
            return
        if not up.got_bytes and self.reused and not self.retried and self.replayable:
            # A pooled connection the server had closed while idle (the close crossed our
            # request): the request never got there; send it again on a fresh connection.
            self.retried = True
            self.head_sent = False
            self.wait_since = 0.0
            self.spawn(self._connect())
            return
        if not up.got_bytes and self.handler is not None and self.replayable:
            self.head_sent = False
            self.wait_since = 0.0
            self.handler.lost_unanswered(self, exc)
            return
        why = f": {exc}" if exc else ""
        self.upstream_failed(502, f"model server closed the connection{why}")

    def reject(self, status: int, response: bytes) -> None:
        """The request cannot be read to its end (its body broke off, or stopped coming): its
        upstream connection, if any, is closed (it has part of the request: never pooled);
        the client gets `response` unless its answer has begun; the connection ends."""
        if self.finished:
            return
        if self.task is not None:
            self.task.cancel()
        self._drop_upstream()
        if not self.responded:
            self.responded = True
            self.status = status
            self.conn.write(response)
        self._done(self.status, True)
        self._finish(close=True)

    def _drop_upstream(self) -> None:
        """Closes this exchange's upstream connection, if any: it may hold part of a message,
        so it is never pooled again."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.exchange = None
            up.close()

    def upstream_failed(self, status: int, message: str, headers: bytes = b"") -> None:
        """The model server failed (502) or timed out (504); `headers` as `refuse`'s."""
        if self.finished:
            return
        self._drop_upstream()
        if self.responded:
            log.warning("%s: answer cut off: %s", self.address, message)
            self._done(self.status, False)
            self._finish(close=True)
            return
        self._done(status, False)
        self.refuse(status, message, headers=headers)

    # -- ending -----------------------------------------------------------------------------

    def check_timeout(self, now: float) -> None:
        if self.timeout is None or not self.wait_since:
            return
        if now - self.wait_since > self.timeout:
            self.upstream_failed(504, f"model server did not answer within {self.timeout:g}s")

    def abort(self) -> None:
        """The client went away: drop everything, the upstream connection included."""
        if self.finished:
            return
        self.finished = True
        if self.task is not None:
            self.task.cancel()
        self._drop_upstream()
        if self.handler is not None:
            # 499 as nginx logs it: the client closed the connection before the answer ended
            self._done(self.status if self.responded else 499, True)

    def _done(self, status: int, upstream_ok: bool) -> None:
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.done(self, status, upstream_ok)

    def _finish(self, close: bool) -> None:
        self.finished = True
        self.body = []
        conn = self.conn
        if conn.paused_by:
            conn.resume_reading("upstream")
            conn.resume_reading("backlog")
        conn.exchange_finished(self, close)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.task is task:
            self.task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("relaying %s failed", self.req.target, exc_info=task.exception())
            self.upstream_failed(502, "the gateway failed; see its log")


# --- client connections ----------------------------------------------------------------------


class _Discard(dict):  # type: ignore[type-arg]
    """Where a chunked request's trailer fields go once its head is parsed: they are not
    relayed (the body is chunked anew, without them), and must not join the next request's
    head (llhttp reports them as headers)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass


_DISCARD: Any = _Discard()


class ClientConnection(asyncio.Protocol):
    """One client connection: requests parsed in order, answered in order, one at a time."""

    # The answer that ends the connection once the requests before it are answered, when where
    # a request ends cannot be told (see `_refuse_rest`); nothing more is read then.
    _failed: bytes | None = None

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self.loop = front.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.active: Exchange | None = None  # the one being answered
        self.waiting: deque[Exchange] = deque()  # pipelined after it
        self.incoming: Exchange | None = None  # the one whose body is being read
        self.closed = False
        self.write_paused = False
        self.over_limit = False
        self.peer = ""
        self.last_activity = self.loop.time()  # the last read, or the last answer's end
        # Since when the connection has had nothing to do (bytes that begin no request, such as
        # empty lines, do not count), and when the head being read began.
        self.idle_since = self._head_since = self.last_activity
        self.paused_by: set[str] = set()  # why reading is paused (several reasons may hold)
        self._starting = False
        self._in_head = False
        self._head_bytes = self._raw_head = 0  # bytes of the head being read
        self._url = b""
        self._headers: list[tuple[bytes, bytes, bytes]] = []
        self._fields: dict[bytes, bytes] = {}
        # Heads parsed before on this connection, for `_repeat`; and the parser's count of
        # requests begun and its last Request, to tell a read that held exactly one request.
        self._seen: dict[bytes, Request] = {}
        self._begun = 0
        self._last: Request | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        front = self.front
        count = front.per_address.get(self.peer, 0)
        if count >= front.max_per_address:
            # Refused at once, before anything is read: one source may not hold every slot.
            self.closed = True
            self.transport.write(_plain_response(503, "Too many connections from this address\n"))
            self.transport.close()
            return
        front.per_address[self.peer] = count + 1
        front.conns.add(self)
        self.over_limit = len(front.conns) > front.max_connections

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        front = self.front
        if self in front.conns:  # (not a connection refused in connection_made)
            front.conns.discard(self)
            count = front.per_address[self.peer] - 1
            if count:
                front.per_address[self.peer] = count
            else:
                del front.per_address[self.peer]
        self._abort_all()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = self.loop.time()
        # Between requests: nothing answered, nothing half-read.
        between = (
            self.active is None and self.incoming is None and not self._in_head and not self.waiting
        )
        if between and self._seen and self._repeat(data):
            return
        begun = self._begun
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (websockets, h2c) are not relayed: the request is answered as a plain
            # one (Upgrade is not passed on) and the connection ends with it.
            for ex in (self.active, *self.waiting, self.incoming):
                if ex is not None:
                    ex.close_after = True
            if self.incoming is not None:
                self.incoming.body_complete()
            self.pause_reading("upgrade")
            return
        except httptools.HttpParserError as exc:
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_rest(431, "Request header fields too large")
            else:
                why = exc.__context__ if isinstance(exc.__context__, ValueError) else exc
                self._refuse_rest(400, f"Invalid HTTP request received: {why}")
            return
        if self._in_head:  # a head that keeps coming (each header is counted once complete)
            self._raw_head += len(data)
            if self._raw_head > 2 * MAX_HEAD_BYTES:
                self._refuse_rest(431, "Request header fields too large")
        elif between and self._begun == begun + 1 and self.incoming is None:
            self._remember(data)

    # Repeated requests. Clients send the same request head again and again on a connection
    # (the same prediction endpoint, token and content type; only bodies differ, and often not
    # their length). Parsing it anew is most of the relay's work per request, and at one client
    # the relay runs with cold caches (the model server's work in between evicts them), where
    # every callback and object costs many times its warm price. So a head that llhttp parsed
    # once is kept, and a read that holds that very head, byte for byte, and a body of its
    # Content-Length, exactly, reuses the Request: llhttp, in the same state (between
    # requests), would parse those bytes the same way. Anything else goes to llhttp.

    MAX_SEEN = 2  # heads kept per connection
    MAX_SEEN_BYTES = 4096  # only heads this small are kept

    def _repeat(self, data: bytes) -> bool:
        end = data.find(b"\r\n\r\n") + 4
        req = self._seen.get(data[:end]) if end >= 4 else None
        if req is None or len(data) - end != req.length:
            return False
        ex = Exchange(self, req)
        if req.length:
            ex.body.append(data[end:])
            ex.body_done = True
        self._start(ex)
        return True

    def _remember(self, data: bytes) -> None:
        """`data` held exactly one whole request, from its first byte: its head is `data` but
        its body, if that ends at the first blank line (the head llhttp read)."""
        req = self._last
        if req is None or not req.repeatable:
            return
        size = len(data) - req.length
        head = data[:size]
        if not 4 <= size <= self.MAX_SEEN_BYTES or head.find(b"\r\n\r\n") != size - 4:
            return
        if len(self._seen) >= self.MAX_SEEN:
            self._seen.clear()
        self._seen[head] = req

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.active.upstream if self.active is not None else None
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.active.upstream if self.active is not None else None
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._begun += 1
        self._in_head = True
        self._head_bytes = self._raw_head = 0
        self._head_since = self.last_activity  # (the time of this read)
        self._headers = []
        self._fields = {}

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        self._headers.append((lname, name, value))
        self._fields[lname] = value
        self._head_bytes += len(name) + len(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes + len(self._url) > MAX_HEAD_BYTES:
            self._head_bytes = MAX_HEAD_BYTES + 1
            raise ValueError("request head too large")  # answered 431 in data_received
        parser = self.parser
        version = parser.get_http_version()
        headers, fields = self._headers, self._fields
        self._headers = self._fields = _DISCARD  # trailers, if any (see _Discard)
        req = Request(
            parser.get_method(),
            self._url,
            headers,
            fields,
            b"1.1" if version == "1.1" else b"1.0",
            parser.should_keep_alive(),
            self.peer,
        )
        self._url = b""
        why = framing_error(req, version, len(headers) != len(fields))
        if why:
            raise ValueError(why)  # answered 400 in data_received, in its turn
        self._last = req
        ex = Exchange(self, req)
        self.incoming = ex
        if self.closed:
            return
        if self.active is None and not self.waiting:
            self._start(ex)
        else:
            self.waiting.append(ex)
            if len(self.waiting) > MAX_PIPELINED:
                self.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.incoming is not None:
            self.incoming.body_received(body)

    def on_message_complete(self) -> None:
        ex, self.incoming = self.incoming, None
        if ex is not None:
            ex.body_complete()

    # exchanges

    def _start(self, ex: Exchange) -> None:
        """Hand the exchange to its handler (it becomes the active one). One that ends at once
        (refused) does not start the next from within: this loop does, so that a long pipeline
        of refusals cannot recurse deeply."""
        self._starting = True
        try:
            while True:
                self.active = ex
                req = ex.req
                try:
                    if (
                        req.target.startswith(b"/")
                        and req.method != b"CONNECT"
                        and not self.over_limit
                    ):
                        self.front.dispatch(ex)
                    elif req.method == b"CONNECT" or not req.target.startswith(
                        (b"/", b"http://", b"https://")
                    ):  # (tunnels are not relayed, whatever the target's form)
                        ex.close_after = True
                        ex.refuse(400, f"request target {req.target!r} is not supported here")
                    elif self.over_limit:
                        ex.close_after = True
                        ex.refuse(503, "the server is at its connection limit: try later")
                    else:  # absolute form (RFC 9112 3.2.2)
                        url = httptools.parse_url(req.target)
                        target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
                        req.target = target
                        req.path, _, req.query = target.partition(b"?")
                        self.front.dispatch(ex)
                except Exception:
                    log.exception("handling %s failed", req.target)
                    ex.upstream_failed(502, "the gateway failed; see its log")
                if self.active is not None or not self.waiting or self.closed:
                    return
                ex = self.waiting.popleft()
        finally:
            self._starting = False

    def exchange_finished(self, ex: Exchange, close: bool) -> None:
        if self.active is ex:
            self.active = None
        if self.closed:
            return
        if close:
            self.close()
            return
        self.idle_since = self.last_activity = self.loop.time()
        if self.paused_by:
            self.resume_reading("pipeline")
        if self.waiting:
            if not self._starting:
                self._start(self.waiting.popleft())
        elif self._failed is not None:  # the requests before the unreadable one are answered
            self.write(self._failed)
            self.close()
        elif self.front.shutting_down and self.incoming is None and not self._in_head:
            self.close()

    def _refuse_rest(self, status: int, message: str) -> None:
        """Where the message being read ends cannot be told (it is malformed, or framed in a
        way that the server behind might read otherwise): nothing more is read or relayed on
        this connection. The requests before it are answered; then `status`, in its place, and
        the connection ends. If its request was being relayed already (its body broke off),
        that upstream connection is closed, never pooled."""
        if self.closed or self._failed is not None:
            return
        response = _plain_response(status, message + "\n")
        self._failed = response
        self.pause_reading("refused")
        ex, self.incoming = self.incoming, None
        if ex is not None:
            if ex.finished:  # answered already (refused): only the connection's end is left
                self._failed = b""
            elif ex is self.active:
                ex.reject(status, response)
                return
            else:  # pipelined behind the active one: nothing of it went anywhere
                if ex in self.waiting:
                    self.waiting.remove(ex)
                ex.abort()
        if self.active is None:
            self.write(self._failed)
            self.close()

    # transport helpers

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def pause_reading(self, why: str) -> None:
        if not self.paused_by and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused_by.add(why)

    def resume_reading(self, why: str) -> None:
        if why not in self.paused_by:
            return
        self.paused_by.discard(why)
        if not self.paused_by and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self.last_activity = self.loop.time()  # (a body's pause counts from here)

    def _abort_all(self) -> None:
        pending = [self.active, *self.waiting, self.incoming]
        self.active = self.incoming = None
        self.waiting.clear()
        for ex in pending:
            if ex is not None:
                ex.abort()

    def close(self) -> None:
        """Close once what was written is sent; exchanges still waiting are dropped."""
        if self.closed:
            return
        self.closed = True
        self._abort_all()
        if self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self.active is None and self.incoming is None and not self._in_head

    def check(self, now: float) -> None:
        """Timeouts: the active exchange's upstream and its body's pauses, a head that takes
        too long, and idle keep-alive connections."""
        ex = self.active
        if ex is not None:
            # (not while the relay itself holds the body back: reading paused)
            idle = now - self.last_activity > BODY_IDLE_SECONDS and not self.paused_by
            if idle and not ex.body_done:
                ex.reject(408, _plain_response(408, "Request body not received in time\n"))
            else:
                ex.check_timeout(now)
        elif self._in_head:
            if now - self._head_since > self.front.head_seconds:
                self._refuse_rest(408, "Request head not received in time")
        elif self.incoming is not None:  # a refused request's body, still read (and dropped)
            if now - self.last_activity > KEEP_ALIVE_SECONDS:
                self.close()
        elif now - self.idle_since > KEEP_ALIVE_SECONDS:
            self.close()

    def shutdown(self) -> None:
        """Graceful shutdown: idle connections close now, others after their answer."""
        if self.idle:
            self.close()
        else:
            for ex in (self.active, *self.waiting, self.incoming):
                if ex is not None:
                    ex.close_after = True


# --- the server ------------------------------------------------------------------------------


class HttpFront:
    """The listening socket and its connections. `dispatch` gets each request's Exchange once
    it is its turn to be answered."""

    def __init__(
        self,
        dispatch: Dispatch,
        min_timeout: float | None = None,
        max_connections: int = MAX_CONNECTIONS,
        tick: Callable[[], None] | None = None,
        head_seconds: float = HEAD_SECONDS,
        max_per_address: int = MAX_PER_ADDRESS,
    ) -> None:
        self.dispatch = dispatch
        self.tick = tick  # run with the timeout checks (the gateway's metrics)
        self.loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(self.loop)
        self.conns: set[ClientConnection] = set()
        self.max_connections = max_connections
        self.head_seconds = head_seconds
        self.max_per_address = max_per_address
        self.per_address: dict[str, int] = {}  # client connections open, per peer address
        self.shutting_down = False
        self._server: asyncio.AbstractServer | None = None
        self._watch_seconds = min(
            WATCH_SECONDS, (min_timeout or WATCH_SECONDS) / 4, head_seconds / 4
        )
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), sock=sock, backlog=2048
        )
        self._watcher = self.loop.create_task(self._watch())

    async def _watch(self) -> None:
        last_sweep = self.loop.time()
        while True:
            await asyncio.sleep(self._watch_seconds)
            now = self.loop.time()
            for conn in list(self.conns):
                try:
                    conn.check(now)
                except Exception:  # one broken connection must not end the watch
                    log.exception("checking a connection failed")
                    conn.close()
            if now - last_sweep >= 5.0:
                last_sweep = now
                self.pool.sweep(now)
            if self.tick is not None:
                try:
                    self.tick()
                except Exception:
                    log.exception("the front's tick failed")

    async def shutdown(self, grace: float, force: asyncio.Event | None = None) -> None:
        """Stop accepting; let requests in flight finish (at most `grace` seconds, or until
        `force` is set); then close everything."""
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.shutdown()
        deadline = self.loop.time() + grace
        if self.conns:
            log.info("waiting for %d connection(s) to finish their requests", len(self.conns))
        while self.conns and self.loop.time() < deadline and not (force and force.is_set()):
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
            conn.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.pool.close()
        if self.tick is not None:
            self.tick()
