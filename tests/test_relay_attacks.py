"""Attacks from issue 13 ("Safe to expose") on a real `reconciler serve`, over real sockets.

Finding 2: a request whose Connection header named Content-Length lost its length but not its
body on the way to a pooled upstream connection; the body became a request of its own there,
and the next caller, another tenant, got its answer. Finding 4: connections that send their
head one byte at a time held every connection slot.

The smuggling test runs a real container behind the gateway (marked `engine`); the slow-head
tests need only `reconciler serve` and sockets, no engine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import (
    Host,
    Server,
    configuration,
    deployment,
    docs,
    free_port,
    serve_root,
    settings,
    wait_for,
)
from tests.test_ai_api import add_client, token


def answer(sock: socket.socket, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One answer read from `sock` (framed by http.client)."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def ask(port: int, raw: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """`raw` on a new connection from `source`; its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(raw)
        return answer(s)


@pytest.fixture
def tenants(host: Host, tmp_path: Path) -> Iterator[tuple[Host, Server, str, str]]:
    """`reconciler serve` with auth, a deployment of team-a's (resource group default), and a
    token each for team-a and team-b (resource group other, which has no deployment)."""
    port = free_port()
    host.write(
        settings(host.instance, f"  apiUrl: http://127.0.0.1:{port}\n"), "manifests/settings.yaml"
    )
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    credentials = tmp_path / "secrets" / "clients.json"
    team_a = add_client(host.root, credentials, "team-a", "default")
    team_b = add_client(host.root, credentials, "team-b", "other")
    server = Server(host.root, "--credentials", str(credentials), port=port)
    try:
        yield host, server, token(server, team_a), token(server, team_b)
    finally:
        server.stop()


@pytest.mark.engine
def test_connection_content_length_smuggles_nothing_to_another_tenant(tenants):
    """Team-a's request names Content-Length in its Connection header; its body is the start
    of a request of team-a's own, left open to swallow whatever comes next on that upstream
    connection. Team-b's next request, on another connection, must get team-b's answer (no
    deployments), never team-a's deployment list; team-a's request is refused (400) and its
    connection closed, through the AI API's relay and the gateway alike."""
    host, server, token_a, token_b = tenants
    port = server.port
    tiny = host.status()["tiny"]
    listing = (
        b"GET /v2/lm/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
        b"AI-Resource-Group: %s\r\n"
    )
    smuggled = listing % (token_a.encode(), b"default") + b"X-Swallow-Next: "

    def attack(target: bytes, body: bytes) -> bytes:
        return (
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            b"Connection: content-length\r\nContent-Length: %d\r\n\r\n%s"
            % (target, token_a.encode(), len(body), body)
        )

    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(attack(b"/healthz", smuggled))
            status, headers, _ = answer(s)
            # team-b, meanwhile, on a connection of its own
            code, _, body = ask(port, listing % (token_b.encode(), b"other") + b"\r\n")
            assert code == 200, body
            assert json.loads(body)["count"] == 0, body  # team-b's own answer, not team-a's
            assert (status, headers.get("connection")) == (400, "close")
            assert s.recv(1) == b""  # closed: nothing more is read from team-a there

    # The gateway: the same request to team-a's deployment is refused before it is relayed.
    path = urllib.parse.urlsplit(tiny["deploymentUrl"]).path
    inner = b"GET %s/cgi-bin/echo?smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(attack(path.encode() + b"/cgi-bin/echo", inner))
        status, headers, _ = answer(s)
        assert (status, headers.get("connection")) == (400, "close")
        assert s.recv(1) == b""
    plain = (
        b"POST %s/cgi-bin/echo?mine HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: 4\r\n\r\nmine" % (path.encode(), token_a.encode())
    )
    status, _, body = ask(port, plain)
    assert status == 200 and b"query=mine" in body and body.endswith(b"mine"), body


# --- slow heads ------------------------------------------------------------------------------------


