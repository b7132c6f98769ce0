"""Autoscaling on the real engine, through a real `reconciler serve` (issue 17).

The model server is busybox httpd with a CGI script, /cgi-bin/work?S, that answers after S
seconds: the load (requests in flight) is whatever the test makes it. The template's
annotations shorten Knative's windows so that a test takes seconds: a 6 s stable window and a
2 s grace period before the last replica goes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.engine_support import (
    Host,
    Server,
    configuration,
    deployment,
    docs,
    free_port,
    request,
    settings,
    wait_for,
)
from tests.test_ai_api import add_client
from tests.test_auth_security import token

pytestmark = pytest.mark.engine

WORK_TEMPLATE = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: work-serving
  annotations:
    autoscaling.knative.dev/metric: concurrency
    autoscaling.knative.dev/target: "1"
    autoscaling.knative.dev/target-utilization-percentage: "100"
    autoscaling.knative.dev/window: 6s
    autoscaling.knative.dev/scale-to-zero-grace-period: 2s
spec:
  scenarioId: work
  inputs:
    parameters:
      - {name: min, default: "1"}
      - {name: max, default: "3"}
  container:
    image: reconciler-test/busybox:2
    command:
      - sh
      - -c
      - >-
        mkdir -p /www/cgi-bin;
        printf '#!/bin/sh\\nsleep "${QUERY_STRING:-0}"\\nprintf "Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n"\\nhostname\\n'
        >/www/cgi-bin/work; chmod +x /www/cgi-bin/work; exec /bin/serve
    env:
      READY_DELAY: "1"  # it listens 1 s after the start, as a model server loads its model
    replicas: "{{ inputs.parameters.min }}"
    maxReplicas: "{{ inputs.parameters.max }}"
    startupTimeout: 30
    stopTimeout: 2
"""


def _root(tmp_path: Path, docker_client) -> tuple[Host, int]:
    """A GitOps root with the work template, on an instance of its own, whose deployment URLs
    are those of a serve on the port returned."""
    root = tmp_path / "repo"
    (root / "manifests").mkdir(parents=True)
    (root / "templates").mkdir()
    (root / "templates/work.yaml").write_text(WORK_TEMPLATE)
    port = free_port()
    instance = f"t{time.monotonic_ns() % 10**10}"
    (root / "manifests/settings.yaml").write_text(
        settings(instance, f"  apiUrl: http://127.0.0.1:{port}\n")
    )
    return Host(root, instance, docker_client), port


def _host(tmp_path: Path, docker_client, *serve_args: str) -> tuple[Host, Server]:
    host, port = _root(tmp_path, docker_client)
    return host, Server(host.root, "--no-auth", *serve_args, port=port)


def _declare(host: Host, low: int, high: int) -> None:
    config = configuration("work-cfg", "work-serving", "work", min=str(low), max=str(high))
    host.write(docs(config, deployment("work", "work-cfg")))


def _running(host: Host) -> int:
    return sum(1 for c in host.containers(all=False) if c["State"] == "running")


class Load:
    """`clients` threads asking /cgi-bin/work?seconds in a loop until stopped."""

    def __init__(self, url: str, clients: int, seconds: float) -> None:
        self.url = f"{url}/cgi-bin/work?{seconds}"
        self.codes: Counter[int] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                code = request(self.url, timeout=30)[0]
            except OSError:
                code = -1
            with self._lock:
                self.codes[code] += 1

    def stop(self) -> Counter[int]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)
        return self.codes


def test_replicas_follow_the_load_within_the_bounds_and_reconcile_keeps_them(
    tmp_path, docker_client
):
    host, server = _host(tmp_path, docker_client)
    try:
        _declare(host, 1, 3)
        host.reconcile()
        assert _running(host) == 1
        dep = host.status()["work"]
        url = dep["deploymentUrl"]
        assert dep["details"]["scaling"]["backendDetails"]["predictor"]["maxReplicas"] == 3

        load = Load(url, clients=6, seconds=1)
        try:
            # 6 requests in flight against a target of 1 per replica: up to maxReplicas 3.
            wait_for(lambda: _running(host) == 3, timeout=40, what="3 replicas under load")
            most = 3
            until = time.monotonic() + 4
            while time.monotonic() < until:
                most = max(most, _running(host))
                time.sleep(0.1)
            assert most == 3, f"{most} replicas: maxReplicas is 3"
            scaling = host.status()["work"]["details"]["scaling"]
            assert scaling["desiredReplicas"] == 3 and scaling["currentReplicas"] == 3, scaling
            assert "over" in scaling["lastScaleReason"], scaling  # the autoscaler's reason

            # The count is runtime state: a reconcile during autoscaling changes nothing.
            assert host.plan()["changes"] == []
            assert "Plan: no changes." in host.reconcile().out
            assert _running(host) == 3

            # A change of the bounds in git takes effect, and the autoscaler keeps to it.
            _declare(host, 1, 2)
            planned = host.plan()["changes"]
            assert [c["cause"] for c in planned] == ["replicas 3 → 2"], planned
            host.reconcile()
            assert _running(host) == 2
            until = time.monotonic() + 7  # (it reads the bounds again after the pass)
            while time.monotonic() < until:
                assert _running(host) <= 2
                time.sleep(0.2)
        finally:
            codes = load.stop()
        assert set(codes) == {200}, codes

        # No load: back to minReplicas once the 6 s window has passed.
        wait_for(lambda: _running(host) == 1, timeout=30, what="scale down to 1")
        assert host.status()["work"]["status"] == "RUNNING"
    finally:
        server.stop()
        host.cleanup()


