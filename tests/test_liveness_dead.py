"""Liveness crash loop on the real engine: a model server that always stops answering a few
seconds after it starts is restarted each time it stays unready beyond Settings'
unreadyRestartSeconds (with backoff), and after RESTORE_LIMIT restores the deployment is DEAD
("crash loop: ... unready ...") with the server's last log lines kept."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest

from tests.engine_support import TINY_TEMPLATE, configuration, deployment, docs, settings

pytestmark = pytest.mark.engine

PROBE = "    readinessProbe: {periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1}\n"

# httpd itself (the process that answers HTTP) is started here and frozen after 3 s; /bin/serve
# would run httpd as a child of its own shell, so freezing serve would not stop the answers.
HANGING_COMMAND = """\
      - >-
        mkdir -p /www/v2/health; echo '{"ready": true}' >/www/v2/health/ready;
        httpd -f -p 8080 -h /www & h=$!; echo "serving; will hang"; sleep 3;
        echo hanging now; kill -STOP $h; wait
"""


def _template() -> str:
    start = TINY_TEMPLATE.index("      - >-\n")
    end = TINY_TEMPLATE.index("    env:\n")
    template = TINY_TEMPLATE[:start] + HANGING_COMMAND + TINY_TEMPLATE[end:]
    template = template.replace("    startupTimeout: 30\n", "    startupTimeout: 30\n" + PROBE)
    assert PROBE in template and "kill -STOP" in template
    return template


def _thaw(host) -> None:
    """SIGCONT every process of the instance's running containers, so removal is quick."""
    for c in host.containers(all=False):
        with contextlib.suppress(Exception):
            for p in host.client.top(c["Id"], ps_args="-o user,pid")["Processes"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(p[1]), signal.SIGCONT)


def test_a_server_that_always_hangs_ends_dead_with_its_logs(host):
    host.write(_template(), "templates/tiny.yaml")
    host.write(settings(host.instance, "  unreadyRestartSeconds: 2\n"), "manifests/settings.yaml")
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    passes: list[str] = []
    try:
        deadline = time.monotonic() + 120
        status: dict = {}
        while True:
            result = host.cli("reconcile")
            passes.append(f"rc={result.code}\n{result.out}{result.err}")
            status = host.status().get("tiny", {})
            if status.get("status") == "DEAD":
                break
            assert time.monotonic() < deadline, (
                f"not DEAD within 120 s; last status {status}; passes:\n" + "\n".join(passes[-6:])
            )
            time.sleep(0.2)  # a pass that returned early: poll again soon
        message = status.get("statusMessage") or ""
        assert message.startswith("crash loop:"), status
        assert "unready" in message, status
        # The frozen server's last lines are kept with the failure.
        logs = host.cli("logs", "tiny")
        assert logs.code == 0, logs.err
        assert "hanging now" in logs.out, logs.out
        (record,) = host.snapshot()["deployments"].values()
        kept = record.get("last_logs") or record.get("lastLogs") or []
        assert any("hanging now" in line for line in kept), json.dumps(record, indent=2)
        # Nothing of it keeps running.
        assert not host.containers(all=False), host.containers(all=False)
    finally:
        _thaw(host)
        host.cleanup()
