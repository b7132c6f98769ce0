"""Deployments as Docker Swarm services on a real three-node Swarm (scripts/swarm-testbed):
the churn example with two replicas, through `reconciler serve`, across a rolling update and
the loss of a worker; GPUs as generic resources; a model that cannot load; drift by hand.

The tests run in file order on one GitOps root (a module fixture): each starts from what the
one before left, as a user's Swarm would. Nodes get the runtime image from the local engine
by the backend itself (save/load), never by hand."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, cli, git
from tests.engine_support import Server, free_port, request, wait_for
from tests.swarm_support import Testbed

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600, func_only=True)]

RUNTIME = "reconciler/sklearn-runtime:1"
RECORD = {
    "region": 3, "tenure": 37, "age": 53, "address": 13, "income": 48, "employ": 10,
    "gender": 0, "equip": 0,
}  # fmt: skip
V2_REQUEST = {
    "inputs": [
        {"name": k, "shape": [1], "datatype": "INT64", "data": [v]} for k, v in RECORD.items()
    ]
}
GPU_MANIFESTS = """
apiVersion: reconciler/v1
kind: ResourcePlan
metadata: {name: gpu.one}
spec: {cpus: 0.5, memory: 1Gi, gpus: 1}
---
apiVersion: reconciler/v1
kind: ResourcePlan
metadata: {name: gpu.three}
spec: {cpus: 0.5, memory: 1Gi, gpus: 3}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: churn-gpu-one}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  parameterBindings: [{key: resourcePlan, value: gpu.one}]
  inputArtifactBindings: [{key: churnmodel, artifactId: churn-model-v1}]
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: churn-gpu-three}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  parameterBindings: [{key: resourcePlan, value: gpu.three}]
  inputArtifactBindings: [{key: churnmodel, artifactId: churn-model-v1}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: gpu-one}
spec: {configurationId: churn-gpu-one}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: gpu-three}
spec: {configurationId: churn-gpu-three}
"""
BROKEN_MANIFESTS = """
apiVersion: reconciler/v1
kind: Artifact
metadata: {name: broken-model}
spec: {kind: model, url: "file:models/broken", scenarioId: churn}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: churn-broken}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  inputArtifactBindings: [{key: churnmodel, artifactId: broken-model}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: broken}
spec: {configurationId: churn-broken}
"""


@dataclass
class Swarm:
    root: Path
    testbed: Testbed
    server: Server
    instance: str

    def commit(self, message: str) -> None:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-qm", message)

    def reconcile(self) -> Any:
        return cli("reconcile", "--root", self.root)

    def status(self) -> dict[str, Any]:
        result = cli("status", "--json", "--root", self.root)
        return json.loads(result.out)

    def deployment(self, name: str) -> dict[str, Any]:
        return next(d for d in self.status()["deployments"] if d["name"] == name)

    def url(self, name: str) -> str:
        return self.deployment(name)["deploymentUrl"]

    def services(self) -> list[Any]:
        return self.testbed.client.services.list(
            filters={"label": f"reconciler.instance={self.instance}"}
        )


def post(url: str, body: Any, timeout: float = 10.0) -> tuple[int, Any]:
    code, _, raw = request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=timeout,
    )
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, raw.decode(errors="replace")


@dataclass
class Load:
    """Predictions posted back to back through the gateway by a few clients, counted."""

    url: str
    clients: int = 2
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    answers: set[float] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        wait_for(lambda: self.ok >= 5, timeout=30, what="the first answers under load")
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                code, body = post(self.url, {"instances": [list(RECORD.values())]})
            except http.client.IncompleteRead as exc:
                code, body = -1, f"cut off: {exc!r}"
            except (OSError, http.client.HTTPException) as exc:
                code, body = 0, repr(exc)
            with self._lock:
                if code == 200:
                    self.ok += 1
                    self.answers.add(round(body["probabilities"][0][1], 6))
                else:
                    self.failures.append(f"{code} {str(body)[:200]}")

    @property
    def cut_off(self) -> list[str]:
        """Answers that broke off midway: their replica was lost while it sent them (nothing
        can send those again)."""
        return [f for f in self.failures if f.startswith("-1 cut off")]

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


@pytest.fixture(scope="module")
def swarm(swarm_testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    subprocess.run(
        [PROJECT / "scripts/build-images"], check=True, capture_output=True, timeout=1800
    )
    root = tmp_path_factory.mktemp("swarm") / "repo"
    (root / "manifests").mkdir(parents=True)
    shutil.copytree(PROJECT / "templates", root / "templates")
    shutil.copytree(PROJECT / "models", root / "models")
    shutil.copy(PROJECT / "manifests/churn.yaml", root / "manifests/churn.yaml")
    template = root / "templates/churn-serving.yaml"
    text = template.read_text()
    template.write_text(text.replace("minReplicas: 1", "minReplicas: 2"))
    instance = f"sw{time.time_ns() % 10**8}"
    port = free_port()
    nodes = "".join(f"\n      - {n}" for n in swarm_testbed.nodes)
    (root / "manifests/settings.yaml").write_text(
        f"""apiVersion: reconciler/v1
