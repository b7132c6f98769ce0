"""The Swarm backend's service spec and its reading of Swarm's JSON: no engine.

Specs are built from a real desired state (a GitOps root under tmp_path); tasks and nodes are
Swarm's own shapes (`docker inspect` of a task, a node), trimmed to what the backend reads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from reconciler.backends import labels as L
from reconciler.backends.base import ConvergeFailed, Intent, Replica
from reconciler.backends.swarm import parse as P
from reconciler.backends.swarm.service import SERVICE_DIGEST, digest, service_spec
from reconciler.manifests.desired import DesiredDeployment, desired_state
from reconciler.manifests.spec import Identity
from tests.plan_support import (
    HASHING,
    IMAGE_ID,
    INSTANCE,
    TEMPLATES,
    Root,
    configuration,
    deployment,
)

GIB = 1024**3
NS = 1_000_000_000
SETTINGS_CONSTRAINTS = ("node.role != manager", "node.labels.zone==a")
GPU_PLAN = """
apiVersion: reconciler/v1
kind: ResourcePlan
metadata: {name: gpu.a100}
spec: {cpus: 2.5, memory: 4Gi, gpus: 2, constraints: ["node.labels.gpu==a100"]}
"""


def template(restart: str, extra: str) -> str:
    return (
        TEMPLATES
        + f"""
---
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: swarm-serving
spec:
  scenarioId: echo
  inputs:
    parameters:
      - {{name: plan, default: starter}}
  container:
    image: "echo/server:1"
    env:
      GREETING: hello
    port: 9000
    startupTimeout: 120
    replicas: 2
    resourcePlan: "{{{{ inputs.parameters.plan }}}}"
    restartPolicy: "{restart}"
    {extra}