class Dribbler:
    """Connections that send a request head's start and then one byte at a time (bounded in
    count and time); what each one got back, and whether it is closed."""

    def __init__(self, port: int, count: int, start: bytes, source: str = "127.0.0.1") -> None:
        self.socks: list[socket.socket] = []
        self.got: dict[socket.socket, bytes] = {}
        self.closed: set[socket.socket] = set()
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            s.setblocking(False)
            self.socks.append(s)
            self.got[s] = b""
            self._send(s, start)

    def _send(self, s: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):  # (a closed connection shows in poll)
            s.send(data)

    def poll(self) -> None:
        """Read what came; note the connections the server closed."""
        for s in self.socks:
            if s in self.closed:
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:  # reset: closed with our bytes unread
                self.closed.add(s)
                continue
            if data:
                self.got[s] += data
            else:
                self.closed.add(s)

    def dribble(self, byte: bytes = b"x") -> None:
        for s in self.socks:
            if s not in self.closed:
                self._send(s, byte)

    def open(self) -> list[socket.socket]:
        return [s for s in self.socks if s not in self.closed]

    def close(self) -> None:
        for s in self.socks:
            s.close()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def healthz(port: int, source: str = "127.0.0.1") -> int:
    """GET /healthz from `source`: the status, or 0 if the connection was refused or reset."""
    try:
        return ask(port, HEALTHZ, source)[0]
    except (OSError, http.client.HTTPException):
        return 0


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Start `reconciler serve --no-auth` (an empty GitOps root: no engine needed) with the
    environment given."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        _, _, server = serve_root(tmp_path, lambda root: None)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_slow_head_is_cut_off_at_the_deadline_and_others_are_served(serve):
    """Heads sent a byte every 0.2 s get 408 and are closed once the head deadline (1.5 s
    here) has passed, while they would go on for 12 s; a connection that sends only empty
    lines is closed as idle; a good client is served throughout."""
    server = serve(RECONCILER_HEAD_TIMEOUT="1.5")
    slow = Dribbler(server.port, 20, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow")
    blank = Dribbler(server.port, 1, b"\r\n")
    good: list[int] = []
    try:
        # Polled until every slow connection is closed; the deadline only stops a server that
        # never closes them: 12 s, against the 1.5 s head deadline (and the 5 s keep-alive
        # that ends the blank one).
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and (slow.open() or blank.open()):
            slow.poll()
            blank.poll()
            slow.dribble()
            blank.dribble(b"\r\n")
            good.append(healthz(server.port))
            time.sleep(0.2)  # the point: a byte every 0.2 s, a client too slow for the deadline
        assert not slow.open() and not blank.open(), "slow connections still open after 12 s"
        # (a 408 can be lost to the reset that a byte sent after the close brings)
        said = [slow.got[s] for s in slow.socks if slow.got[s]]
        assert said and all(g.startswith(b"HTTP/1.1 408 ") for g in said), said[:3]
        # A good request each round (how many depends on the machine's speed), all served.
        assert len(good) >= 3 and set(good) == {200}, good
    finally:
        slow.close()
        blank.close()


def test_one_address_cannot_hold_every_connection(serve):
    """300 slow connections from 127.0.0.1 with a cap of 50 per address: 250 are refused at
    once (503, or reset), the 50 others are held until their deadline; a client on 127.0.0.2 is
    served all along, and 127.0.0.1 again once its slow connections are gone."""
    server = serve(RECONCILER_MAX_CONNECTIONS_PER_ADDRESS="50", RECONCILER_HEAD_TIMEOUT="8")
    slow = Dribbler(server.port, 300, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow")
    good: list[int] = []
    try:
        # The point: 2 s of dribbling, a byte every 0.1 s, well before the 8 s head deadline
        # (which would close the 50 held connections with a 408, not a 503).
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            slow.poll()
            slow.dribble()
            good.append(healthz(server.port, source="127.0.0.2"))
            time.sleep(0.1)
        slow.poll()
        refused = [s for s in slow.socks if s in slow.closed]
        assert len(refused) >= 250 and len(slow.open()) <= 50, (len(refused), len(slow.open()))
        said = [slow.got[s] for s in refused if slow.got[s]]
        assert said and all(g.startswith(b"HTTP/1.1 503 ") for g in said), said[:3]
        assert len(good) >= 5 and set(good) == {200}, good
        assert healthz(server.port) in (0, 503)  # 127.0.0.1 is at its cap meanwhile
        slow.close()
        wait_for(lambda: healthz(server.port) == 200, timeout=10, what="127.0.0.1 served again")
    finally:
        slow.close()
