"""Readiness and liveness probes: both template forms, their limits, the identity they are part
of, and the Docker health check made of them (no engine)."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess

import pytest

from reconciler.backends.docker.engine import health_check
from reconciler.backends.docker.parse import NO_PROBE_TOOL
from reconciler.manifests.desired import desired_state
from reconciler.manifests.spec import UNSEALED, Probe
from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE
from tests.test_render import failure, kserve_with, rendered, text_clf_manifests


def echo_with(gitops, container_lines: str):
    return gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE + container_lines,
            "manifests/echo.yaml": ECHO_MANIFESTS,
            "models/echo/model.bin": "weights",
        }
    )


def test_the_container_form_has_kubernetes_defaults_and_keeps_readiness_path(gitops):
    spec = rendered(echo_with(gitops, "    readinessPath: /healthz\n"))["spec"]
    assert spec["readinessPath"] == "/healthz"
    assert spec["readinessProbe"] == {
        "path": "/healthz",
        "port": None,
        "periodSeconds": 10,
        "timeoutSeconds": 1,
        "failureThreshold": 3,
        "successThreshold": 1,
    }
    assert spec["livenessProbe"] is None


def test_the_container_form_probes_take_placeholders_and_a_tcp_path(gitops):
    root = echo_with(
        gitops,
        "    readinessProbe:\n"
        "      path: /ready\n"
        '      port: "{{ inputs.parameters.port }}"\n'
        "      periodSeconds: 8\n"
        "      timeoutSeconds: 2\n"
        "      failureThreshold: 5\n"
        "    livenessProbe: {path: null, port: 9000, periodSeconds: 30}\n",
    )
    spec = rendered(root)["spec"]
    probe, live = spec["readinessProbe"], spec["livenessProbe"]
    assert (probe["path"], probe["periodSeconds"], probe["timeoutSeconds"]) == ("/ready", 8, 2)
    assert (probe["failureThreshold"], probe["port"], spec["readinessPath"]) == (5, 8080, "/ready")
    assert (live["path"], live["port"], live["periodSeconds"]) == (None, 9000, 30)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("    readinessProbe: {periodSeconds: 0}\n", "minimum"),
        ("    readinessProbe: {failureThreshold: 1000}\n", "maximum"),
        ('    readinessProbe: {timeoutSeconds: "{{ inputs.parameters.port }}"}\n', "at most 600"),
        ('    readinessProbe: {path: "/a\'; rm -rf /"}\n', "absolute URL path"),
        ("    readinessPath: /a\n    readinessProbe: {path: /b}\n", "give the path once"),
        ("    readinessProbe: {tcp: true}\n", "tcp"),
    ],
)
def test_the_container_forms_probes_are_checked(gitops, lines, message):
    problems = " ".join(failure(echo_with(gitops, lines)))
    assert message in problems


def kserve_root(gitops, container_extra: str):
    spec_text = "predictor:\n  containers:\n  - image: x\n" + container_extra
    template = kserve_with(spec_text).replace(
        "inputs:\n    parameters: []\n    artifacts:\n      - name: textmodel\n", "inputs: {}\n"
    )
    manifests = text_clf_manifests().replace(
        "  inputArtifactBindings:\n    - key: textmodel\n      artifactId: textmodel-1\n", ""
    )
    return gitops({"templates/t.yaml": template, "manifests/m.yaml": manifests})


def test_the_kserve_form_reads_both_probes(gitops):
    root = kserve_root(
        gitops,
        "    ports: [{containerPort: 8080, name: http}, {containerPort: 9090, name: admin}]\n"
        "    readinessProbe:\n"
        "      httpGet: {path: /v2/health/ready, port: admin}\n"
        "      periodSeconds: 5\n      timeoutSeconds: 3\n      failureThreshold: 2\n"
        "    livenessProbe:\n      tcpSocket: {port: 8080}\n      periodSeconds: 20\n",
    )
    spec = rendered(root, "text-clf")["spec"]
    assert spec["readinessProbe"] == {
        "path": "/v2/health/ready",
        "port": 9090,
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 2,
        "successThreshold": 1,
    }
    assert (spec["livenessProbe"]["path"], spec["livenessProbe"]["port"]) == (None, 8080)


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ("      periodSeconds: 0\n", "minimum"),
        ("      timeoutSeconds: 601\n", "maximum"),
        ("      httpGet: {path: 'no-slash'}\n", "does not match"),
        ("      httpGet: {path: /x, port: metrics}\n", "not the name of a container port"),
    ],
)
def test_the_kserve_forms_probes_are_checked(gitops, probe, message):
    root = kserve_root(gitops, "    readinessProbe:\n" + probe)
    (line,) = failure(root)
    assert message in line


def spec_of(gitops, lines: str = ""):
    (d,) = desired_state(echo_with(gitops, lines)).deployments
    return d.spec


def test_the_health_check_is_part_of_the_identity(gitops):
    spec = spec_of(gitops)
    before = spec.identity("sha256:1", UNSEALED)
    assert "health" in before.digests
    slower = dataclasses.replace(spec, readiness=Probe(period_seconds=30))
    after = slower.identity("sha256:1", UNSEALED)
    assert after.config_hash != before.config_hash
    assert [k for k in before.digests if before.digests[k] != after.digests[k]] == ["health"]
    # Liveness is no part of a Docker container: changing it replaces nothing.
    live = dataclasses.replace(spec, liveness=Probe(path="/live"))
    assert live.identity("sha256:1", UNSEALED) == before


def test_the_docker_health_check_probes_from_inside_with_what_the_image_has(gitops, tmp_path):
    spec = dataclasses.replace(
        spec_of(gitops),
        readiness=Probe(path="/ready?x=1&y=$HOME", period_seconds=2, failure_threshold=4),
        startup_timeout=60,
    )
    check = health_check(spec)
    kind, script = check["test"]
    assert kind == "CMD-SHELL"
    assert (check["interval"], check["timeout"], check["retries"], check["start_period"]) == (
        2 * 10**9,
        2 * 10**9,
        4,
        60 * 10**9,
    )
    url = shlex.quote("http://127.0.0.1:8080/ready?x=1&y=$HOME")
    assert f"wget -q -O /dev/null {url}" in script
    assert f"curl -fsS -m 1 -o /dev/null {url}" in script
    assert "python3 -c" in script and "no probe tool" in script
    # Run by a real shell with only a stand-in wget on the PATH: the URL arrives as one
    # argument, unexpanded, and the failure names the probe.
    wget = tmp_path / "wget"
    wget.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"; exit 4\n')
    wget.chmod(0o755)
    run = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stdout.strip() == (
        "GET http://127.0.0.1:8080/ready?x=1&y=$HOME failed (wget exit 4)"
    )
    args = (tmp_path / "wget.args").read_text().splitlines()
    assert args[-1] == "http://127.0.0.1:8080/ready?x=1&y=$HOME"
    (tmp_path / "wget").unlink()
    nothing = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert nothing.returncode == 1 and nothing.stdout.startswith(NO_PROBE_TOOL)
    tcp = health_check(dataclasses.replace(spec, readiness=Probe(path=None, port=9000)))
    assert "nc -z -w 1 127.0.0.1 9000" in tcp["test"][1] and "wget -q" not in tcp["test"][1]
