"""Models from object stores on a real three-node Swarm (scripts/swarm-testbed): the storage
initializer runs as a job on every node, each node keeps its own cache.

The churn example's model is uploaded to s3s-fs (listening on every address of this host, so
that the nodes reach it at the testbed's host address) and served from an `ai://` artifact
with a secret added through the CLI, two replicas, beside the same model from `file:`. Each
node's cache is `/run/reconciler-models-<instance>`: the testbed's nodes share this host's
file system except /run (a tmpfs of each node's own), so the caches are really three, read
here through /proc/<dockerd>/root. The tests run in file order on one GitOps root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.stores import initializer
from reconciler.stores.cache import COMPLETE
from reconciler.stores.listing import Listing, StoredObject, StoreError
from reconciler.stores.s3 import Location
from reconciler.stores.secrets import ObjectStoreSecret
from tests.conftest import PROJECT, cli, cli_process, git
from tests.engine_support import Server, free_port, request
from tests.s3_support import ACCESS_KEY, CHURN_RECORD, SECRET_KEY, S3Server, churn_from_store
from tests.swarm_support import Testbed

pytestmark = [pytest.mark.timeout(600, func_only=True)]

JOB = "reconciler.model-job"
S3_MANIFESTS = churn_from_store("s3", "ai://models/churn/1")
# A secret whose key the store refuses; one whose endpoint (this host's loopback) the
# reconciler reaches and the nodes do not.
FAULTY_MANIFESTS = churn_from_store("wrong", "ai://wrong/churn/1") + churn_from_store(
    "loopback", "ai://loopback/churn/2"
)


@dataclass
class ModelSwarm:
    root: Path
    testbed: Testbed
    server: Server
    store: S3Server
    bucket: str
    instance: str
    cache: str

    def reconcile(self) -> Any:
        return cli("reconcile", "--root", self.root)

    def status(self) -> dict[str, Any]:
        return json.loads(cli("status", "--json", "--root", self.root).out)

    def deployment(self, name: str) -> dict[str, Any]:
        return next(d for d in self.status()["deployments"] if d["name"] == name)

    def commit(self, message: str) -> None:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-qm", message)

    def node_cache(self, i: int) -> Path:
        """Node i's cache folder, as its dockerd (and its containers) see it."""
        pid = (self.testbed.base / f"node{i}" / "docker.pid").read_text().strip()
        return Path(f"/proc/{pid}/root{self.cache}")

    def versions(self, i: int) -> set[str]:
        folder = self.node_cache(i)
        return {p.name for p in folder.iterdir() if not p.name.startswith(".")}

    def ours(self, kind: str, label: str) -> list[Any]:
        """This cache's jobs (services), secrets or configs carrying `label`."""
        listed = getattr(self.testbed.client, kind).list(filters={"label": label})
        return [
            x
            for x in listed
            if x.attrs["Spec"]["Labels"].get("reconciler.model-cache") == self.cache
        ]


def predict(url: str) -> list[float]:
    body = json.dumps(CHURN_RECORD).encode()
    code, _, raw = request(
        url + "/v1/models/churn:predict", data=body, headers={"Content-Type": "application/json"}
    )
    assert code == 200, raw
    return json.loads(raw)["probabilities"][0]


def upload(store: S3Server, bucket: str, version: int, path: str) -> None:
    s3 = store.client()
    for f in sorted((PROJECT / "models/churn" / str(version)).iterdir()):
        s3.put_object(Bucket=bucket, Key=f"{path}/{f.name}", Body=f.read_bytes())


def add_secret(root: Path, name: str, bucket: str, endpoint: str, secret_key: str) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret_key}
    added = cli_process(
        "secrets", "objectstore", "add", name, "--bucket", bucket, "--endpoint", endpoint,
        "--root", root, env=env,
    )  # fmt: skip
    assert added.code == 0, added.err


