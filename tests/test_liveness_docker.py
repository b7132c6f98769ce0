"""Liveness restarts on the real engine: a frozen model server, unready beyond Settings'
unreadyRestartSeconds, shows in `plan` as a restart with its cause, and `reconcile` replaces
it with a container that serves."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from tests.engine_support import (
    TINY_TEMPLATE,
    configuration,
    deployment,
    docs,
    http_get,
    settings,
    wait_for,
)

pytestmark = pytest.mark.engine

# A check every second that fails at once, so that the hang is seen within seconds.
PROBE = "    readinessProbe: {periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1}\n"


def _health(host, cid: str) -> str:
    return ((host.client.inspect_container(cid)["State"] or {}).get("Health") or {}).get("Status")


def test_a_frozen_server_is_restarted_after_unready_restart_seconds(host):
    template = TINY_TEMPLATE.replace("    startupTimeout: 30\n", "    startupTimeout: 30\n" + PROBE)
    assert PROBE in template
    host.write(template, "templates/tiny.yaml")
    host.write(settings(host.instance, "  unreadyRestartSeconds: 3\n"), "manifests/settings.yaml")
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    cid = host.container_of("tiny")["Id"]
    wait_for(lambda: _health(host, cid) == "healthy", timeout=30, what="the container healthy")
    # Freeze every process of the container: the port stays open, nothing answers.
    pids = [int(p[1]) for p in host.client.top(cid, ps_args="-o user,pid")["Processes"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:

        def restart() -> dict | None:
            changes = host.plan()["changes"]
            return next((c for c in changes if "unready for" in c["cause"]), None)

        change = wait_for(restart, timeout=45, what="plan to show the liveness restart")
        assert change["action"] == "replace", change
        assert "(unreadyRestartSeconds 3)" in change["cause"], change
        assert change["cause"].startswith("replica 0 unready for "), change
        host.reconcile()
    finally:
        for pid in pids:  # the container may be gone already: then so are its processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    new = host.container_of("tiny")
    assert new["Id"] != cid and new["State"] == "running"
    assert host.status()["tiny"]["status"] == "RUNNING"
    port = next(p["PublicPort"] for p in new["Ports"] if p.get("PublicPort"))
    code, _ = http_get(f"http://127.0.0.1:{port}/v2/health/ready")
    assert code == 200
    # The restore counts toward the crash-loop rule.
    (record,) = host.snapshot()["deployments"].values()
    assert record["restores"] == 1
