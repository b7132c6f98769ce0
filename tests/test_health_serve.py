"""Health checks as `reconciler serve` shows them, on the real engine: a deployment whose only
replica hangs is PENDING ("no replica ready: ...") and the gateway answers 503 at once, with
that reason and a Retry-After, until it answers again (no reconcile in between); with two
replicas, the hung one is left out and every request goes to the other."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error

import pytest

from tests.engine_support import (
    TINY_TEMPLATE,
    Server,
    configuration,
    deployment,
    docs,
    free_port,
    request,
    settings,
    wait_for,
)

pytestmark = pytest.mark.engine

# A short period and threshold, so that a hang is seen within seconds.
PROBE = "    readinessProbe: {periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2}\n"
VERDICT_SECONDS = 30  # several times what the probe needs (1 s period, 2 failures, 1 s timeout)


@pytest.fixture
def served(host):
    """A host with the probed tiny template, whose deployment URLs are the gateway's, with
    `reconciler serve --no-auth` running."""
    template = TINY_TEMPLATE.replace("    startupTimeout: 30\n", "    startupTimeout: 30\n" + PROBE)
    assert PROBE in template
    host.write(template, "templates/tiny.yaml")
    port = free_port()
    host.write(
        settings(host.instance, f"  apiUrl: http://127.0.0.1:{port}/\n"), "manifests/settings.yaml"
    )
    server = Server(host.root, "--no-auth", port=port)
    yield host, server
    server.stop()


@pytest.fixture
def freeze(host):
    """Freezes every process of a container (SIGSTOP: the server keeps its port, the kernel
    still accepts connections, nothing answers); all are resumed at teardown, before the host
    removes the containers, whatever the test did."""
    frozen: list[int] = []

    def stop(container_id: str) -> list[int]:
        rows = host.client.top(container_id, ps_args="-o user,pid")["Processes"]
        pids = [int(row[1]) for row in rows]
        assert pids, rows
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
        return pids

    yield stop
    resume(frozen)


def resume(pids: list[int]) -> None:
    while pids:
        pid = pids.pop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def call(url: str, timeout: float) -> tuple[int, dict[str, str], bytes] | None:
    """One GET through the gateway; None where it got no answer within `timeout`."""
    try:
        code, headers, body = request(url, timeout=timeout)
    except (TimeoutError, urllib.error.URLError):
        return None
    return code, dict(headers.items()), body


def replicas_of(host, name: str) -> list[dict]:
    return host.status()[name].get("details", {}).get("replicas", [])


def all_ready(host, name: str, count: int) -> bool:
    replicas = replicas_of(host, name)
    return len(replicas) == count and all(r["health"] == "ready" for r in replicas)


def test_a_hung_only_replica_makes_the_deployment_pending_and_the_gateway_answer_503(
    served, freeze
):
    host, _ = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    status = host.status()["tiny"]
    dep_id, url = status["id"], status["deploymentUrl"] + "/version"
    wait_for(lambda: (r := call(url, 5)) and r[0] == 200, what="the gateway to answer 200")
    # Before the first passing check a replica is "starting" (and failures within the start
    # period do not count): freeze it only once the check has passed.
    wait_for(lambda: all_ready(host, "tiny", 1), timeout=VERDICT_SECONDS, what="ready")
    snapshot = host.snapshot()

    frozen = freeze(host.container_of("tiny")["Id"])
    try:
        pending = wait_for(
            lambda: (s := host.status()["tiny"])["status"] == "PENDING" and s,
            timeout=VERDICT_SECONDS,
            what="status PENDING",
        )
        assert pending["statusMessage"].startswith("no replica ready: "), pending
        (replica,) = pending["details"]["replicas"]
        assert (replica["ready"], replica["serving"], replica["health"]) == (
            False,
            False,
            "unready",
        ), replica
        assert replica["message"] and replica["message"] in pending["statusMessage"], replica
        print("status:", json.dumps(pending["statusMessage"]), json.dumps(replica))

        # Requests sent before the gateway's table saw the verdict may wait on the frozen
        # server (the client gives up after 5 s); then every one is a 503 at once.
        wait_for(lambda: (r := call(url, 5)) and r[0] == 503, timeout=15, what="the first 503")
        started = time.monotonic()
        code, headers, body = request(url, timeout=5)
        elapsed = time.monotonic() - started
        assert code == 503 and elapsed < 1, (code, elapsed)
        assert headers["Retry-After"] == "10"
        message = json.loads(body)["error"]["message"]
        assert message.startswith(f"Deployment {dep_id} is PENDING: no replica ready: "), message
        print("503:", elapsed, body.decode())
    finally:
        resume(frozen)

    running = wait_for(
        lambda: (s := host.status()["tiny"])["status"] == "RUNNING" and s,
        timeout=VERDICT_SECONDS,
        what="status RUNNING again",
    )
    assert [r["ready"] for r in running["details"]["replicas"]] == [True]
    code, _, body = wait_for(
        lambda: (r := call(url, 5)) and r[0] == 200 and r, timeout=15, what="200 again"
    )
    assert body == b"1\n"
    assert host.snapshot() == snapshot  # nobody reconciled: the health check alone did it


def test_a_hung_replica_of_two_is_left_out_and_every_request_goes_to_the_other(served, freeze):
    host, _ = served
    host.write(docs(configuration("tiny-v1", replicas="2"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    url = host.status()["tiny"]["deploymentUrl"] + "/host"
    wait_for(lambda: all_ready(host, "tiny", 2), timeout=VERDICT_SECONDS, what="both ready")
    # The gateway's table takes each replica in at its first refresh after its check passed.
    hosts: set[bytes] = set()
    wait_for(
        lambda: ((r := call(url, 5)) and hosts.add(r[2])) or len(hosts) == 2,
        timeout=15,
        what="both answering",
    )

    sick = next(c for c in host.containers() if c["Labels"]["reconciler.deployment-name"] == "tiny")
    sick_name = sick["Names"][0].lstrip("/")
    frozen = freeze(sick["Id"])
    try:

        def verdict() -> dict | None:
            status = host.status()["tiny"]
            replicas = {r["name"]: r for r in status["details"]["replicas"]}
            assert status["status"] == "RUNNING", status  # the other one still serves
            return replicas[sick_name] if not replicas[sick_name]["ready"] else None

        seen = wait_for(verdict, timeout=VERDICT_SECONDS, what="the frozen replica unready")
        assert (seen["serving"], seen["health"]) == (False, "unready"), seen
        others = [r for r in replicas_of(host, "tiny") if r["name"] != sick_name]
        assert [(r["ready"], r["serving"]) for r in others] == [(True, True)], others

        # The gateway's table catches up within its refresh interval; until then round robin
        # alternates between the replicas, so two answers in a row mean it has. A request that
        # went to the frozen one before that is the "first ejection"; count from here.
        failed = []

        def two_in_a_row() -> bool:
            answers = [call(url, 1) for _ in range(2)]
            failed.extend(a for a in answers if not a or a[0] != 200)
            return all(a and a[0] == 200 for a in answers)

        wait_for(two_in_a_row, timeout=15, what="the gateway to leave the frozen replica out")
        assert len(failed) <= 2, failed
        print("unanswered before the table caught up:", len(failed), json.dumps(seen))
        answers = [call(url, 5) for _ in range(50)]
        assert [a and a[0] for a in answers] == [200] * 50, answers
        assert len({a[2] for a in answers}) == 1  # all from the replica that answers
        assert answers[0][2] in hosts
    finally:
        resume(frozen)
    wait_for(lambda: all_ready(host, "tiny", 2), timeout=VERDICT_SECONDS, what="both ready again")