kind: Settings
metadata: {{name: settings}}
spec:
  instance: {instance}
  apiUrl: http://127.0.0.1:{port}
  engine:
    kind: swarm
    host: {swarm_testbed.manager}
    placementTimeoutSeconds: 5
    nodes:{nodes}
"""
    )
    git(root, "init", "-q")
    Swarm(root, swarm_testbed, None, instance).commit("churn on a swarm")  # type: ignore[arg-type]
    server = Server(root, "--no-auth", port=port)
    state = Swarm(root, swarm_testbed, server, instance)
    yield state
    server.stop()
    for service in state.services():
        service.remove()


def node_has_runtime(testbed: Testbed, i: int) -> bool:
    client = testbed.node_client(i)
    try:
        return any(RUNTIME in image.tags for image in client.images.list())
    finally:
        client.close()


def test_churn_runs_two_replicas_on_two_nodes_with_the_image_copied_to_every_node(swarm):
    assert not any(node_has_runtime(swarm.testbed, i) for i in (1, 2, 3))

    result = swarm.reconcile()
    assert result.code == 0, result.out + result.err

    churn = swarm.deployment("churn")
    assert churn["status"] == "RUNNING", churn
    replicas = churn["details"]["replicas"]
    assert [r["ready"] for r in replicas] == [True, True], replicas
    assert len({r["node"] for r in replicas}) == 2, replicas
    assert all(node_has_runtime(swarm.testbed, i) for i in (1, 2, 3))
    # One service, naming its image by id: no node ever asks a registry for a tag.
    (service,) = swarm.services()
    image = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert image.startswith("sha256:"), image
    engine = swarm.status()["engine"]
    assert engine["kind"] == "swarm"
    assert sorted(n["hostname"] for n in engine["nodes"]) == sorted(swarm.testbed.hostnames)
    assert cli("plan", "--root", swarm.root).out.strip().endswith("Plan: no changes.")


def test_the_gateway_answers_kserve_v1_and_open_inference_v2(swarm):
    url = swarm.url("churn")
    assert url.startswith(swarm.server.base)

    code, v1 = post(url + "/v1/models/churn:predict", {"instances": [list(RECORD.values())]})
    assert code == 200, v1
    assert v1["predictions"] in ([0], [1])
    code, v2 = post(url + "/v2/models/churn/infer", V2_REQUEST)
    assert code == 200, v2
    assert v2["outputs"][0]["data"] in ([0], [1])


def test_a_rolling_update_to_churn_v2_loses_no_request(swarm):
    manifest = swarm.root / "manifests/churn.yaml"
    manifest.write_text(
        manifest.read_text().replace("configurationId: churn-v1", "configurationId: churn-v2")
    )
    swarm.commit("roll out churn-v2")
    url = swarm.url("churn") + "/v1/models/churn:predict"

    with Load(url) as load:
        before = set(load.answers)
        result = swarm.reconcile()
        after = wait_for(lambda: load.answers - before, timeout=30, what="answers of v2")

    assert result.code == 0, result.out + result.err
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50 and after
    churn = swarm.deployment("churn")
    assert (churn["status"], churn["configurationId"]) == ("RUNNING", "churn-v2")


def test_the_loss_of_a_worker_moves_its_replica_and_loses_no_request(swarm):
    replicas = swarm.deployment("churn")["details"]["replicas"]
    worker = next(
        i
        for i, host in enumerate(swarm.testbed.hostnames, 1)
        if i != 1 and host in {r["node"] for r in replicas}
    )
    lost = swarm.testbed.hostnames[worker - 1]
    url = swarm.url("churn") + "/v1/models/churn:predict"

    def moved() -> bool:
        churn = swarm.deployment("churn")
        nodes = [r["node"] for r in churn["details"]["replicas"] if r["ready"]]
        return churn["status"] == "RUNNING" and len(nodes) == 2 and lost not in nodes

    with Load(url) as load:
        swarm.testbed.kill_node(worker)
        try:
            wait_for(moved, timeout=120, what=f"churn's replica to leave {lost}")
        finally:
            swarm.testbed.start_node(worker)

    # Every request the lost node had not begun to answer was answered by the other replica.
    lost = [f for f in load.failures if f not in load.cut_off]
    assert lost == [], lost[:5]
    assert len(load.cut_off) <= load.clients, load.cut_off
    swarm.testbed.wait_nodes_ready(60)


def test_a_gpu_plan_lands_on_the_gpu_node_and_one_no_node_fits_ends_dead(swarm):
    (swarm.root / "manifests/gpu.yaml").write_text(GPU_MANIFESTS)
    swarm.commit("GPU deployments")

    result = swarm.reconcile()

    assert result.code != 0  # one of them failed
    one, three = swarm.deployment("gpu-one"), swarm.deployment("gpu-three")
    gpu_node = swarm.testbed.hostnames[swarm.testbed.gpu_node - 1]
    assert one["status"] == "RUNNING", one
    assert {r["node"] for r in one["details"]["replicas"]} == {gpu_node}
    assert three["status"] == "DEAD", three
    assert three["statusMessage"] == "no suitable node (insufficient resources on 3 nodes)"
    # Nothing of it is left behind, and it is not retried.
    names = {s.name for s in swarm.services()}
    assert not any(three["id"] in n for n in names), names
    planned = cli("plan", "--root", swarm.root)
    assert "gpu-three is DEAD" in planned.out + planned.err


def test_a_model_server_that_cannot_load_ends_dead_with_its_error_and_logs(swarm):
    (swarm.root / "models/broken").mkdir()
    (swarm.root / "models/broken/model.joblib").write_text("not a model")
    (swarm.root / "manifests/broken.yaml").write_text(BROKEN_MANIFESTS)
    swarm.commit("a broken model")

    swarm.reconcile()

    broken = swarm.deployment("broken")
    assert broken["status"] == "DEAD", broken
    assert broken["statusMessage"].startswith("task: non-zero exit (1): error: cannot load")
    logs = cli("logs", "broken", "--root", swarm.root)
    assert "cannot load /mnt/models/model.joblib" in logs.out


def test_an_update_to_a_model_that_cannot_load_is_rolled_back_and_the_old_one_serves(swarm):
    manifest = swarm.root / "manifests/churn.yaml"
    manifest.write_text(
        manifest.read_text().replace("configurationId: churn-v2", "configurationId: churn-broken")
    )
    swarm.commit("churn to the broken model")
    url = swarm.url("churn") + "/v1/models/churn:predict"

    with Load(url) as load:
        result = swarm.reconcile()

    assert result.code != 0
    assert load.failures == [], load.failures[:5]
    churn = swarm.deployment("churn")
    assert churn["status"] == "RUNNING", churn
    assert churn["latestRunningConfigurationId"] == "churn-v2"
    assert "rolled the service back to the previous configuration" in churn["statusMessage"]
    planned = cli("plan", "--root", swarm.root)
    assert "churn-v2 keeps serving" in planned.out + planned.err
    (service,) = [s for s in swarm.services() if churn["id"] in s.name]
    env = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert "STORAGE_URI=file:models/churn/2" in env, env

    # Declaring the serving configuration again settles it, replacing nothing.
    manifest.write_text(
        manifest.read_text().replace("configurationId: churn-broken", "configurationId: churn-v2")
    )
    swarm.commit("churn back to v2")
    swarm.reconcile()
    churn = swarm.deployment("churn")
    assert (churn["status"], churn["configurationId"]) == ("RUNNING", "churn-v2"), churn
    assert service.id in {s.id for s in swarm.services()}


def test_watch_restores_a_service_removed_by_hand(swarm):
    log = swarm.root.parent / "watch.log"
    with open(log, "w") as out:
        watch = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", "--root", str(swarm.root)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _passes(log), timeout=60, what="watch's first pass")
        churn_id = swarm.deployment("churn")["id"]
        (service,) = [s for s in swarm.services() if churn_id in s.name]
        service.remove()
        wait_for(
            lambda: (
                any("removed outside the reconciler" in json.dumps(p) for p in _passes(log))
                and swarm.deployment("churn")["status"] == "RUNNING"
            ),
            timeout=120,
            what="watch to restore churn's service",
        )
    finally:
        watch.terminate()
        watch.wait(timeout=30)
    restore = next(p for p in _passes(log) if "removed outside the reconciler" in json.dumps(p))
    # Woken by Swarm's event, not by its periodic resync.
    assert any(t.startswith("docker") for t in restore["trigger"]), restore
    assert any(churn_id in s.name for s in swarm.services())


def _passes(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if '"event": "pass"' in line]


def test_a_deployment_set_to_stopped_is_stopped_and_its_service_removed(swarm):
    gpu = swarm.root / "manifests/gpu.yaml"
    gpu.write_text(
        gpu.read_text().replace(
            "spec: {configurationId: churn-gpu-one}",
            "spec: {configurationId: churn-gpu-one, targetStatus: STOPPED}",
        )
    )
    swarm.commit("stop gpu-one")
    one_id = swarm.deployment("gpu-one")["id"]

    swarm.reconcile()

    one = swarm.deployment("gpu-one")
    assert one["status"] == "STOPPED", one
    assert not any(one_id in s.name for s in swarm.services())
    # Stopped means its containers are gone from the node, not only its tasks from the API.
    node = swarm.testbed.node_client(swarm.testbed.gpu_node)
    try:
        left = [c.name for c in node.containers.list() if one_id in c.name]
    finally:
        node.close()
    assert left == [], left
    code, body = post(swarm.url("churn") + "/v1/models/churn:predict", {"instances": [[0] * 8]})
    assert code == 200, body  # the others go on serving
    stopped = swarm.server.base + f"/v2/inference/deployments/{one_id}/v1/models/churn:predict"
    code, body = post(stopped, {"instances": [[0] * 8]})
    assert code == 503 and "STOPPED" in str(body), body


ELASTIC_MANIFESTS = """
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: churn-elastic}
spec:
  executableId: churn-elastic-serving
  scenarioId: churn
  versionId: "1"
  inputArtifactBindings: [{key: churnmodel, artifactId: churn-model-v1}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: elastic}
