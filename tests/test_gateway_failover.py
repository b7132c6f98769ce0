"""Fail-over of the inference gateway, over real sockets: which replica failures a request is
sent again for, where to, and how often.

A real gateway (`Gateway` over the relay's `HttpFront`, on uvloop as `reconciler serve` runs
it) in a thread of its own, with the stub routing table of tests/test_gateway.py (no engine,
no state snapshot: the test lists the replicas' addresses). The replicas are small real HTTP
servers on 127.0.0.1, each in threads with blocking sockets, that misbehave as a test says:
one answers with its name, one reads the request and resets the connection (SO_LINGER 0),
one reads it and closes the connection cleanly, one breaks its answer off; and a port where
nothing listens (refused). The clients are http.client and raw sockets.

What is checked (`Gateway.connect_failed`, `Gateway.lost_unanswered`, `Exchange.upstream_lost`):
a replica that refuses the connection is not tried again for the same request while another
is listed; a request whose replica connection breaks before any byte of the answer came goes
once more to another replica, only once, and only when its body was buffered; an answer that
broke off after it began is never sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import BinaryIO, Literal

import pytest
import uvloop

from reconciler.serve.gateway import Gateway
from reconciler.serve.relay import BUFFER_LIMIT, HttpFront
from tests.test_gateway import DEP, StubTable, route

PATH = f"/v2/inference/deployments/{DEP}"
HANG_GUARD = 10.0  # seconds: a bound on waits that take milliseconds

# How a replica treats each request it reads:
#   answer: 200 with its name (keep-alive);
#   reset: reads the request, then resets the connection without a byte of answer;
#   close: reads the request, then closes the connection cleanly without a byte of answer;
#   reset-on-head: reads the request head only, then resets the connection;
#   cut-body: sends the head of a 200 and 10 of its 100 body bytes, then closes;
#   cut-head: sends half a head, then closes;
#   serve-once: answers its very first request (keep-alive), resets every later one (its host
#     went away after it served);
#   drop-next: answers the first request on each connection; closes the connection, without
#     answering, when another request comes on it (a keep-alive connection the server closes
#     as the gateway reuses it).
Behaviour = Literal[
    "answer", "reset", "close", "reset-on-head", "cut-body", "cut-head", "serve-once", "drop-next"
]


def _read_head(f: BinaryIO) -> tuple[str, dict[str, str]] | None:
    """The target and headers (lower-case names) of the next request; None at its end."""
    line = f.readline()
    if not line:
        return None
    _, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return target, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


def _read_body(f: BinaryIO, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return f.read(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return b""
    body = b""
    while size := int(f.readline().split(b";")[0].strip() or b"0", 16):
        body += f.read(size)
        f.readline()
    while f.readline() not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return body


def _reset(conn: socket.socket) -> None:
    """Close `conn` with a reset (RST), not a FIN."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class Replica:
    """A model server on 127.0.0.1 that behaves as `behaviour` says; `seen` lists the request
    targets it read, in order (one entry per request head read, on any connection)."""

    def __init__(self, name: str, behaviour: Behaviour) -> None:
        self.name = name
        self.behaviour = behaviour
        self.seen: list[str] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def ids(self) -> list[str]:
        """The `n` query parameter of each request seen."""
        return [urllib.parse.parse_qs(urllib.parse.urlsplit(t).query)["n"][0] for t in self.seen]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # stopped
                return
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._exchange(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _exchange(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        on_this_connection = 0
        while True:
            got = _read_head(f)
            if got is None:
                return
            target, headers = got
            with self._lock:
                first_ever = not self.seen
                self.seen.append(target)
            on_this_connection += 1
            b = self.behaviour
            if b == "reset-on-head":
                _reset(conn)
                return
            _read_body(f, headers)
            if b == "reset" or (b == "serve-once" and not first_ever):
                _reset(conn)
                return
            if b == "close" or (b == "drop-next" and on_this_connection > 1):
                conn.shutdown(socket.SHUT_RDWR)
                return
            if b == "cut-body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
                conn.shutdown(socket.SHUT_RDWR)
                return
            if b == "cut-head":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
                conn.shutdown(socket.SHUT_RDWR)
                return
            body = self.name.encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
        self._listener.close()
        with self._lock:
            for conn in list(self._open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class RunningGateway:
    """The gateway's HTTP front on a uvloop loop in a thread of its own, routing DEP to
    `targets` through a StubTable; `observed` collects (status, upstream ok) per request."""

    def __init__(self, targets: list[str], timeout: float = 30.0) -> None:
        self.table = StubTable({DEP: route(*targets)})
        self.observed: list[tuple[int, bool]] = []
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._timeout = timeout
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(HANG_GUARD)

    async def _start(self) -> int:
        self.gateway = Gateway(
            self.table,  # type: ignore[arg-type]
            timeout=self._timeout,
            observe=lambda _dep, _s, status, ok: self.observed.append((status, ok)),
        )
        self.front = HttpFront(
            self.gateway.handle, min_timeout=self._timeout, tick=self.gateway.flush_metrics
        )
        sock = socket.create_server(("127.0.0.1", 0))
        await self.front.start(sock)
        return sock.getsockname()[1]

    def flush(self) -> None:
        """Hand the observations so far to `observed` (on the gateway's loop)."""
        asyncio.run_coroutine_threadsafe(self._flush(), self.loop).result(HANG_GUARD)

    async def _flush(self) -> None:
        self.gateway.flush_metrics()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(HANG_GUARD)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(HANG_GUARD)
        self.loop.close()

    async def _stop(self) -> None:
        await self.front.shutdown(1.0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def replicas() -> Iterator[Callable[[str, Behaviour], Replica]]:
    """Makes replicas, stopped after the test."""
    made: list[Replica] = []

    def make(name: str, behaviour: Behaviour) -> Replica:
        replica = Replica(name, behaviour)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.stop()


@pytest.fixture
def gateway() -> Iterator[Callable[..., RunningGateway]]:
    """Starts gateways for lists of targets, stopped after the test."""
    made: list[RunningGateway] = []

    def make(*targets: str) -> RunningGateway:
        gw = RunningGateway(list(targets))
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


@pytest.fixture
def refused() -> Iterator[str]:
    """An address where nothing listens: the port is held, bound without listening, so that
    a connection to it is refused for as long as the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def post(conn: http.client.HTTPConnection, n: int) -> tuple[int, bytes]:
    """A prediction request numbered `n` (a JSON body, buffered by the gateway); its status
    and body."""
    body = json.dumps({"instances": [[n, n + 1]]}).encode()
    conn.request(
        "POST",
        f"{PATH}/v1/models/m:predict?n={n}",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    return response.status, response.read()


def client(gw: RunningGateway) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", gw.port, timeout=HANG_GUARD)


def message(body: bytes) -> str:
    return json.loads(body)["error"]["message"]


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {HANG_GUARD}s waiting for {what}")
        time.sleep(0.005)


# --- refused connections -----------------------------------------------------------------------


def test_a_refusing_replica_is_not_tried_again_for_the_request_while_another_is_listed(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
    refused: str,
) -> None:
    """The round-robin position is shared by all requests: while a request waits for its table
    refresh after a refused connection, other requests take their turns. Here one other
    request is routed during each refresh, which lined every retry of a request up on the
    refusing replica again (three refusals: 502) before the gateway kept a request away from
    replicas that refused it."""
    live = replicas("live", "answer")
    gw = gateway(refused, live.address)
    gw.table.on_refresh = lambda: gw.table.routes[DEP].pick()  # another request's turn
    conn = client(gw)
    answers = [post(conn, n) for n in range(50)]
    conn.close()
    assert [a for a in answers if a != (200, b"live")] == []
    assert sorted(live.ids(), key=int) == [str(n) for n in range(50)]  # each exactly once
    assert gw.table.refreshes > 0  # the refusing replica was tried, and passed over


def test_concurrent_clients_get_no_error_from_a_refusing_replica(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
    refused: str,
) -> None:
    """The same with real concurrency (four clients at once) moving the shared position."""
    live = replicas("live", "answer")
    gw = gateway(refused, live.address)
    failed: list[tuple[int, int, bytes]] = []

    def run(first: int) -> None:
        conn = client(gw)
        for n in range(first, first + 25):
            status, body = post(conn, n)
            if (status, body) != (200, b"live"):
                failed.append((n, status, body))
        conn.close()

    threads = [threading.Thread(target=run, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD)
    assert failed == []
    assert len(live.seen) == 100


# --- connections that break before the answer --------------------------------------------------


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_request_lost_before_any_answer_goes_once_to_another_replica(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
    how: Behaviour,
) -> None:
    lost, live = replicas("lost", how), replicas("live", "answer")
    gw = gateway(lost.address, live.address)
    conn = client(gw)
    answers = [post(conn, n) for n in range(20)]
    conn.close()
    assert [a for a in answers if a != (200, b"live")] == []
    assert sorted(live.ids(), key=int) == [str(n) for n in range(20)]
    # The round robin sent every other request there first; none of them twice.
    assert lost.seen and len(set(lost.ids())) == len(lost.seen)
    gw.flush()
    assert gw.observed == [(200, True)] * 20


@pytest.mark.parametrize("how", ["reset", "close"])
def test_with_no_other_replica_a_lost_request_is_a_502_at_once_and_sent_once(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
    how: Behaviour,
) -> None:
    lost = replicas("lost", how)
    gw = gateway(lost.address)
    conn = client(gw)
    for n in range(5):
        started = time.monotonic()
        status, body = post(conn, n)
        took = time.monotonic() - started
        assert status == 502 and "model server closed the connection" in message(body)
        assert took < 2.0, f"the 502 took {took:.2f}s"  # not the 30 s timeout, no retry loop
    conn.close()
    assert lost.ids() == [str(n) for n in range(5)]  # each exactly once


def test_a_request_that_breaks_every_replica_is_sent_to_two_at_most(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
) -> None:
    """A "query of death": the retry takes down one more replica, not all of them."""
    killed = [replicas(f"r{k}", "reset") for k in range(3)]
    gw = gateway(*(r.address for r in killed))
    conn = client(gw)
    status, body = post(conn, 7)
    conn.close()
    assert status == 502 and "model server closed the connection" in message(body)
    assert sorted(len(r.seen) for r in killed) == [0, 1, 1]


# --- answers that began, and streamed bodies: never sent again ---------------------------------


def test_an_answer_cut_off_after_its_head_is_not_sent_again(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
) -> None:
    cut, live = replicas("cut", "cut-body"), replicas("live", "answer")
    gw = gateway(cut.address, live.address)
    conn = client(gw)
    body = json.dumps({"instances": [[1, 2]]}).encode()
    conn.request("POST", f"{PATH}/v1/models/m:predict?n=1", body=body)
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead) as broken:
        response.read()
    assert broken.value.partial == b"x" * 10
    conn.close()
    assert cut.ids() == ["1"] and live.seen == []


def test_an_answer_cut_off_within_its_head_is_a_502_and_not_sent_again(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
) -> None:
    """A byte of the answer came: the replica got the request, whatever became of it."""
    cut, live = replicas("cut", "cut-head"), replicas("live", "answer")
    gw = gateway(cut.address, live.address)
    conn = client(gw)
    status, _ = post(conn, 1)
    conn.close()
    assert status == 502
    assert cut.ids() == ["1"] and live.seen == []


@pytest.mark.parametrize("framing", ["chunked", "large"])
def test_a_streamed_body_whose_connection_resets_is_not_sent_again(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
    framing: str,
) -> None:
    """A chunked body, or one above BUFFER_LIMIT, is streamed: part of it has left when the
    connection breaks, and the gateway keeps no copy to send again. The replica resets the
    connection as soon as it has the head, while the client is still sending the body."""
    lost, live = replicas("lost", "reset-on-head"), replicas("live", "answer")
    gw = gateway(lost.address, live.address)
    if framing == "chunked":
        head = b"Transfer-Encoding: chunked\r\n\r\n"
        first, rest = b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"
    else:
        size = BUFFER_LIMIT + 4096
        head = f"Content-Length: {size}\r\n\r\n".encode()
        first, rest = b"a" * 65536, b"b" * (size - 65536)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=HANG_GUARD) as s:
        s.sendall(
            f"POST {PATH}/v1/models/m:predict?n=1 HTTP/1.1\r\nHost: gw\r\n".encode() + head + first
        )
        wait_until(lambda: lost.seen != [], "the replica to read the head")

        def send_rest() -> None:
            with contextlib.suppress(OSError):  # (the gateway may end the connection)
                s.sendall(rest)

        sender = threading.Thread(target=send_rest)
        sender.start()
        response = http.client.HTTPResponse(s, method="POST")
        response.begin()
        body = response.read()
        sender.join(HANG_GUARD)
    assert response.status == 502 and "model server closed the connection" in message(body)
    assert lost.ids() == ["1"] and live.seen == []


# --- the retry of a stale pooled connection and the fail-over ---------------------------------


def test_a_replica_lost_after_it_served_fails_over_on_its_pooled_connection(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
) -> None:
    """The common case in production: the gateway reaches a replica over a pooled keep-alive
    connection, then the replica's host goes away. The request should still reach the other
    replica, as it does when the lost replica's connection was fresh."""
    flaky, live = replicas("flaky", "serve-once"), replicas("live", "answer")
    gw = gateway(flaky.address, live.address)
    conn = client(gw)
    answers = [post(conn, n) for n in range(4)]
    conn.close()
    assert answers[0] == (200, b"flaky")  # round robin: flaky, live, flaky, live
    assert answers[1:] == [(200, b"live")] * 3
    # On its pooled connection, then once on a fresh one: a pooled connection the server
    # closed while idle breaks the same way, and is sent again to the same replica.
    assert flaky.ids().count("2") <= 2


def test_a_fail_over_onto_a_pooled_connection_the_server_closed_still_succeeds(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
) -> None:
    lost, live = replicas("lost", "reset"), replicas("live", "drop-next")
    gw = gateway(lost.address, live.address)
    conn = client(gw)
    answers = [post(conn, n) for n in range(3)]
    conn.close()
    # 0: lost, fail-over to live (fresh connection, pooled); 1: live's pooled connection is
    # closed as it is reused: a fresh one; 2: lost, fail-over onto that pooled connection,
    # which live closes too.
    assert answers == [(200, b"live")] * 3


# --- requests in flight (the autoscaler's load) ----------------------------------------------


def test_requests_in_flight_are_counted_while_relayed_and_none_are_left_after(
    replicas: Callable[[str, Behaviour], Replica],
    gateway: Callable[..., RunningGateway],
    refused: str,
) -> None:
    release = threading.Event()
    held = socket.create_server(("127.0.0.1", 0))

    def slow_replica() -> None:
        conn, _ = held.accept()
        with conn:
            conn.recv(65536)
            release.wait(HANG_GUARD)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow")

    threading.Thread(target=slow_replica, daemon=True).start()
    gw = gateway(f"127.0.0.1:{held.getsockname()[1]}")
    answers: list[tuple[int, bytes]] = []
    waiting = threading.Thread(target=lambda: answers.append(post(client(gw), 0)))
    waiting.start()
    wait_until(lambda: gw.gateway.in_flight == {DEP: 1}, "one request in flight")
    release.set()
    waiting.join(HANG_GUARD)
    held.close()
    assert answers == [(200, b"slow")]
    wait_until(lambda: gw.gateway.in_flight == {}, "nothing in flight")

    # Answered, failed over, cut off, refused: each counted once and gone once it ended.
    lost, live = replicas("lost", "reset"), replicas("live", "answer")
    cut = replicas("cut", "cut-body")
    for targets in ((lost.address, live.address), (cut.address,), (refused,)):
        gw = gateway(*targets)
        for n in range(4):
            conn = client(gw)
            with contextlib.suppress(http.client.HTTPException, OSError):
                post(conn, n)
            conn.close()
        wait_until(lambda gw=gw: gw.gateway.in_flight == {}, f"nothing in flight ({targets})")


def test_metrics_export_requests_in_flight_and_zero_once_none_are() -> None:
    from reconciler.serve.metrics import Metrics

    metrics = Metrics()
    metrics.observe_in_flight({"d1": 3})
    assert 'reconciler_inference_in_flight{deployment="d1"} 3.0' in metrics.render().decode()
    metrics.observe_in_flight({})
    assert 'reconciler_inference_in_flight{deployment="d1"} 0.0' in metrics.render().decode()
