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


def test_a_container_that_cannot_run_its_check_is_inspected_once(docker_client):
    """An image with no probe tool is unhealthy in Docker's eyes for good; the backend reads
    why once and then remembers, instead of an inspect on every observe (twice a second in
    `serve`). Counted on the real engine's calls."""
    import uuid

    import docker

    from reconciler.backends import labels as L
    from reconciler.backends.docker.parse import NO_PROBE_TOOL

    instance = "t" + uuid.uuid4().hex[:10]
    said = f"{NO_PROBE_TOOL} (curl, wget, python3 or nc) in the image"
    container = docker.from_env().containers.run(
        "reconciler-test/busybox:2",
        ["sleep", "600"],
        labels={L.MANAGED: "true", L.INSTANCE: instance},
        healthcheck={
            "test": ["CMD-SHELL", f"echo '{said}'; exit 1"],
            "interval": 200_000_000,
            "retries": 1,
        },
        detach=True,
    )
    try:
        backend = DockerBackend(Engine.connect())
        inspected: list[str] = []
        real_inspect = backend.engine.inspect
        backend.engine.inspect = lambda cid: inspected.append(cid) or real_inspect(cid)  # type: ignore[method-assign]

        def unhealthy() -> bool:
            container.reload()
            return container.attrs["State"]["Health"]["Status"] == "unhealthy"

        wait_for(unhealthy, 30, "the check to fail")
        first = backend.observe(instance).containers[0]
        again = backend.observe(instance).containers[0]
        # No check to speak of ("", as ready as a container without one), and why.
        assert (first.health, again.health) == ("", "")
        assert first.health_detail.startswith(NO_PROBE_TOOL) and again.health_detail == said
        assert inspected == [container.id]
    finally:
        container.remove(force=True)
