"""An autoscaled replica count in the planner, without an engine (issue 17): the count is
runtime state that git does not hold, so a plan keeps what was applied, takes what the
autoscaler asks for within the manifest's bounds, and applies a change of the bounds; zero is
not drift; a scale-up takes only the GPUs that are free."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.autoscale import Decision
from reconciler.core.plan import Action
from reconciler.manifests.desired import DesiredState
from reconciler.manifests.spec import ContainerSpec
from tests.plan_support import (
    TEMPLATES,
    Root,
    configuration,
    deployment,
    lines,
    planned,
    record,
    replica,
)

SCALED = """
---
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: scaled-serving
  annotations:
    autoscaling.knative.dev/target: "4"
spec:
  scenarioId: scaled
  inputs:
    parameters:
      - {name: min, default: "1"}
      - {name: max, default: "4"}
      - {name: gpus, default: "0"}
  container:
    image: "echo/server:1"
    replicas: "{{ inputs.parameters.min }}"
    maxReplicas: "{{ inputs.parameters.max }}"
    gpus: "{{ inputs.parameters.gpus }}"
"""


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "repo", templates=TEMPLATES + SCALED)


def scaled(root: Root, inventory: tuple[str, ...] = (), **params: str) -> DesiredState:
    config = configuration("conf-s", "scaled-serving", "scaled", **params)
    return root.declare(config, deployment("scaled-api", "conf-s"), gpus=inventory)


def spec_of(desired: DesiredState) -> ContainerSpec:
    return desired.deployments[0].spec


def test_the_template_bounds_and_annotations_make_the_policy(root: Root):
    spec = spec_of(scaled(root, min="0", max="3"))
    assert (spec.replicas, spec.max_replicas, spec.autoscaled) == (0, 3, True)
    policy = spec.scaling()
    assert (policy.min_replicas, policy.max_replicas, policy.target) == (0, 3, 4.0)


def test_a_new_autoscaled_deployment_starts_minreplicas_and_one_when_that_is_zero(root: Root):
    assert one_change(scaled(root, min="2")).create == (0, 1)
    change = one_change(scaled(root, min="0"))
    assert change.create == (0,) and change.replicas == 1  # Knative's initial scale


def one_change(desired: DesiredState, *containers, **kwargs):
    p = planned(desired, *containers, **kwargs)
    assert len(p.changes) == 1, lines(p)
    return p.changes[0]


def test_the_applied_count_is_kept_and_the_autoscalers_is_taken(root: Root):
    desired = scaled(root)
    d = desired.deployments[0]
    running = [replica(d, index=i) for i in range(3)]
    rec = record(d, replicas=3)
    assert planned(desired, *running, records=[rec]).changes == ()  # not drift: runtime state

    up = Decision(4, "panic: 20 concurrency over 6s")
    change = one_change(desired, *running, records=[rec], scales={d.id: up})
    assert change.action == Action.UPDATE and change.create == (3,) and change.replicas == 4
    assert change.cause == "replicas 3 → 4 (panic: 20 concurrency over 6s)"

    down = Decision(1, "0 concurrency over 60s")
    change = one_change(desired, *running, records=[rec], scales={d.id: down})
    assert sorted(c.replica for c in change.retire) == [1, 2] and change.create == ()

    # Beyond the bounds, asked or not: within them.
    change = one_change(desired, *running, records=[rec], scales={d.id: Decision(9, "x")})
    assert change.replicas == 4


def test_a_change_of_the_bounds_in_git_takes_effect(root: Root):
    desired = scaled(root, max="4")
    d = desired.deployments[0]
    running = [replica(d, index=i) for i in range(4)]
    lowered = scaled(root, max="2")
    change = one_change(lowered, *running, records=[record(d, replicas=4)])
    assert change.cause == "replicas 4 → 2" and len(change.retire) == 2
    raised = scaled(root, min="3", max="6")
    d3 = raised.deployments[0]
    running = [replica(d3, index=i) for i in range(2)]
    change = one_change(raised, *running, records=[record(d3, replicas=2)])
    assert change.create == (2,) and change.cause == "replicas 2 → 3"


def test_zero_replicas_is_not_drift_and_a_wake_is_an_update(root: Root):
    desired = scaled(root, min="0")
    d = desired.deployments[0]
    rec = record(d, replicas=0)
    assert planned(desired, records=[rec]).changes == ()
    change = one_change(
        desired, records=[rec], scales={d.id: Decision(1, "a request came while scaled to zero")}
    )
    assert change.action == Action.UPDATE and change.create == (0,)
    assert change.cause == "replicas 0 → 1 (a request came while scaled to zero)"
    assert change.restore == 0  # not a drift restore: no crash-loop backoff


def test_a_new_configuration_while_scaled_to_zero_starts_one_replica(root: Root):
    old = scaled(root, min="0")
    rec = record(old.deployments[0], replicas=0)
    new = scaled(root, min="0", max="5")  # (the bounds are no part of the config hash)
    assert planned(new, records=[rec]).changes == ()
    image_changed = {"echo/server:1": "sha256:" + "9" * 64}
    change = one_change(new, records=[rec], images=image_changed)
    assert change.action == Action.REPLACE and change.create == (0,)
    assert change.cause == "configuration changed while scaled to zero"


def test_a_fixed_count_ignores_the_autoscaler(root: Root):
    desired = scaled(root, min="2", max="2")
    d = desired.deployments[0]
    running = [replica(d, index=i) for i in range(2)]
    p = planned(desired, *running, records=[record(d)], scales={d.id: Decision(5, "x")})
    assert p.changes == ()


def test_a_scale_up_takes_only_free_gpus_and_reports_the_rest(root: Root):
    desired = scaled(root, ("GPU-0", "GPU-1", "GPU-2"), gpus="1")
    d = desired.deployments[0]
    running = [replica(d, index=0, gpus=("GPU-0",))]
    other = replica(d, index=0, deployment_id="someone-else", gpus=("GPU-1",))
    rec = record(d, replicas=1, gpus=("GPU-0",))
    p = planned(desired, *running, other, records=[rec], scales={d.id: Decision(4, "burst")})
    change = next(c for c in p.changes if c.deployment_id == d.id)
    assert change.action == Action.UPDATE and change.failure is None  # never DEAD for this
    assert change.create == (1,) and change.gpus == ("GPU-2",) and change.replicas == 2
    unplaced = "2 replica(s) not placed: needs 1 GPU(s) each, 1 of the inventory free"
    assert change.unplaced == unplaced and change.cause.endswith(unplaced)


def test_a_scale_up_stays_within_the_hosts_memory(root: Root):
    desired = scaled(root)
    d = desired.deployments[0]
    each = d.spec.memory
    running = [replica(d, index=0)]
    rec = record(d, replicas=1)
    up = {d.id: Decision(4, "burst")}
    roomy = one_change(desired, *running, records=[rec], scales=up, memory=8 * each)
    assert roomy.create == (1, 2, 3) and roomy.unplaced is None
    # Room for one more beside the one that runs (limits count, as the host must honour them)
    tight = one_change(desired, *running, records=[rec], scales=up, memory=int(2.5 * each))
    assert tight.create == (1,) and tight.replicas == 2 and tight.failure is None
    assert tight.unplaced is not None and tight.unplaced.startswith("2 replica(s) not placed")
    assert "GiB of memory each" in tight.unplaced
    # A fixed count is the operator's explicit wish: never trimmed here.
    fixed = scaled(root, min="3", max="3")
    df = fixed.deployments[0]
    change = one_change(fixed, records=[record(df, replicas=None, status="PENDING")], memory=each)
    assert change.create == (0, 1, 2)
