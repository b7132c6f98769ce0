"""The inference gateway of `reconciler serve`, over real HTTP: against real containers (the
tests marked `engine`), and in-process against a fake model server (no engine needed)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Awaitable, Callable

import httptools
import pytest
import uvloop

from reconciler import backends
from reconciler.backends.base import published_endpoint
from reconciler.backends.network import host_owns
from reconciler.serve.gateway import Gateway
from reconciler.serve.relay import BUFFER_LIMIT, MAX_HEAD_BYTES, HttpFront
from reconciler.serve.routes import Route, build_routes, relay_targets
from tests.engine_support import (
    TEST_IMAGE,
    Server,
    configuration,
    deployment,
    docs,
    free_port,
    request,
    settings,
    wait_for,
)


@pytest.fixture
def served(host):
    """A host whose deployment URLs are the gateway's, with `reconciler serve` running."""
    port = free_port()
    host.write(
        settings(host.instance, f"  apiUrl: http://127.0.0.1:{port}/\n"), "manifests/settings.yaml"
    )
    server = Server(host.root, "--no-auth", port=port)
    yield host, server
    server.stop()


def url_of(host, name: str) -> str:
    return host.status()[name]["deploymentUrl"]


@pytest.mark.engine
def test_deployment_url_is_the_gateways_and_relays_requests(served):
    host, server = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    status = host.status()["tiny"]
    url = status["deploymentUrl"]
    assert url == f"{server.base}/v2/inference/deployments/{status['id']}"
    code, _, body = request(url + "/version")
    assert (code, body) == (200, b"1\n")
    code, headers, body = request(
        url + "/cgi-bin/echo?a=1&b=two",
        data=b'{"instances": [[1, 2]]}',
        headers={
            "Authorization": "Bearer secret-token",
            "AI-Resource-Group": "default",
            "X-Custom": "kept",
            "Content-Type": "application/json",
        },
    )
    text = body.decode()
    assert code == 200 and headers["X-Echo"] == "yes"
    assert "method=POST" in text and "query=a=1&b=two" in text
    assert "x-custom=kept" in text
    assert "authorization=none" in text  # the caller's token never reaches the model server
    assert text.endswith('{"instances": [[1, 2]]}')


@pytest.mark.engine
def test_unknown_and_not_running_deployments_get_ai_api_errors(served):
    host, server = served
    code, headers, body = request(f"{server.base}/v2/inference/deployments/d0000000000000ff/v2")
    error = json.loads(body)["error"]
    assert code == 404 and headers["Content-Type"] == "application/json"
    assert error["code"] == "404" and "d0000000000000ff not found" in error["message"]
    assert error["requestId"] and error["target"] == "/v2/inference/deployments/d0000000000000ff/v2"

    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    url = url_of(host, "tiny")
    wait_for(lambda: request(url + "/version")[0] == 200, what="the route")
    host.write(
        docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1", "  targetStatus: STOPPED"))
    )
    host.reconcile()
    code, _, body = wait_for(
        lambda: (r := request(url + "/version"))[0] == 503 and r, what="503 after the stop"
    )
    assert "is STOPPED" in json.loads(body)["error"]["message"]


@pytest.mark.engine
def test_serves_status_answers_follow_a_container_removed_by_hand(served, docker_client):
    """serve answers status from its routing table's container list while that is recent
    (routes.RECENT_SECONDS) and no pass has recorded anything since: a container removed by
    hand shows there as in `reconciler status` soon after, and a pass's restore at once."""
    host, server = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    api = f"{server.base}/v2/lm/deployments/{host.status()['tiny']['id']}"

    def answered() -> dict:
        code, _, body = request(api, headers={"AI-Resource-Group": "default"})
        assert code == 200, body
        return json.loads(body)

    wait_for(lambda: answered()["status"] == "RUNNING", what="RUNNING in serve's answer")
    label = f"reconciler.instance={host.instance}"
    for c in docker_client.containers(all=True, filters={"label": label}):
        docker_client.remove_container(c["Id"], force=True)
    cli = host.status()["tiny"]
    assert cli["status"] == "PENDING" and cli["statusMessage"], cli
    wait_for(
        lambda: (
            (a := answered())["status"] == "PENDING" and a["statusMessage"] == cli["statusMessage"]
        ),
        what="serve's answer to show the container removed by hand",
    )
    host.reconcile()  # restores it and records that: no list from before it is taken
    assert answered()["status"] == "RUNNING"