@dataclass
class Watcher:
    """Everything Swarm shows of every service while a pass runs, polled: each service's
    inspect, and the task logs of the initializer's jobs. `jobs`: the job names it saw."""

    testbed: Testbed
    seen: list[str] = field(default_factory=list)
    jobs: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        client = docker.DockerClient(base_url=self.testbed.manager, timeout=10)
        try:
            while not self._stop.is_set():
                for service in client.services.list():
                    try:
                        service.reload()
                        self.seen.append(json.dumps(service.attrs))
                        if JOB in service.attrs["Spec"]["Labels"]:
                            self.jobs.add(service.name)
                            logs = service.logs(stdout=True, stderr=True)
                            self.seen.append(b"".join(logs).decode(errors="replace"))
                    except docker.errors.APIError:
                        pass  # (a job removed meanwhile)
                self._stop.wait(0.1)
        finally:
            client.close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def models_swarm(
    swarm_testbed: Testbed, s3s_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelSwarm]:
    subprocess.run(
        [PROJECT / "scripts/build-images"], check=True, capture_output=True, timeout=1800
    )
    base = tmp_path_factory.mktemp("swarm-models")
    store = S3Server(base / "s3", free_port(), host="0.0.0.0")
    store.folder.mkdir()
    store.start(s3s_binary)
    root = base / "repo"
    (root / "manifests").mkdir(parents=True)
    shutil.copytree(PROJECT / "templates", root / "templates")
    shutil.copytree(PROJECT / "models", root / "models")
    shutil.copy(PROJECT / "manifests/churn.yaml", root / "manifests/churn.yaml")
    template = root / "templates/churn-serving.yaml"
    template.write_text(template.read_text().replace("minReplicas: 1", "minReplicas: 2"))
    instance = f"sm{time.time_ns() % 10**8}"
    cache = f"/run/reconciler-models-{instance}"
    port = free_port()
    nodes = "".join(f"\n      - {n}" for n in swarm_testbed.nodes)
    (root / "manifests/settings.yaml").write_text(
        f"""apiVersion: reconciler/v1
kind: Settings
metadata: {{name: settings}}
spec:
  instance: {instance}
  apiUrl: http://127.0.0.1:{port}
  modelCacheSize: 1Ki
  engine:
    kind: swarm
    host: {swarm_testbed.manager}
    placementTimeoutSeconds: 5
    modelCache: {cache}
    nodes:{nodes}
"""
    )
    (root / "manifests/s3.yaml").write_text(S3_MANIFESTS)
    bucket = store.bucket()
    upload(store, bucket, 1, "churn/1")
    upload(store, bucket, 2, "churn/2")
    reachable = f"http://{swarm_testbed.host_address}:{store.port}"
    add_secret(root, "models", bucket, reachable, SECRET_KEY)
    add_secret(root, "wrong", bucket, reachable, "not-the-secret-key")
    add_secret(root, "loopback", bucket, f"http://127.0.0.1:{store.port}", SECRET_KEY)
    git(root, "init", "-q")
    server = Server(root, "--no-auth", port=port)
    state = ModelSwarm(root, swarm_testbed, server, store, bucket, instance, cache)
    state.commit("churn from an object store on a swarm")
    yield state
    server.stop()
    store.stop()
    client = swarm_testbed.client
    for service in client.services.list(filters={"label": f"reconciler.instance={instance}"}):
        service.remove()
    for config in state.ours("configs", "reconciler.model-cache"):
        config.remove()


@pytest.mark.engine
def test_a_model_from_s3_is_in_every_nodes_cache_serves_as_from_file_and_leaks_nothing(
    models_swarm,
):
    swarm = models_swarm
    started = time.monotonic()
    with Watcher(swarm.testbed) as watched:
        result = swarm.reconcile()
    seconds = time.monotonic() - started
    assert result.code == 0, result.out + result.err
    s3 = swarm.deployment("churn-s3")
    assert s3["status"] == "RUNNING", s3
    replicas = s3["details"]["replicas"]
    assert [r["ready"] for r in replicas] == [True, True], replicas
    assert len({r["node"] for r in replicas}) == 2, replicas
    assert predict(s3["deploymentUrl"]) == pytest.approx(
        predict(swarm.deployment("churn")["deploymentUrl"])
    )  # as from file:

    # Every node has the model in its own cache, whole; the job, its secret and its listing
    # are gone; one record per version says what the nodes have.
    model = (PROJECT / "models/churn/1/model.joblib").read_bytes()
    (version,) = swarm.versions(1)
    for i in (1, 2, 3):
        assert swarm.versions(i) == {version}, i
        assert (swarm.node_cache(i) / version / "model.joblib").read_bytes() == model, i
    assert watched.jobs, "no initializer job was seen"
    assert swarm.ours("services", JOB) == [] and swarm.ours("secrets", JOB) == []
    assert swarm.ours("configs", JOB) == []
    (record,) = swarm.ours("configs", "reconciler.model-version")
    assert record.attrs["Spec"]["Labels"]["reconciler.model-version"] == version

    # No credential in any service's spec, the jobs' logs, the replicas' logs, plan, status.
    client = swarm.testbed.client
    shown = [
        *watched.seen,
        *(json.dumps(s.attrs) for s in client.services.list()),
        *(b"".join(s.logs(stdout=True, stderr=True)).decode(errors="replace")
          for s in client.services.list()),
        cli("plan", "--json", "--root", swarm.root).out,
        cli("status", "--json", "--root", swarm.root).out,
        result.out + result.err,
    ]  # fmt: skip
    for text in shown:
        assert SECRET_KEY not in text and ACCESS_KEY not in text
    assert cli("plan", "--root", swarm.root).out.strip().endswith("Plan: no changes.")
    print(f"first pass with the model from S3 on 3 nodes: {seconds:.1f}s")


