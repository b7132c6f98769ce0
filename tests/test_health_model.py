"""The real churn model server (KServe sklearn), frozen: `reconciler status --json` reports the
RUNNING deployment PENDING with `no replica ready: ...`, and RUNNING again once it answers.

The root is a copy of this repository's churn example whose template's readiness probe is
shortened to a 1 s period (the template's own default is 10 s), so the test takes seconds."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT
from tests.engine_support import Host, settings, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300, func_only=True)]

PROBE = "          readinessProbe:\n            httpGet:\n              path: /v2/health/ready\n"
SHORT = (
    PROBE
    + "            periodSeconds: 1\n            timeoutSeconds: 1\n            failureThreshold: 1\n"
)


@pytest.fixture(scope="module")
def runtime_image() -> None:
    subprocess.run(
        [PROJECT / "scripts/build-images"], check=True, capture_output=True, timeout=1800
    )


@pytest.fixture
def churn(tmp_path: Path, docker_client, runtime_image) -> Iterator[Host]:
    root = tmp_path / "repo"
    (root / "manifests").mkdir(parents=True)
    shutil.copytree(PROJECT / "templates", root / "templates")
    template = root / "templates/churn-serving.yaml"
    text = template.read_text()
    assert PROBE in text
    template.write_text(text.replace(PROBE, SHORT))
    shutil.copy(PROJECT / "manifests/churn.yaml", root / "manifests/churn.yaml")
    (root / "models").symlink_to(PROJECT / "models")
    instance = f"t{uuid.uuid4().hex[:10]}"
    (root / "manifests/settings.yaml").write_text(settings(instance))
    host = Host(root, instance, docker_client)
    yield host
    host.cleanup()


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_frozen_model_server_is_pending_until_it_answers_again(churn: Host, frozen: list[int]):
    churn.reconcile()
    assert churn.status()["churn"]["status"] == "RUNNING"
    cid = churn.container_of("churn")["Id"]
    check = churn.client.inspect_container(cid)["Config"]["Healthcheck"]
    assert "/v2/health/ready" in check["Test"][1] and check["Interval"] == 10**9, check
    wait_for(
        lambda: (
            ((churn.client.inspect_container(cid)["State"] or {}).get("Health") or {}).get("Status")
            == "healthy"
        ),
        timeout=30,
        what="the model server healthy",
    )
    frozen.extend(int(p[1]) for p in churn.client.top(cid, ps_args="-o user,pid")["Processes"])
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)

    def pending() -> dict | None:
        s = churn.status()["churn"]
        return s if s["status"] == "PENDING" else None

    seen = wait_for(pending, timeout=30, what="status PENDING")
    assert seen["statusMessage"].startswith("no replica ready:"), seen
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        lambda: churn.status()["churn"]["status"] == "RUNNING", timeout=30, what="RUNNING again"
    )
    assert churn.container_of("churn")["Id"] == cid  # the same replica, not a restart