@pytest.mark.engine
def test_requests_are_balanced_across_replicas(served):
    host, _ = served
    host.write(
        docs(configuration("two-replicas", replicas="2"), deployment("tiny", "two-replicas"))
    )
    host.reconcile()
    url = url_of(host, "tiny")
    seen = {request(url + "/host")[2] for _ in range(6)}
    assert len(seen) == 2


@pytest.mark.engine
def test_large_bodies_stream_through_both_ways(served):
    host, _ = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB: above the buffered size, so streamed
    code, _, body = request(url_of(host, "tiny") + "/cgi-bin/echo", data=payload, timeout=60)
    assert code == 200 and body.endswith(payload)


@pytest.mark.engine
def test_server_sent_events_pass_through_as_they_come(served, docker_client):
    """The model server sends one event, then waits for a file that the test creates only
    after it has received that event: a gateway that buffered would never deliver it."""
    host, _ = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    parts = urllib.parse.urlsplit(url_of(host, "tiny"))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request("GET", parts.path + "/cgi-bin/sse", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    assert response.readline() == b"data: first\n"
    container = host.container_of("tiny")["Id"]
    exec_id = docker_client.exec_create(container, ["touch", "/tmp/go"])
    docker_client.exec_start(exec_id)
    rest = response.read()
    assert b"data: second" in rest
    conn.close()


@pytest.mark.engine
def test_an_update_through_the_gateway_fails_no_request(served):
    host, _ = served
    manifests = [configuration("tiny-v1"), configuration("tiny-v2", version="2", readyDelay="1")]
    host.write(docs(*manifests, deployment("tiny", "tiny-v1")))
    host.reconcile()
    url = url_of(host, "tiny")
    answers: list[tuple[int, bytes]] = []
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            code, _, body = request(url + "/version", timeout=5)
            answers.append((code, body))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(answers) > 5, what="requests before the update")
        host.write(docs(*manifests, deployment("tiny", "tiny-v2")))
        host.reconcile()
        n = len(answers)
        wait_for(lambda: len(answers) > n + 20, what="requests after the update")
    finally:
        done.set()
        thread.join()
    assert {code for code, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    versions = [body for _, body in answers]
    switch = versions.index(b"2\n")
    assert set(versions[:switch]) == {b"1\n"} and set(versions[switch:]) == {b"2\n"}


@pytest.mark.engine
def test_replicas_are_reached_at_their_own_address_where_the_host_owns_their_bridge(host):
    """On a local engine whose bridge ends on this host (rootful Docker on Linux) the gateway
    skips docker-proxy and relays to each container's own address; elsewhere (rootless Docker,
    Docker Desktop, a remote engine) to the published port. Both answer."""
    host.write(docs(configuration("tiny-v1", replicas="2"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    inspected = sorted(
        (host.client.inspect_container(c["Id"]) for c in host.containers()),
        key=lambda i: int(i["Config"]["Labels"]["reconciler.replica"]),
    )
    nets = [next(iter(i["NetworkSettings"]["Networks"].values())) for i in inspected]
    own = tuple(f"{n['IPAddress']}:8080" for n in nets)
    published = tuple(
        f"127.0.0.1:{i['NetworkSettings']['Ports']['8080/tcp'][0]['HostPort']}" for i in inspected
    )
    # Which addresses this host has, as iproute2 lists them (not the bind check under test).
    listed = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    mine = {field.split("/")[0] for line in listed.splitlines() for field in line.split()[3:4]}
    gateways = {n["Gateway"] for n in nets}
    assert {g for g in gateways if host_owns(g)} == gateways & mine
    backend = backends.connect()

    (route,) = build_routes(host.root, host.instance, backend, "127.0.0.1").values()
    assert route.targets == (own if gateways <= mine else published)
    containers = list(backend.observe(host.instance, images=False).containers)
    at_published = {c.id: published_endpoint(c, "127.0.0.1") for c in containers}
    assert relay_targets(containers, at_published) == published
    for address in own + published:
        assert request(f"http://{address}/version")[::2] == (200, b"1\n"), address


def test_only_the_hosts_own_addresses_count_as_owned():
    assert host_owns("127.0.0.1")
    assert not host_owns("203.0.113.254")  # TEST-NET-3, documentation only: nobody's
    assert not host_owns("")


# --- the relay in-process: a stub routing table and a fake model server on this loop ---------
#
# These need no engine: they drive the gateway's own HTTP/1.1 front (reconciler.serve.relay) with raw
# sockets, against a model server whose behaviour each path chooses, to check what the
# container tests cannot time: keep-alive reuse, pipelining, 100-continue, disconnects, pooled
# connections closed by the server, timeouts, retries after a refused connection.

DEP = "d0123456789abcde"


class FakeModel:
    """A model server: /echo answers with the request; /sse streams two events (the second
    once `go` is set); /close answers close-delimited; /slow never answers; /endless streams
    until the connection breaks; /drop-next answers, then closes the connection as the next
    request arrives (as a server closing an idle keep-alive connection at that moment);
    /garbage answers with something that is not HTTP."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.requests: list[tuple[int, bytes, dict[bytes, bytes], bytes]] = []
        self.go = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        cid = self.connections
        drop_next = False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if drop_next:
                    return
                line, *lines = head.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ")
                headers = {
                    k.strip().lower().encode(): v.strip().encode()
                    for k, _, v in (h.partition(":") for h in lines if h)
                }
                body = b""
                if b"content-length" in headers:
                    body = await reader.readexactly(int(headers[b"content-length"]))
                elif headers.get(b"transfer-encoding") == b"chunked":
                    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    await reader.readuntil(b"\r\n")
                self.requests.append((cid, target.encode(), headers, body))
                path = target.split("?")[0]
                if path == "/echo" or path == "/drop-next":
                    text = f"conn={cid} {method} {target}\n".encode() + body
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Echo: yes\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(text)
                    )
                    if method != "HEAD":
                        writer.write(text)
                    drop_next = path == "/drop-next"
                elif path == "/sse":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"
                        b"d\r\ndata: first\n\n\r\n"
                    )
                    await writer.drain()
                    await self.go.wait()
                    writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
                elif path == "/close":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
                    await writer.drain()
                    return
                elif path == "/slow":
                    await asyncio.sleep(3600)
                elif path == "/garbage":
                    writer.write(b"this is not HTTP\r\n\r\n")
                    await writer.drain()
                    return
                elif path == "/endless":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    while True:
                        writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                        await writer.drain()
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


class StubTable:
    """The routing table's interface, with routes set by the test."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.refreshes = 0
        self.on_refresh: Callable[[], None] = lambda: None

    def get(self, deployment_id: str) -> Route | None:
        return self.routes.get(deployment_id)

    def refresh(self) -> None:
        self.refreshes += 1
        self.on_refresh()

    def refresh_if_stale(self, seconds: float) -> None:
        self.refresh()


def route(*targets: str, status: str = "RUNNING") -> Route:
    return Route(DEP, "tiny", "default", status, tuple(targets))


async def read_response(reader: asyncio.StreamReader, head: bool = False) -> tuple:
    """(status, headers with lower-case names, body, raw bytes) of one answer; reads no byte of
    the next one. httptools checks the framing: a body must end where the parser says."""

    class Collect:
        def __init__(self) -> None:
            self.headers: dict[bytes, bytes] = {}
            self.body = b""
            self.done = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.done = True

    c = Collect()
    parser = httptools.HttpResponseParser(c)
    raw = await reader.readuntil(b"\r\n\r\n")
    with contextlib.suppress(httptools.HttpParserError):  # a HEAD answer "lacks" its body
        parser.feed_data(raw)
    if head:
        return parser.get_status_code(), c.headers, b"", raw
    if b"content-length" in c.headers:
        more = await reader.readexactly(int(c.headers[b"content-length"]))
    elif c.headers.get(b"transfer-encoding") == b"chunked":
        more = b""
        while True:
            line = await reader.readuntil(b"\r\n")
            more += line + await reader.readexactly(int(line.strip(), 16) + 2)
            if line.strip() == b"0":
                break
    else:
        more = await reader.read()  # close-delimited
    if more:
        parser.feed_data(more)
    framed = b"content-length" in c.headers or b"transfer-encoding" in c.headers
    assert c.done or not framed  # (a close-delimited body ends with the connection)
    return parser.get_status_code(), c.headers, c.body, raw + more


Scenario = Callable[[FakeModel, StubTable, HttpFront, int], Awaitable[None]]


def relay_test(
    scenario: Scenario,
    timeout: float = 5.0,
    routes: int = 1,
    max_connections: int = 100,
    authorize: Callable | None = None,
) -> tuple:
    """Run `scenario` against a gateway front (on uvloop, as `serve` runs) whose one deployment
    DEP is served by a FakeModel; returns the model, the table and the observed metrics."""
    observed: list[tuple[str, int, bool]] = []

    async def main() -> tuple:
        model = FakeModel()
        await model.start()
        table = StubTable({DEP: route(*[model.address] * routes)})
        gateway = Gateway(
            table,  # type: ignore[arg-type]
            timeout=timeout,
            authorize=authorize,
            observe=lambda dep, _s, code, ok: observed.append((dep, code, ok)),
        )
        front = HttpFront(
            gateway.handle,
            min_timeout=timeout,
            tick=gateway.flush_metrics,
            max_connections=max_connections,
        )
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await front.start(sock)
        try:
            # A hang guard only: scenarios take milliseconds.
            await asyncio.wait_for(scenario(model, table, front, port), 60)
        finally:
            await front.shutdown(1.0)
            await model.stop()
        return model, table

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        model, table = runner.run(main())
    return model, table, observed


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` on the loop (which the relay shares) until it holds; the deadline is a
    hang guard, generous: what is awaited takes milliseconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def get(path: str, extra: str = "") -> bytes:
    return f"GET /v2/inference/deployments/{DEP}{path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n".encode()


def test_keep_alive_connections_are_reused_on_both_sides():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        for _ in range(3):
            w.write(get("/echo"))
            status, headers, body, _ = await read_response(r)
            assert status == 200 and body.startswith(b"conn=1 GET /echo")
            assert b"connection" not in headers  # keep-alive is HTTP/1.1's default
        w.close()
        r2, w2 = await connect(port)  # another client gets the pooled connection
        w2.write(get("/echo"))
        assert (await read_response(r2))[2].startswith(b"conn=1 ")
        w2.close()

    model, _, observed = relay_test(scenario)
    assert model.connections == 1
    assert observed == [(DEP, 200, True)] * 4


def test_pipelined_requests_are_answered_in_order():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(b"".join(get(f"/echo?n={n}") for n in range(5)))
        for n in range(5):
            status, _, body, _ = await read_response(r)
            assert status == 200 and body == f"conn=1 GET /echo?n={n}\n".encode()
        w.close()

    relay_test(scenario)


def post(path: str, body: bytes) -> bytes:
    return (
        f"POST /v2/inference/deployments/{DEP}{path} HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer t\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_a_repeated_request_is_still_checked_and_routed_every_time():
    """A request head seen before on the connection is not parsed again; the gateway still
    decides about every request: the caller's check, and the replica it goes to."""
    refusal: list[tuple[int, str]] = []

    async def scenario(model, table, front, port):
        other = FakeModel()
        await other.start()
        try:
            r, w = await connect(port)
            same = post("/echo", b"same body")
            for _ in range(3):
                w.write(same)
                assert (await read_response(r))[::2] == (200, b"conn=1 POST /echo\nsame body")
            table.routes[DEP] = route(other.address)  # a new replica
            w.write(same)
            assert (await read_response(r))[::2] == (200, b"conn=1 POST /echo\nsame body")
            refusal.append((401, "the token has expired"))  # the caller's token expired
            w.write(same)
            status, _, body, _ = await read_response(r)
            assert status == 401 and json.loads(body)["error"]["message"] == refusal[0][1]
            w.close()
            ((_, _, headers, _),) = other.requests
            assert headers[b"host"] == other.address.encode()  # the head made for this replica
        finally:
            await other.stop()

    model, _, observed = relay_test(
        scenario, authorize=lambda fields, route: refusal[0] if refusal else None
    )
    assert len(model.requests) == 3
    assert [code for _, code, _ in observed] == [200, 200, 200, 200]  # (refused: not relayed)


def test_a_repeated_head_with_a_body_in_pieces_or_another_request_behind_is_parsed():
    """Only a read that holds exactly the repeated head and its body skips parsing: a body in
    two reads, or two requests in one, go through the parser and are answered as sent."""

    async def scenario(model, table, front, port):
        r, w = await connect(port)
        same = post("/echo", b"0123456789")
        w.write(same)
        assert (await read_response(r))[2] == b"conn=1 POST /echo\n0123456789"
        w.write(same[:-4])  # the body's end comes later
        await w.drain()
        # The point, not a wait for something: a pause, so that the relay reads the body's end
        # in a read of its own.
        await asyncio.sleep(0.05)
        w.write(same[-4:])
        assert (await read_response(r))[2] == b"conn=1 POST /echo\n0123456789"
        w.write(same + same + post("/echo?n=3", b"x"))  # three in one read
        for body in (b"POST /echo\n0123456789",) * 2 + (b"POST /echo?n=3\nx",):
            assert (await read_response(r))[2] == b"conn=1 " + body
        w.close()

    model, _, _ = relay_test(scenario)
    assert len(model.requests) == 5


def test_the_callers_token_resource_group_and_hop_by_hop_headers_stay_here():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(
            get(
                "/echo?a=1&b=%20two",
                "Authorization: Bearer secret\r\nAI-Resource-Group: default\r\n"
                "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                "TE: trailers\r\nX-Custom: kept\r\n",
            )
        )
        status, _, body, _ = await read_response(r)
        assert status == 200 and body.startswith(b"conn=1 GET /echo?a=1&b=%20two\n")
        w.close()

    model, _, _ = relay_test(scenario)
    ((_, _, headers, _),) = model.requests
    assert headers[b"x-custom"] == b"kept" and headers[b"host"] == model.address.encode()
    for gone in (b"authorization", b"ai-resource-group", b"x-hop", b"keep-alive", b"te"):
        assert gone not in headers
    assert headers.get(b"connection") is None


def test_expect_100_continue_gets_continue_before_the_body_is_sent():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(
            f"POST /v2/inference/deployments/{DEP}/echo HTTP/1.1\r\nHost: gw\r\n"
            "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        # (the body is sent only after the 100: without it this read would hang; the bound is
        # a hang guard, generous)
        assert await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        w.write(b"hello")
        status, _, body, _ = await read_response(r)
        assert status == 200 and body == b"conn=1 POST /echo\nhello"
        # refused before the body: no 100, and the connection ends with the answer
        w.write(
            b"POST /v2/inference/deployments/d00000000000dead/echo HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        status, headers, _, _ = await read_response(r)
        assert status == 404 and headers[b"connection"] == b"close"
        assert await r.read() == b""
        w.close()

    model, _, _ = relay_test(scenario)
    assert b"expect" not in model.requests[0][2]


def test_bodies_stream_both_ways_and_chunked_answers_stay_chunked():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        big = bytes(range(256)) * (BUFFER_LIMIT // 256 + 1000)  # above the buffered size
        w.write(
            f"PUT /v2/inference/deployments/{DEP}/echo HTTP/1.1\r\nHost: gw\r\n"
            f"Content-Length: {len(big)}\r\n\r\n".encode()
        )
        w.write(big)
        status, _, body, _ = await read_response(r)
        assert status == 200 and body == b"conn=1 PUT /echo\n" + big
        w.write(
            f"POST /v2/inference/deployments/{DEP}/echo HTTP/1.1\r\nHost: gw\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".encode()
        )
        status, _, body, _ = await read_response(r)
        assert status == 200 and body == b"conn=1 POST /echo\nhello world"
        w.write(get("/sse"))
        head = await r.readuntil(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        assert await r.readuntil(b"\n\n\r\n") == b"d\r\ndata: first\n\n\r\n"  # before `go`
        model.go.set()
        assert await r.readuntil(b"0\r\n\r\n") == b"e\r\ndata: second\n\n\r\n0\r\n\r\n"
        w.write(get("/echo"))  # the connection is still in step
        assert (await read_response(r))[0] == 200
        w.close()

    relay_test(scenario)


def test_a_close_delimited_answer_ends_the_clients_connection():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/close"))
        status, headers, body, _ = await read_response(r)
        assert status == 200 and body == b"all of it" and headers[b"connection"] == b"close"
        assert await r.read() == b""
        w.close()

    _, _, observed = relay_test(scenario)
    assert observed == [(DEP, 200, True)]


def test_head_answers_end_with_their_head():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/echo").replace(b"GET", b"HEAD", 1))
        status, headers, _, _ = await read_response(r, head=True)
        assert status == 200 and int(headers[b"content-length"]) > 0
        w.write(get("/echo"))  # neither connection waits for a body that never comes
        status, _, body, _ = await read_response(r)
        assert status == 200 and body.startswith(b"conn=1 GET")
        w.close()

    relay_test(scenario)


def test_a_client_that_leaves_mid_answer_closes_the_upstream_connection():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/endless"))
        await r.readexactly(100_000)
        w.close()
        await until(lambda: model.open == 0, "the upstream connection to close")  # not pooled
        assert not any(front.pool.idle.values())
        r, w = await connect(port)  # and the gateway still serves
        w.write(get("/echo"))
        assert (await read_response(r))[2].startswith(b"conn=2 ")
        w.close()

    _, _, observed = relay_test(scenario)
    assert observed[0] == (DEP, 200, True)


def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/drop-next"))
        assert (await read_response(r))[0] == 200
        w.write(get("/echo"))  # written to the pooled connection, which the server then drops
        status, _, body, _ = await read_response(r)
        assert status == 200 and body.startswith(b"conn=2 GET /echo")
        w.close()

    model, _, _ = relay_test(scenario)
    assert model.connections == 2


def test_a_refused_connection_is_retried_on_a_refreshed_table():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        stopped = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there

    async def scenario(model, table, front, port):
        table.routes[DEP] = route(stopped)
        table.on_refresh = lambda: table.routes.update({DEP: route(model.address)})
        r, w = await connect(port)
        w.write(
            f"POST /v2/inference/deployments/{DEP}/echo HTTP/1.1\r\nHost: gw\r\n"
            "Content-Length: 2\r\n\r\nhi".encode()
        )
        status, _, body, _ = await read_response(r)
        assert status == 200 and body == b"conn=1 POST /echo\nhi"
        w.close()

    _, table, _ = relay_test(scenario)
    assert table.refreshes == 1


def answers(url: str) -> bool:
    try:
        return request(url, timeout=1)[0] == 200
    except OSError:  # not listening yet
        return False


@pytest.mark.engine
def test_a_replica_removed_a_moment_ago_is_skipped_not_waited_for(docker_client):
    """A container reached at its own address and then removed by hand leaves an address that
    swallows connection attempts (nobody is there to refuse them). Until the table notices, a
    request may pick it: after one short attempt the table is refreshed and the request goes to
    a replica still there, instead of waiting out a timeout and answering 504."""
    container = docker_client.create_container(TEST_IMAGE, labels={"reconciler.test": "gone"})
    try:
        docker_client.start(container)
        nets = docker_client.inspect_container(container)["NetworkSettings"]["Networks"]
        gone = f"{next(iter(nets.values()))['IPAddress']}:8080"
        # talked to, as the gateway had: the host knows the address's link layer
        wait_for(lambda: answers(f"http://{gone}/version"), what=gone)
    finally:
        docker_client.remove_container(container, force=True)

    async def scenario(model, table, front, port):
        table.routes[DEP] = route(gone, model.address)  # the first pick is the removed one
        table.on_refresh = lambda: table.routes.update({DEP: route(model.address)})
        r, w = await connect(port)
        w.write(get("/echo"))
        status, _, body, _ = await read_response(r)
        assert (status, body) == (200, b"conn=1 GET /echo\n")
        w.close()

    _, table, observed = relay_test(scenario)
    assert table.refreshes == 1
    assert observed == [(DEP, 200, True)]


def test_errors_are_ai_api_errors():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/slow"))
        status, _, body, _ = await read_response(r)
        error = json.loads(body)["error"]
        assert status == 504 and "did not answer within 0.3s" in error["message"]
        table.routes[DEP] = route(status="STOPPED")
        w.write(get("/echo"))
        status, headers, body, _ = await read_response(r)
        assert status == 503 and "is STOPPED" in json.loads(body)["error"]["message"]
        assert b"retry-after" not in headers  # it does not serve again by itself
        w.write(b"GET /v2/inference/deployments/dffffffffffffff0/x%20y HTTP/1.1\r\nHost: g\r\n\r\n")
        status, _, body, _ = await read_response(r)
        error = json.loads(body)["error"]
        assert status == 404 and error["target"] == "/v2/inference/deployments/dffffffffffffff0/x y"
        assert set(error) == {"code", "message", "requestId", "target", "details"}
        w.close()

    _, table, observed = relay_test(scenario, timeout=0.3)
    assert observed == [(DEP, 504, False)]
    assert table.refreshes == 2  # a deployment that does not serve gets a fresher look


def test_a_deployment_without_a_ready_replica_gets_503_with_its_status_message_at_once():
    """The routing table lists only ready replicas (routes.build_routes); with none, the caller
    hears why from the table's message, without any connection attempt."""

    async def scenario(model, table, front, port):
        why = "no replica ready: readiness /v2/health/ready timed out 3 times"
        table.routes[DEP] = Route(DEP, "tiny", "default", "PENDING", (), why)
        r, w = await connect(port)
        w.write(get("/echo"))
        status, headers, body, _ = await read_response(r)
        message = json.loads(body)["error"]["message"]
        assert (status, message) == (503, f"Deployment {DEP} is PENDING: {why}")
        assert headers[b"retry-after"] == b"10"
        w.write(get("/echo"))  # the connection stays usable
        table.routes[DEP] = route(model.address)
        status, _, _, _ = await read_response(r)
        assert status == 200
        w.close()

    model, _, observed = relay_test(scenario)
    assert len(model.requests) == 1  # the 503 never reached a replica
    assert observed == [(DEP, 200, True)]


def test_http_1_0_clients_and_connection_close_are_honoured():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/echo").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        status, headers, body, _ = await read_response(r)
        assert status == 200 and body.startswith(b"conn=1 GET /echo")
        assert headers[b"connection"] == b"close" and await r.read() == b""
        r, w = await connect(port)
        w.write(get("/echo", "Connection: keep-alive\r\n").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        status, headers, _, _ = await read_response(r)
        assert status == 200 and headers[b"connection"] == b"keep-alive"
        w.write(get("/echo", "Connection: close\r\n"))
        status, headers, _, _ = await read_response(r)
        assert status == 200 and headers[b"connection"] == b"close" and await r.read() == b""

    relay_test(scenario)


def test_broken_answers_and_requests():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/garbage"))
        status, _, body, _ = await read_response(r)
        assert status == 502 and "invalid answer" in json.loads(body)["error"]["message"]
        w.write(b"NOT AN HTTP REQUEST\r\n\r\n")
        status, headers, _, _ = await read_response(r)
        assert status == 400 and headers[b"connection"] == b"close"
        r, w = await connect(port)
        w.write(get("/echo", f"X-Big: {'x' * MAX_HEAD_BYTES}\r\n"))
        status, _, _, _ = await read_response(r)
        assert status == 431

    relay_test(scenario)


def test_connections_beyond_the_limit_are_answered_503():
    async def scenario(model, table, front, port):
        r1, w1 = await connect(port)
        w1.write(get("/echo"))
        assert (await read_response(r1))[0] == 200
        r2, w2 = await connect(port)
        w2.write(get("/echo"))
        status, headers, _, _ = await read_response(r2)
        assert status == 503 and headers[b"connection"] == b"close"
        w1.close()

    relay_test(scenario, max_connections=1)


def test_shutdown_lets_answers_in_flight_finish():
    async def scenario(model, table, front, port):
        r, w = await connect(port)
        w.write(get("/sse"))
        await r.readuntil(b"data: first\n\n\r\n")
        idle_r, _ = await connect(port)
        await until(lambda: len(front.conns) == 2, "the idle connection to be accepted")
        # A grace far longer than the bounds below: closing the idle connection "at once" and
        # ending once the answer is done are told apart from waiting the grace out.
        stopping = asyncio.create_task(front.shutdown(60.0))
        assert await asyncio.wait_for(idle_r.read(), 10) == b""  # idle: closed at once
        with pytest.raises(OSError):
            await connect(port)  # no longer accepting
        model.go.set()
        assert await r.readuntil(b"0\r\n\r\n") == b"e\r\ndata: second\n\n\r\n0\r\n\r\n"
        assert await r.read() == b""  # and then the connection ends
        await asyncio.wait_for(stopping, 10)  # not at the grace's end

    relay_test(scenario)