@pytest.mark.engine
def test_a_wrong_secret_or_a_store_the_nodes_cannot_reach_ends_dead_with_one_line(
    models_swarm,
):
    swarm = models_swarm
    (swarm.root / "manifests/s3.yaml").write_text(S3_MANIFESTS + FAULTY_MANIFESTS)
    swarm.commit("two models that cannot be had")
    result = swarm.reconcile()
    assert result.code != 0

    wrong = swarm.deployment("churn-wrong")
    assert wrong["status"] == "DEAD", wrong
    assert "AWS_SECRET_ACCESS_KEY" in wrong["statusMessage"], wrong
    # The reconciler lists the store; the nodes cannot reach it at 127.0.0.1.
    loopback = swarm.deployment("churn-loopback")
    assert loopback["status"] == "DEAD", loopback
    message = loopback["statusMessage"]
    assert "model download on node rsnode" in message and "127.0.0.1" in message, message
    for text in (wrong["statusMessage"], message):
        assert "\n" not in text and SECRET_KEY not in text and ACCESS_KEY not in text
    assert swarm.deployment("churn-s3")["status"] == "RUNNING"
    assert swarm.ours("services", JOB) == [] and swarm.ours("secrets", JOB) == []

    (swarm.root / "manifests/s3.yaml").write_text(S3_MANIFESTS)
    swarm.commit("without them")
    assert swarm.reconcile().code == 0


@pytest.mark.engine
def test_a_new_upload_rolls_the_deployment_and_the_old_version_leaves_every_node(models_swarm):
    swarm = models_swarm
    (old,) = swarm.versions(1)
    upload(swarm.store, swarm.bucket, 2, "churn/1")  # a new model under the same path
    result = swarm.reconcile()
    assert result.code == 0, result.out + result.err
    s3 = swarm.deployment("churn-s3")
    assert predict(s3["deploymentUrl"]) != pytest.approx(
        predict(swarm.deployment("churn")["deploymentUrl"])
    )  # version 2's model serves now
    new = {v for v in swarm.versions(1) if v != old}
    assert len(new) == 1

    # The next pass that changes something (the file: deployment stopped) finds the old
    # version used by nobody, beyond modelCacheSize (1Ki): it leaves every node, and its
    # record. (A pass evicts by what the deployments ran when it began, and a pass without
    # changes does not evict.)
    churn = swarm.root / "manifests/churn.yaml"
    churn.write_text(churn.read_text().replace("targetStatus: RUNNING", "targetStatus: STOPPED"))
    swarm.commit("churn from file: stopped")
    assert swarm.reconcile().code == 0
    for i in (1, 2, 3):
        assert swarm.versions(i) == new, i
    labels = [c.attrs["Spec"]["Labels"] for c in swarm.ours("configs", "reconciler.model-version")]
    assert [x["reconciler.model-version"] for x in labels] == list(new)
    assert swarm.deployment("churn-s3")["status"] == "RUNNING"


def test_a_listing_travels_to_the_initializer_without_its_credentials_in_the_shown_part():
    secret = ObjectStoreSecret(
        "models", "default", "ml-models", ACCESS_KEY, SECRET_KEY,
        endpoint="https://minio.internal:9000", path_prefix="team-a",
    )  # fmt: skip
    listing = Listing(
        Location(secret, "team-a/churn/1"),
        (StoredObject("team-a/churn/1/model.joblib", 3397, "0" * 32),),
    )
    public, private = initializer.split(listing)
    assert SECRET_KEY not in json.dumps(public) and ACCESS_KEY not in json.dumps(public)
    assert public["store"]["secret"]["bucket"] == "ml-models"
    again = initializer.join(json.loads(json.dumps(public)), json.loads(json.dumps(private)))
    assert again == listing and again.version == listing.version
    public["objects"][0][1] = 3398  # a listing changed on the way names another version
    with pytest.raises(StoreError, match="do not make the version it names"):
        initializer.join(public, private)


def test_the_initializer_evicts_exactly_what_it_is_told_and_leaves_what_is_kept(tmp_path):
    for version in ("a" * 64, "b" * 64, "c" * 64):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.bin").write_bytes(b"x" * 10)
        (tmp_path / version / COMPLETE).write_text("test\n")
    (tmp_path / f".partial-{'d' * 64}").mkdir()  # an unfinished download nobody keeps
    (tmp_path / f".partial-{'e' * 64}").mkdir()  # one that is kept
    said = initializer.evict(tmp_path, ["a" * 64, "b" * 64], ["b" * 64, "e" * 64])
    assert said.startswith("evicted 1 model(s)"), said
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".locks"))
    assert left == [f".partial-{'e' * 64}", "b" * 64, "c" * 64]


def test_the_nodes_cache_folder_is_an_absolute_path_in_the_settings(gitops):
    from reconciler.manifests.load import load
    from tests.test_engine_settings import repo
    from tests.test_validate import only

    root = repo(gitops, "    kind: swarm\n    modelCache: /srv/models/\n")
    assert cli("validate", "--root", root).code == 0
    assert load(root)[0].settings.engine.model_cache == "/srv/models"
    for wrong in ("models", "/srv/../etc", "/srv/a b"):
        root = repo(gitops, f"    kind: swarm\n    modelCache: '{wrong}'\n")
        assert only(cli("validate", "--root", root))["pointer"] == "/spec/engine/modelCache"
