"""A readiness endpoint that answers slowly on command (issue 15): the model server here is
busybox httpd with a CGI readiness script that sleeps 5 s while /tmp/slow exists, longer than
the health check allows (timeoutSeconds + 1 s). Touching /tmp/slow makes the RUNNING deployment
PENDING ("no replica ready: ...") and its replica unready; removing it makes it RUNNING again by
itself, in the same container (Settings' unreadyRestartSeconds: 0, so nothing restarts it)."""

from __future__ import annotations

import pytest

from tests.engine_support import TINY_TEMPLATE, configuration, deployment, docs, settings, wait_for

pytestmark = pytest.mark.engine

PROBE = (
    "    readinessProbe:\n"
    "      {path: /cgi-bin/ready, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1}\n"
)

# httpd itself is the container's main process (exec), answering /cgi-bin/ready via the script.
SLOW_COMMAND = """\
      - >-
        mkdir -p /www/cgi-bin;
        printf '#!/bin/sh\\nif test -f /tmp/slow; then sleep 5; fi\\nprintf
        "Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nready\\\\n"\\n' >/www/cgi-bin/ready;
        chmod +x /www/cgi-bin/ready; echo serving; exec httpd -f -p 8080 -h /www
"""


def _template() -> str:
    start = TINY_TEMPLATE.index("      - >-\n")
    end = TINY_TEMPLATE.index("    env:\n")
    template = TINY_TEMPLATE[:start] + SLOW_COMMAND + TINY_TEMPLATE[end:]
    template = template.replace("    startupTimeout: 30\n", "    startupTimeout: 30\n" + PROBE)
    assert PROBE in template and "/tmp/slow" in template
    return template


def _replica_healths(status: dict) -> list[str]:
    replicas = (status.get("details") or {}).get("replicas") or []
    return [r.get("health") for r in replicas if isinstance(r, dict)]


def _exec(host, cid: str, *cmd: str) -> None:
    run = host.client.exec_create(cid, list(cmd))
    host.client.exec_start(run["Id"])
    assert host.client.exec_inspect(run["Id"])["ExitCode"] == 0, cmd


def test_a_slow_readiness_answer_is_pending_until_it_answers_in_time(host):
    host.write(_template(), "templates/tiny.yaml")
    host.write(settings(host.instance, "  unreadyRestartSeconds: 0\n"), "manifests/settings.yaml")
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    cid = host.container_of("tiny")["Id"]
    check = host.client.inspect_container(cid)["Config"]["Healthcheck"]
    assert "/cgi-bin/ready" in check["Test"][1], check

    def container_health() -> str:
        state = host.client.inspect_container(cid)["State"]
        return (state.get("Health") or {}).get("Status", "")

    def status() -> dict:
        return host.status().get("tiny", {})

    wait_for(lambda: container_health() == "healthy", timeout=30, what="healthy container")
    wait_for(lambda: status().get("status") == "RUNNING", timeout=30, what="RUNNING")

    _exec(host, cid, "touch", "/tmp/slow")
    seen = wait_for(
        lambda: (s := status()).get("status") == "PENDING" and s,
        timeout=30,
        what="PENDING while the readiness answer is slow",
    )
    assert (seen.get("statusMessage") or "").startswith("no replica ready:"), seen
    assert _replica_healths(seen) == ["unready"], seen
    assert container_health() == "unhealthy"
    log = host.client.inspect_container(cid)["State"]["Health"]["Log"]
    assert any("exceeded timeout" in (e.get("Output") or "") for e in log), log

    _exec(host, cid, "rm", "/tmp/slow")
    back = wait_for(
        lambda: (s := status()).get("status") == "RUNNING" and s,
        timeout=30,
        what="RUNNING again once the answer is quick",
    )
    assert _replica_healths(back) == ["ready"], back
    assert host.container_of("tiny")["Id"] == cid  # the same container: nothing restarted it
    assert host.client.inspect_container(cid)["RestartCount"] == 0