spec: {configurationId: churn-elastic}
"""


def test_an_autoscaled_deployment_goes_to_zero_comes_back_on_a_request_and_scales_up(swarm):
    """Issue 17 on Swarm: the count is the service's; at zero there is no service at all."""
    text = (PROJECT / "templates/churn-serving.yaml").read_text()
    annotations = "        autoscaling.knative.dev/target: 1\n"
    assert annotations in text and "minReplicas: 1\n        maxReplicas: 1" in text
    text = text.replace("name: churn-serving", "name: churn-elastic-serving")
    text = text.replace(
        annotations,
        annotations + "        autoscaling.knative.dev/target-utilization-percentage: 100\n"
        "        autoscaling.knative.dev/window: 6s\n"
        "        autoscaling.knative.dev/scale-to-zero-grace-period: 2s\n",
    )
    text = text.replace(
        "minReplicas: 1\n        maxReplicas: 1", "minReplicas: 0\n        maxReplicas: 2"
    )
    (swarm.root / "templates/churn-elastic.yaml").write_text(text)
    (swarm.root / "manifests/elastic.yaml").write_text(ELASTIC_MANIFESTS)
    swarm.commit("an autoscaled churn")
    result = swarm.reconcile()
    assert result.code == 0, result.out + result.err
    dep_id = swarm.deployment("elastic")["id"]

    def replicas() -> int | None:
        """The service's replica count; None: no service."""
        found = [s for s in swarm.services() if s.name.endswith(dep_id)]
        return found[0].attrs["Spec"]["Mode"]["Replicated"]["Replicas"] if found else None

    assert replicas() == 1  # a new configuration starts one
    wait_for(lambda: replicas() is None, timeout=60, what="the service gone at zero")
    elastic = swarm.deployment("elastic")
    assert elastic["status"] == "RUNNING", elastic
    assert elastic["details"]["scaling"]["desiredReplicas"] == 0, elastic
    assert cli("plan", "--root", swarm.root).out.strip().endswith("Plan: no changes.")
    time.sleep(1)  # the gateway's table has caught up

    url = swarm.url("elastic") + "/v1/models/churn:predict"
    # Held while the service comes back: on Swarm a task counts as running only once its
    # health check passed, and the nodes' Docker (20.10) runs the first check one period
    # (KServe's default 10 s) after the start.
    code, body = post(url, {"instances": [list(RECORD.values())]}, timeout=60)
    assert code == 200, body
    assert replicas() == 1

    most = 0
    with Load(url, clients=4) as load:

        def two() -> bool:
            nonlocal most
            count = replicas() or 0
            most = max(most, count)
            return count == 2

        wait_for(two, timeout=60, what="2 replicas under load")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            most = max(most, replicas() or 0)
            time.sleep(0.5)
    assert most == 2, most  # maxReplicas
    assert load.failures == [], load.failures[:5]

    def both_ready() -> bool:  # (a new task is ready after its first health check)
        running = swarm.deployment("elastic")["details"]["replicas"]
        return sum(1 for r in running if r["ready"]) == 2

    wait_for(both_ready, timeout=60, what="2 ready replicas")