def test_scale_to_zero_and_the_first_request_is_held_until_a_replica_serves(
    tmp_path, docker_client
):
    host, server = _host(tmp_path, docker_client, "--max-held", "3")
    try:
        _declare(host, 0, 2)
        host.reconcile()
        assert _running(host) == 1  # a new configuration starts one (Knative's initial scale)
        dep_id = host.status()["work"]["id"]
        url = host.status()["work"]["deploymentUrl"]

        wait_for(lambda: _running(host) == 0, timeout=30, what="scale to zero after grace")
        status = host.status()["work"]
        assert status["status"] == "RUNNING", status
        scaling = status["details"]["scaling"]
        assert scaling["currentReplicas"] == 0 and scaling["desiredReplicas"] == 0, scaling
        assert "scale to zero" in scaling["lastScaleReason"], scaling
        assert host.plan()["changes"] == []  # zero is not drift
        assert status["statusMessage"] == "scaled to zero: the first request starts a replica"
        table = host.cli("status").out
        assert "0/0 (0-2)" in table and "RUNNING" in table, table
        metrics = request(f"{server.base}/metrics")[2].decode()
        assert f'reconciler_deployment_replicas{{deployment="{dep_id}",kind="desired"}} 0.0' in (
            metrics
        ), metrics
        assert f'reconciler_deployment_replicas{{deployment="{dep_id}",kind="max"}} 2.0' in (
            metrics
        ), metrics

        # The first request is held while one replica starts, then answered: no retry.
        time.sleep(1)  # (the routing table has caught up: no replica is listed)
        started = time.monotonic()
        code, _, body = request(f"{url}/cgi-bin/work?0", timeout=60)
        took = time.monotonic() - started
        assert code == 200, body
        assert _running(host) == 1
        print(f"first request after zero answered in {took:.2f}s")

        wait_for(lambda: _running(host) == 0, timeout=30, what="scale to zero again")
        time.sleep(1)  # the routing table, read twice a second, has no replica left either
        created_before = len(host.containers())
        wakes_before = server.log.read_text().count("a request came while scaled to zero")
        # A burst: 3 held (the bound), the rest 503 with Retry-After at once; one cold start.
        results: list[tuple[int, str | None]] = []
        lock = threading.Lock()

        def ask() -> None:
            code, headers, _ = request(f"{url}/cgi-bin/work?0", timeout=60)
            with lock:
                results.append((code, headers.get("Retry-After")))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        codes = Counter(code for code, _ in results)
        assert codes == {200: 3, 503: 5}, results
        assert all(after for code, after in results if code == 503), results
        log = server.log.read_text()
        assert log.count("a request came while scaled to zero") == wakes_before + 1, log
        assert len(host.containers()) - created_before <= 2  # maxReplicas: the load may ask 2
        assert f"scale work ({dep_id}): 0 → 1 replicas: a request came while scaled to zero" in log
    finally:
        server.stop()
        host.cleanup()


def test_only_a_caller_allowed_to_use_a_deployment_wakes_it_from_zero(tmp_path, docker_client):
    """A cold start costs the host a container (and maybe a GPU): a request without a valid
    token, or from a tenant of another resource group, is refused before anything starts (an
    attacker could otherwise keep every idle model loaded)."""
    host, port = _root(tmp_path, docker_client)
    root = host.root
    credentials = tmp_path / "secrets" / "clients.json"
    mine = add_client(root, credentials, "team-a", "default")
    other = add_client(root, credentials, "team-b", "other-group")
    server = Server(root, "--credentials", str(credentials), port=port)
    try:
        _declare(host, 0, 1)
        host.reconcile()
        url = host.status()["work"]["deploymentUrl"] + "/cgi-bin/work?0"
        wait_for(lambda: _running(host) == 0, timeout=30, what="scale to zero")
        time.sleep(1)

        assert request(url)[0] == 401
        assert request(url, headers={"Authorization": "Bearer forged.token.here"})[0] == 401
        theirs = {"Authorization": f"Bearer {token(port, other)}"}
        assert request(url, headers={**theirs, "AI-Resource-Group": "other-group"})[0] == 404
        assert request(url, headers=theirs)[0] in (403, 404)
        time.sleep(3)  # (a wake would have started a container by now)
        assert _running(host) == 0
        assert "a request came while scaled to zero" not in server.log.read_text()

        code, _, body = request(
            url, headers={"Authorization": f"Bearer {token(port, mine)}"}, timeout=60
        )
        assert code == 200, body
        assert _running(host) == 1
    finally:
        server.stop()
        host.cleanup()
