"""The continuous health check on the real engine: a frozen model server is seen unready (with
what the check saw), and ready again once it answers."""

from __future__ import annotations

import os
import signal

import pytest

from reconciler.backends.docker.backend import DockerBackend
from reconciler.backends.docker.engine import Engine
from tests.engine_support import TINY_TEMPLATE, configuration, deployment, docs, wait_for

pytestmark = pytest.mark.engine

# A short period and threshold, so the test sees a hang within seconds.
PROBE = "    readinessProbe: {periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2}\n"


def test_a_frozen_server_is_unready_until_it_answers_again(host):
    template = TINY_TEMPLATE.replace("    startupTimeout: 30\n", "    startupTimeout: 30\n" + PROBE)
    assert PROBE in template
    host.write(template, "templates/tiny.yaml")
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    cid = host.container_of("tiny")["Id"]
    info = host.client.inspect_container(cid)
    check = info["Config"]["Healthcheck"]
    assert check["Test"][0] == "CMD-SHELL" and "/v2/health/ready" in check["Test"][1]
    assert (check["Interval"], check["Retries"], check["StartPeriod"]) == (10**9, 2, 30 * 10**9)

    backend = DockerBackend(Engine.connect())

    def health() -> tuple[str, str]:
        (replica,) = backend.observe(host.instance, images=False).containers
        return replica.health, replica.health_detail

    wait_for(lambda: health()[0] == "ready", timeout=30, what="the container to be healthy")
    # Freeze every process of the container (its entry script and the httpd it started): the
    # server keeps its port, the kernel still accepts connections, nothing answers.
    pids = [int(p[1]) for p in host.client.top(cid, ps_args="-o user,pid")["Processes"]]
    assert info["State"]["Pid"] in pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        seen = wait_for(lambda: (h := health())[0] == "unready" and h, timeout=30, what="unready")
        assert "timeout" in seen[1], seen  # what the check saw (Docker's words for a hang)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: health() == ("ready", ""), timeout=30, what="ready again")