"""
    )


@dataclass(frozen=True)
class Made:
    d: DesiredDeployment
    identity: Identity
    intent: Intent
    settings_constraints: tuple[str, ...]

    def spec(self) -> dict[str, Any]:
        # The image named by its id, as the backend names it once resolved.
        return service_spec(
            self.intent, self.identity, IMAGE_ID, IMAGE_ID, self.settings_constraints
        )


Build = Callable[..., Made]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """A deployment of `swarm-serving` declared in a GitOps root whose Settings carry engine
    constraints, and the Intent a pass hands the backend for it."""
    cache: dict[tuple[str, str, str], Made] = {}

    def make(plan: str = "starter", restart: str = "unless-stopped", extra: str = "") -> Made:
        key = (plan, restart, extra)
        if key not in cache:
            path = tmp_path_factory.mktemp("root")
            Root(path, templates=template(restart, extra)).declare(
                GPU_PLAN,
                configuration("tiny-v1", executable="swarm-serving", plan=plan),
                deployment("tiny", "tiny-v1"),
            )
            listed = ", ".join(f'"{c}"' for c in SETTINGS_CONSTRAINTS)
            (path / "manifests/settings.yaml").write_text(
                "apiVersion: reconciler/v1\nkind: Settings\nmetadata:\n  name: host\nspec:\n"
                f"  instance: {INSTANCE}\n  engine:\n    kind: swarm\n    constraints: [{listed}]\n"
            )
            desired = desired_state(path)
            d = desired.deployments[0]
            identity = d.spec.identity(IMAGE_ID, HASHING)
            intent = Intent(
                d,
                identity.config_hash,
                HASHING,
                INSTANCE,
                str(path),
                "c0ffee",
                "",
                replicas=d.spec.replicas,
            )
            cache[key] = Made(d, identity, intent, desired.repo.settings.engine.constraints)
        return cache[key]

    return make


# -- the service spec ---------------------------------------------------------------------------


def test_a_deployment_is_one_service_of_its_replicas_with_reserved_resources(build: Build) -> None:
    made = build()
    spec = made.spec()
    task, container = spec["TaskTemplate"], spec["TaskTemplate"]["ContainerSpec"]
    assert spec["Name"] == f"{INSTANCE}_{made.d.id}" == f"plan-test_{made.d.id}"
    assert container["Image"] == IMAGE_ID  # by id: no node resolves a tag
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    starter = {"NanoCPUs": 1 * NS, "MemoryBytes": 3 * GIB}
    assert task["Resources"] == {"Limits": starter, "Reservations": starter}
    assert spec["UpdateConfig"]["Order"] == spec["RollbackConfig"]["Order"] == "start-first"
    assert spec["UpdateConfig"]["FailureAction"] == "rollback"
    # Host mode, and Swarm picks the host port per task: no PublishedPort.
    assert spec["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 9000, "PublishMode": "host"}
    ]
    assert task["Placement"] == {"Constraints": sorted(SETTINGS_CONSTRAINTS)}
    assert container["Env"] == ["GREETING=hello"]
    for labels in (spec["Labels"], container["Labels"]):
        assert labels[L.CONFIG_HASH] == made.identity.config_hash
        assert labels[L.DEPLOYMENT_ID] == made.d.id and labels[L.PORT] == "9000"
        assert labels[L.IMAGE_ID] == IMAGE_ID and labels[L.REVISION] == "c0ffee"
    assert spec["Labels"][SERVICE_DIGEST] == digest(spec)
    assert SERVICE_DIGEST not in container["Labels"]


def test_the_readiness_probe_is_the_health_check_with_the_startup_timeout_as_start_period(
    build: Build,
) -> None:
    check = build().spec()["TaskTemplate"]["ContainerSpec"]["Healthcheck"]
    assert check["Test"][0] == "CMD-SHELL"
    assert "http://127.0.0.1:9000/v2/health/ready" in check["Test"][1]
    assert check["StartPeriod"] == 120 * NS
    assert (check["Interval"], check["Timeout"], check["Retries"]) == (10 * NS, 2 * NS, 3)


def test_a_gpu_plan_reserves_generic_gpus_stops_first_and_adds_its_constraints(
    build: Build,
) -> None:
    spec = build(plan="gpu.a100").spec()
    task = spec["TaskTemplate"]
    plan = {"NanoCPUs": int(2.5 * NS), "MemoryBytes": 4 * GIB}
    assert task["Resources"] == {
        "Limits": plan,
        "Reservations": {
            **plan,
            "GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}],
        },
    }
    # Start-first would hold twice the GPUs for a moment.
    assert spec["UpdateConfig"]["Order"] == spec["RollbackConfig"]["Order"] == "stop-first"
    assert task["Placement"]["Constraints"] == sorted(
        [*SETTINGS_CONSTRAINTS, "node.labels.gpu==a100"]
    )


@pytest.mark.parametrize(
    ("policy", "condition"),
    [("unless-stopped", "any"), ("always", "any"), ("on-failure", "on-failure"), ("no", "none")],
)
def test_the_restart_policy_maps_to_swarms_with_bounded_attempts(
    build: Build, policy: str, condition: str
) -> None:
    restart = build(restart=policy).spec()["TaskTemplate"]["RestartPolicy"]
    assert restart["Condition"] == condition
    assert 0 < restart["MaxAttempts"] <= 10 and restart["Delay"] > 0


def test_all_gpus_cannot_be_scheduled_on_swarm(build: Build) -> None:
    with pytest.raises(ConvergeFailed, match="tiny: gpus 'all' cannot be scheduled on Swarm"):
        build(extra="gpus: -1").spec()


# -- the digest of a service as made ------------------------------------------------------------


def as_swarm_keeps(spec: dict[str, Any]) -> dict[str, Any]:
    """`Spec` of `docker service inspect` for a service created from `spec`: Swarm's defaults
    added, empty members written as zeros, constraints in another order."""
    live = copy.deepcopy(spec)
    task = live["TaskTemplate"]
    task["ContainerSpec"]["Isolation"] = "default"
    task["ContainerSpec"].pop("Mounts", None)  # empty: omitted
    task["ForceUpdate"] = 0
    task["Runtime"] = "container"
    task["Resources"]["Limits"]["Pids"] = 0
    task["Resources"]["Reservations"].setdefault("GenericResources", [])
    task["RestartPolicy"]["Window"] = 0
    task["Placement"]["Constraints"].reverse()
    task["Placement"]["Platforms"] = [{"Architecture": "amd64", "OS": "linux"}]
    live["UpdateConfig"]["Monitor"] = 5 * NS
    return live


@pytest.mark.parametrize("plan", ["starter", "gpu.a100"])
def test_the_digest_reads_a_service_as_swarm_keeps_it_as_made(build: Build, plan: str) -> None:
    spec = build(plan=plan).spec()
    live = as_swarm_keeps(spec)
    assert digest(live) == digest(spec) == spec["Labels"][SERVICE_DIGEST]
    assert not P.changed_by_hand({"ID": "svc1", "Spec": live})
    assert not P.changed_by_hand({"Spec": {"Name": "not-ours", "Labels": {}}})


Edit = Callable[[dict[str, Any]], None]
EDITS: dict[str, Edit] = {  # what `docker service update` would change
    "env-add": lambda s: s["TaskTemplate"]["ContainerSpec"]["Env"].append("DEBUG=1"),
    "image": lambda s: s["TaskTemplate"]["ContainerSpec"].update(Image="echo/server:2"),
    "replicas": lambda s: s["Mode"]["Replicated"].update(Replicas=5),
    "constraint-add": lambda s: s["TaskTemplate"]["Placement"]["Constraints"].append("node.id==b"),
    "limit-memory": lambda s: s["TaskTemplate"]["Resources"]["Limits"].update(MemoryBytes=GIB),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_a_service_edited_by_hand_reads_differently(build: Build, edit: Edit) -> None:
    spec = build().spec()
    live = as_swarm_keeps(spec)
    edit(live)
    assert digest(live) != digest(spec)
    assert P.changed_by_hand({"Spec": live})


def test_empty_args_read_back_as_swarm_keeps_them(build: Build) -> None:
    spec = build(extra="args: []").spec()
    assert spec["TaskTemplate"]["ContainerSpec"]["Args"] == []
    live = as_swarm_keeps(spec)
    del live["TaskTemplate"]["ContainerSpec"]["Args"]  # what `docker service inspect` shows
    assert not P.changed_by_hand({"Spec": live})


# -- tasks and nodes as Swarm reports them ------------------------------------------------------


def node(
    node_id: str, hostname: str, addr: str, state: str = "ready", generic: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "ID": node_id,
        "Description": {"Hostname": hostname, "Resources": {"GenericResources": generic or []}},
        "Status": {"State": state, "Addr": addr},
        "Spec": {"Role": "worker", "Availability": "active"},
    }


NODES = P.parse_nodes(
    [node("n1", "node-a", "10.0.0.11"), node("n2", "node-b", "10.0.0.12", "down")]
)


def task(
    made: Made,
    task_id: str,
    *,
    slot: int = 1,
    state: str = "running",
    desired: str = "running",
    created: str = "2026-12-03T14:00:00.123456789Z",
    node_id: str = "n1",
    exit_code: int = 0,
    err: str = "",
    config_hash: str | None = None,
    gpus: tuple[str, ...] = (),
) -> dict[str, Any]:
    labels = dict(made.spec()["TaskTemplate"]["ContainerSpec"]["Labels"])
    if config_hash is not None:
        labels[L.CONFIG_HASH] = config_hash
    # Swarm's pick of a host port for the task (host mode), once it runs.
    port = {"TargetPort": 9000, "PublishedPort": 30000 + slot, "PublishMode": "host"}
    return {
        "ID": task_id,
        "ServiceID": "svc1",
        "Slot": slot,
        "NodeID": node_id,
        "CreatedAt": created,
        "DesiredState": desired,
        "Status": {
            "Timestamp": "2026-12-03T14:00:30.5Z",
            "State": state,
            "Message": state,
            "Err": err,
            "ContainerStatus": {"ContainerID": "c" * 64, "ExitCode": exit_code},
            "PortStatus": {"Ports": [{**port, "Protocol": "tcp"}] if state == "running" else []},
        },
        "Spec": {"ContainerSpec": {"Image": IMAGE_ID, "Labels": labels}},
        "AssignedGenericResources": [
            {"NamedResourceSpec": {"Kind": "gpu", "Value": g}} for g in gpus
        ],
    }


def service(made: Made, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ID": "svc1", "Spec": spec if spec is not None else made.spec()}


def parse_all(made: Made, chosen: list[tuple[Any, int]]) -> list[Replica]:
    return [P.parse_task(t, service(made), NODES, before) for t, before in chosen]


def test_a_running_task_is_a_ready_replica_at_its_nodes_address(build: Build) -> None:
    made = build()
    r = P.parse_task(task(made, "t1", slot=2, gpus=("GPU-1",)), service(made), NODES)
    assert (r.id, r.name, r.replica) == ("t1", f"{INSTANCE}_{made.d.id}.2", 1)
    assert (r.state, r.health, r.running, r.alive) == ("running", "ready", True, True)
    assert (r.host_ip, r.host_port, r.container_port) == ("10.0.0.11", 30002, 9000)
    assert r.node == "node-a" and r.gpus == ("GPU-1",) and r.image == IMAGE_ID
    assert r.config_hash == made.identity.config_hash and r.deployment_id == made.d.id
    assert r.exit_code is None and r.restarts == 0
    assert r.created == 1796306400 and r.started == pytest.approx(1796306430.5)


def test_a_task_on_its_way_is_starting(build: Build) -> None:
    made = build()
    pending = task(made, "t1", state="pending", node_id="", err="no suitable node (1 node)")
    r = P.parse_task(pending, service(made), NODES)
    assert (r.state, r.health, r.alive, r.running) == ("starting", "starting", True, False)
    assert r.health_detail == "no suitable node (1 node)" and r.host_port is None
    assert r.exit_code is None and r.node == ""


def test_a_start_first_update_lists_the_old_and_the_new_task_of_a_slot(build: Build) -> None:
    made = build()
    old = task(made, "old", config_hash="0" * 64, created="2026-12-03T13:00:00.5Z")
    new = task(made, "new", state="starting", created="2026-12-03T14:00:00.25Z")
    other = task(made, "other", slot=2)
    chosen = P.current_tasks([old, new, other])
    assert sorted((t["ID"], n) for t, n in chosen) == [("new", 0), ("old", 0), ("other", 0)]
    seen = sorted((r.id, r.replica, r.state) for r in parse_all(made, chosen))
    assert seen == [("new", 0, "starting"), ("old", 0, "running"), ("other", 1, "running")]


def test_a_slot_whose_restarts_are_spent_is_one_exited_replica(build: Build) -> None:
    made = build()

    def failed(task_id: str, minute: int, code: int, **more: Any) -> dict[str, Any]:
        when, err = f"2026-12-03T14:{minute:02}:00.5Z", f"task: non-zero exit ({code})"
        dead: dict[str, Any] = {
            "state": "failed",
            "desired": "shutdown",
            "exit_code": code,
            "err": err,
        }
        return task(made, task_id, created=when, **dead, **more)

    tasks = [
        failed("f1", 1, 1),
        failed("f3", 3, 3),  # the newest: what the planner sees
        failed("f2", 2, 2),
        failed("before", 0, 9, config_hash="0" * 64),  # another configuration's
    ]
    chosen = P.current_tasks(tasks)
    assert [(t["ID"], n) for t, n in chosen] == [("f3", 2)]
    [r] = parse_all(made, chosen)
    assert (r.state, r.exit_code, r.restarts, r.alive) == ("exited", 3, 2, False)
    assert r.health == "" and "non-zero exit (3)" in r.status
    assert r.describe_state() == "exited with code 3"
    # While Swarm still restarts the slot, its replacement waits out the delay: starting.
    again = task(made, "f4", state="ready", desired="ready", created="2026-12-03T14:03:01Z")
    [r] = parse_all(made, P.current_tasks([*tasks, again]))
    assert (r.id, r.restarts, r.state, r.exit_code) == ("f4", 3, "starting", None)


def test_tasks_shut_down_on_purpose_are_not_listed(build: Build) -> None:
    made = build()
    scaled_down = task(made, "s3", slot=3, state="shutdown", desired="shutdown")
    replaced = task(made, "r1", state="shutdown", desired="shutdown", created="2026-12-03T13:00Z")
    completed = task(made, "c2", slot=2, state="complete", desired="shutdown", exit_code=0)
    listed = P.current_tasks([scaled_down, replaced, completed, task(made, "t1")])
    assert [t["ID"] for t, _ in listed] == ["t1"]
    assert P.current_tasks([scaled_down, completed]) == []


def test_a_running_task_on_a_node_that_is_down_is_unready(build: Build) -> None:
    made = build()
    r = P.parse_task(task(made, "t1", node_id="n2"), service(made), NODES)
    assert (r.state, r.health) == ("running", "unready")
    assert "node-b" in r.health_detail and "down" in r.health_detail
    assert r.node == "node-b" and r.host_ip == "10.0.0.12"


def test_the_tasks_of_a_service_edited_by_hand_read_as_another_configuration(
    build: Build,
) -> None:
    made = build()
    live = as_swarm_keeps(made.spec())
    assert P.parse_task(task(made, "t1"), service(made, live), NODES).config_hash == (
        made.identity.config_hash
    )
    EDITS["env-add"](live)
    r = P.parse_task(task(made, "t1"), service(made, live), NODES)
    assert r.config_hash != made.identity.config_hash
    assert "swarm service edited by hand" in r.fields
    assert set(made.identity.digests) <= set(r.fields)  # the labels' own fields kept


def test_nodes_count_named_and_discrete_gpus() -> None:
    generic = [
        {"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-1"}},
        {"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-2"}},
        {"DiscreteResourceSpec": {"Kind": "gpu", "Value": 4}},
        {"NamedResourceSpec": {"Kind": "fpga", "Value": "F-1"}},
        {"DiscreteResourceSpec": {"Kind": "ssd", "Value": 7}},
    ]
    nodes = P.parse_nodes([node("n9" * 10, "big", "10.0.0.9", generic=generic)])
    assert nodes["n9" * 10] == P.Node("n9" * 10, "big", "10.0.0.9", "ready", "active", "worker", 6)
    assert NODES["n1"].gpus == 0 and NODES["n2"].state == "down"


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("2026-12-03T14:00:00.123456789Z", 1796306400.123456789),
        ("2026-12-03T14:00:00Z", 1796306400.0),
        ("2026-12-03T14:00:00.5Z", 1796306400.5),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
    ],
)
def test_swarms_times_are_unix_seconds(stamp: str | None, seconds: float | None) -> None:
    assert P.unix_time(stamp) == (None if seconds is None else pytest.approx(seconds, abs=1e-6))
