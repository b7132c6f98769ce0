"""The gateway holds requests for a deployment scaled to zero (issue 17), over real sockets:
the gateway of tests/test_gateway_failover.py, its stub routing table listing the deployment
RUNNING with no replica and a recorded count of 0, and a real HTTP replica that the test "starts"
by listing it in the table (what a reconcile pass does by recording it), as `wake` is called.

What is checked: held requests are answered once a replica serves, with no error to the
caller; a burst wakes the deployment once; beyond `max_held` waiting requests, and after
`hold_seconds`, the answer is 503 with Retry-After; a deployment that went DEAD meanwhile says
so.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from reconciler.serve.routes import Route
from tests.test_gateway import DEP
from tests.test_gateway_failover import PATH, Replica, RunningGateway


def idle() -> Route:
    return Route(DEP, "tiny", "default", "RUNNING", (), "scaled to zero", replicas=0)


@pytest.fixture
def held() -> Iterator[Callable[[], RunningGateway]]:
    made: list[RunningGateway] = []

    def make() -> RunningGateway:
        gw = RunningGateway([])
        gw.table.routes[DEP] = idle()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


def ask(port: int) -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", PATH + "/v2/models/tiny")
        response = conn.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()
    finally:
        conn.close()


def burst(port: int, count: int) -> list[tuple[int, str | None, bytes]]:
    results: list[tuple[int, str | None, bytes]] = []
    lock = threading.Lock()

    def one() -> None:
        answer = ask(port)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_held_requests_are_answered_once_a_replica_serves_and_a_burst_wakes_it_once(held):
    gw = held()
    replica = Replica("r1", "answer")
    wakes: list[str] = []

    def wake(dep: str) -> None:
        wakes.append(dep)

        def up() -> None:  # the replica is ready 0.5 s later, as a pass records it
            time.sleep(0.5)
            gw.table.routes[DEP] = Route(
                DEP, "tiny", "default", "RUNNING", (replica.address,), replicas=1
            )

        threading.Thread(target=up).start()

    gw.gateway.wake = wake
    try:
        started = time.monotonic()
        results = burst(gw.port, 5)
        assert [(status, body) for status, _, body in results] == [(200, b"r1")] * 5, results
        assert time.monotonic() - started >= 0.5  # they waited for it
        assert wakes == [DEP]  # one cold start for the burst
    finally:
        replica.stop()


def test_beyond_max_held_and_after_hold_seconds_503_with_retry_after(held):
    gw = held()
    gw.gateway.max_held = 2
    gw.gateway.hold_seconds = 1.0
    wakes: list[str] = []
    gw.gateway.wake = wakes.append  # never comes up
    results = burst(gw.port, 5)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [503] * 5, results
    assert all(after == "10" for _, after, _ in results), results
    bodies = b" ".join(body for _, _, body in results)
    assert bodies.count(b"requests wait for it already") == 3, bodies
    assert bodies.count(b"did not start within 1s") == 2, bodies
    assert wakes == [DEP]


def test_a_deployment_that_dies_while_starting_says_so(held):
    gw = held()

    def wake(dep: str) -> None:
        gw.table.routes[DEP] = Route(
            DEP, "tiny", "default", "DEAD", (), "not ready after 30s: boom", replicas=0
        )

    gw.gateway.wake = wake
    status, after, body = ask(gw.port)
    assert status == 503 and after is None, (status, after, body)
    assert b"is DEAD: not ready after 30s: boom" in body
