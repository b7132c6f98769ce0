"""`Settings.spec.engine`: which engine runs the deployments, checked by `validate` before any
engine is asked anything, and said by `status` even when the engine does not answer."""

from __future__ import annotations

import json

from reconciler.manifests.spec import UNSEALED
from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, cli
from tests.test_validate import only, problems


def settings(engine: str) -> str:
    return f"""
apiVersion: reconciler/v1
kind: Settings
metadata: {{name: cluster}}
spec:
  instance: enginetest
  engine:
{engine}"""


def repo(gitops, engine: str):
    return gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/app.yaml": ECHO_MANIFESTS,
            "manifests/settings.yaml": settings(engine),
        }
    )


def test_a_swarm_engine_with_its_nodes_validates_without_any_engine(gitops):
    root = repo(
        gitops,
        "    kind: swarm\n    host: ssh://admin@manager-1\n"
        "    nodes: [ssh://admin@gpu-1, tcp://10.0.0.12:2376]\n"
        "    constraints: ['node.labels.pool == inference']\n"
        "    placementTimeoutSeconds: 30\n",
    )
    result = cli("validate", "--root", root)
    assert result.code == 0, result.err


def test_swarm_fields_under_a_docker_engine_are_named_as_set_for_nothing(gitops):
    root = repo(gitops, "    host: unix:///var/run/docker.sock\n    nodes: [unix:///n1.sock]\n")
    found = only(cli("validate", "--root", root))
    assert found["pointer"] == "/spec/engine/nodes"
    assert "only with kind: swarm" in found["message"]


def test_an_engine_host_that_is_no_docker_host_url_is_refused(gitops):
    root = repo(gitops, "    kind: swarm\n    host: http://manager-1:2375\n")
    found = only(cli("validate", "--root", root))
    assert found["pointer"] == "/spec/engine/host"
    root = repo(gitops, "    kind: kubernetes\n")
    assert {p["pointer"] for p in problems(cli("validate", "--root", root))} == {
        "/spec/engine/kind"
    }


def test_status_names_the_engine_and_reads_unknown_when_the_manager_does_not_answer(gitops):
    root = repo(gitops, "    kind: swarm\n    host: unix:///nonexistent/manager.sock\n")
    result = cli("status", "--json", "--root", root)
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    assert shown["engine"] == {"kind": "swarm"}
    assert [d["status"] for d in shown["deployments"]] == ["UNKNOWN"]
    assert "unreachable at unix:///nonexistent/manager.sock" in result.err
    assert "Traceback" not in result.err


def test_placement_constraints_are_part_of_what_replicas_are_made_from(gitops):
    """The Settings' and the resource plan's constraints enter the spec's identity: changing
    either is a change `plan` shows (and rolls); none at all keeps the hash a spec always had."""
    from reconciler.manifests.desired import desired_state

    plain = repo(gitops, "    kind: swarm\n")
    (d,) = desired_state(plain).deployments
    assert d.spec.constraints == ()
    assert "placement" not in d.spec.identity_fields()

    placed = repo(gitops, "    kind: swarm\n    constraints: ['node.labels.zone==a']\n")
    (a,) = desired_state(placed).deployments
    assert a.spec.constraints == ("node.labels.zone==a",)
    moved = repo(gitops, "    kind: swarm\n    constraints: ['node.labels.zone==b']\n")
    (b,) = desired_state(moved).deployments
    hashes = {x.spec.identity("sha256:1", UNSEALED).config_hash for x in (d, a, b)}
    assert len(hashes) == 3
