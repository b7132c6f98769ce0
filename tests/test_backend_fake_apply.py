"""Apply and reconcile against the in-memory backend: no Docker engine, not marked `engine`.

Each test runs real passes (`reconcile` with a `FakeBackend`) over a real GitOps root, and reads
what was recorded in the state and what the fake ran. DOCKER_HOST points nowhere, so a pass
that reached for an engine instead of the backend it was given would fail.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reconciler.backends.fake import FakeBackend
from reconciler.core.apply import INTERRUPTED
from reconciler.core.lifecycle import Status
from reconciler.core.reconcile import PassResult, reconcile
from reconciler.core.record import Record, read_snapshot
from tests.conftest import write_tree

INSTANCE = "fake-apply"
IMAGE = "reconciler-test/busybox:2"
SECRET = "tok-0123456789-secret"

TEMPLATE = f"""
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: tiny-serving
spec:
  scenarioId: tiny
  inputs:
    parameters:
      - {{name: version, default: "1"}}
      - {{name: replicas, default: "1"}}
  container:
    image: "{IMAGE}"
    env:
      VERSION: "{{{{ inputs.parameters.version }}}}"
      API_TOKEN: "{SECRET}"
    replicas: "{{{{ inputs.parameters.replicas }}}}"
    startupTimeout: 30
    stopTimeout: 2
"""

SETTINGS = f"""
apiVersion: reconciler/v1
kind: Settings
metadata:
  name: host
spec:
  instance: {INSTANCE}
"""


def configuration(name: str, version: str = "1", replicas: str = "1") -> str:
    return f"""
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: {name}
spec:
  executableId: tiny-serving
  scenarioId: tiny
  parameterBindings:
    - key: version
      value: "{version}"
    - key: replicas
      value: "{replicas}"
"""


def deployment(name: str, config: str, target: str | None = None) -> str:
    extra = f"  targetStatus: {target}\n" if target else ""
    return f"""
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: {name}
spec:
  configurationId: {config}
{extra}"""


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/reconciler-tests/docker.sock")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)


class Root:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fake = FakeBackend(images={IMAGE: "sha256:" + "2" * 64})
        write_tree(path, {"templates/tiny.yaml": TEMPLATE, "manifests/settings.yaml": SETTINGS})

    def declare(self, *docs: str) -> None:
        (self.path / "manifests" / "app.yaml").write_text("---".join(docs))

    def reconcile(self, stop: threading.Event | None = None) -> PassResult:
        return reconcile(self.path, backend=self.fake, stop=stop, trigger="test")

    def record(self, name: str) -> Record:
        records = read_snapshot(self.path, INSTANCE).records.values()
        (found,) = [r for r in records if r.name == name]
        return found

    def running(self, name: str) -> list[str]:
        """The configuration ids of its running replicas, in replica order."""
        return [c.configuration_id for c in self.fake.of(name) if c.state == "running"]


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "repo")


def test_a_new_deployment_is_started_and_recorded_running(root: Root) -> None:
    root.declare(configuration("tiny-v1", replicas="2"), deployment("tiny", "tiny-v1"))
    result = root.reconcile()
    assert result.converged, [o.describe() for o in result.outcomes]
    record = root.record("tiny")
    assert record.status == Status.RUNNING and record.status_message is None
    assert root.running("tiny") == ["tiny-v1", "tiny-v1"]
    assert {c.config_hash for c in root.fake.of("tiny")} == {record.config_hash}
    assert [c.replica for c in root.fake.of("tiny")] == [0, 1]
    # Converged: the next pass has nothing to do.
    again = root.reconcile()
    assert again.plan.changes == () and again.outcomes == []


def test_a_replacement_starts_the_new_replica_before_the_old_one_stops(root: Root) -> None:
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    (old,) = root.fake.of("tiny")
    root.fake.calls.clear()
    root.declare(configuration("tiny-v2", version="2"), deployment("tiny", "tiny-v2"))
    result = root.reconcile()
    assert result.converged
    (new,) = root.fake.of("tiny")
    assert root.fake.calls == [f"start {new.name}", f"stop {old.name}", f"delete {old.name}"]
    record = root.record("tiny")
    assert record.status == Status.RUNNING and record.latest_running_configuration_id == "tiny-v2"


def test_a_failed_replacement_keeps_the_old_configuration_serving(root: Root) -> None:
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    root.fake.script("tiny-v2", ready=False, logs=("loading", f"still loading with {SECRET}"))
    root.declare(configuration("tiny-v2", version="2"), deployment("tiny", "tiny-v2"))
    result = root.reconcile()
    (outcome,) = result.outcomes
    assert not outcome.ok
    record = root.record("tiny")
    assert record.status == Status.RUNNING
    assert record.status_message == (
        "update to configuration tiny-v2 failed (configuration tiny-v1 keeps serving): "
        "not ready after 30s: GET /ready answered 503"
    )
    assert root.running("tiny") == ["tiny-v1"]  # the new one was removed, the old one serves
    assert record.last_logs == ("loading", "still loading with ***")
    # Not retried until the configuration changes.
    assert root.reconcile().plan.changes == ()


def test_a_replica_that_exits_while_starting_leaves_the_deployment_dead(root: Root) -> None:
    root.fake.script(
        "tiny-v1",
        exit_code=3,
        logs=("loading model", f"token is {SECRET}", "error: no model in /mnt/models", ""),
    )
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    result = root.reconcile()
    assert not result.converged
    record = root.record("tiny")
    assert record.status == Status.DEAD
    assert record.status_message == (
        "container exited with code 3 while starting: error: no model in /mnt/models"
    )
    assert record.last_logs == ("loading model", "token is ***", "error: no model in /mnt/models")
    assert root.fake.of("tiny") == []  # nothing half-made is left behind


def test_an_image_that_cannot_be_pulled_leaves_the_deployment_dead(root: Root) -> None:
    root.fake.unpullable.add("reconciler-test/busybox:2")
    root.fake.images.clear()
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    record = root.record("tiny")
    assert record.status == Status.DEAD
    assert record.status_message is not None
    assert record.status_message.startswith(f"image {IMAGE} is not on this host")


def test_a_stopped_deployment_retires_its_replicas(root: Root) -> None:
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    (replica,) = root.fake.of("tiny")
    root.fake.calls.clear()
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1", target="STOPPED"))
    result = root.reconcile()
    assert result.converged
    assert root.record("tiny").status == Status.STOPPED
    assert root.fake.of("tiny") == []
    assert root.fake.calls == [f"stop {replica.name}", f"delete {replica.name}"]


def test_a_deployment_removed_from_the_manifests_is_deleted(root: Root) -> None:
    root.declare(
        configuration("tiny-v1"), deployment("tiny", "tiny-v1"), deployment("keep", "tiny-v1")
    )
    root.reconcile()
    root.declare(configuration("tiny-v1"), deployment("keep", "tiny-v1"))
    result = root.reconcile()
    assert result.converged
    assert root.fake.of("tiny") == [] and root.running("keep") == ["tiny-v1"]
    names = {r.name for r in read_snapshot(root.path, INSTANCE).records.values()}
    assert names == {"keep"}


def test_an_interrupted_pass_leaves_its_replicas_pending_for_the_next(root: Root) -> None:
    stop = threading.Event()
    root.fake.script("tiny-v1", ready=False, on_probe=stop.set)  # stopped while waiting
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    result = root.reconcile(stop)
    (outcome,) = result.outcomes
    assert outcome.message == INTERRUPTED and not outcome.ok
    assert root.record("tiny").status == Status.PENDING
    assert root.running("tiny") == ["tiny-v1"]  # left running, not removed
    # The next pass only waits for it: no new replica.
    root.fake.script("tiny-v1")  # ready now
    root.fake.calls.clear()
    result = root.reconcile()
    assert result.converged and root.fake.calls == []
    assert result.plan.changes == () and len(result.plan.settle) == 1
    assert root.record("tiny").status == Status.RUNNING


def test_a_replica_that_crashed_after_serving_is_restored(root: Root) -> None:
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    root.fake.crash("tiny", exit_code=137, lines=["killed"])
    result = root.reconcile()
    assert result.converged
    (change,) = result.plan.changes
    assert "exited with code 137" in change.cause
    assert root.running("tiny") == ["tiny-v1"]
    assert root.record("tiny").restores == 1


def test_a_resource_change_is_made_in_place(root: Root) -> None:
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    (before,) = root.fake.of("tiny")
    root.fake.calls.clear()
    (root.path / "templates" / "tiny.yaml").write_text(
        TEMPLATE.replace("    stopTimeout: 2\n", "    stopTimeout: 2\n    resourcePlan: basic\n")
    )
    result = root.reconcile()
    assert result.converged, [c.describe() for c in result.plan.changes]
    (change,) = result.plan.changes
    assert change.symbol == "~"
    assert root.fake.calls == [f"update {before.name}"]
    assert [c.id for c in root.fake.of("tiny")] == [before.id]
    assert before.id in root.record("tiny").updated_resources


def test_the_fakes_events_tell_its_own_actions_from_drift(root: Root) -> None:
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    stream = root.fake.events(0)
    root.fake.crash("tiny")
    root.reconcile()  # restores it: the exited replica is deleted by the pass
    got = []
    for event in stream:
        got.append((event.action, event.own))
        if len(got) == 2:
            stream.close()
    assert got == [("die", False), ("destroy", True)]


def test_with_self_heal_off_in_the_settings_drift_is_reported_not_restored(root: Root) -> None:
    """Settings spec.selfHeal: false: the passes of watch and serve (self_heal=None: as the
    Settings say) report a container removed by hand as drift and leave it; a person's
    reconcile (the command line's default) restores it."""
    settings = root.path / "manifests/settings.yaml"
    settings.write_text(SETTINGS + "  selfHeal: false\n")
    root.declare(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    root.reconcile()
    root.fake.remove_by_hand("tiny")
    result = reconcile(root.path, backend=root.fake, trigger="watch", self_heal=None)
    assert result.plan.changes == () and result.outcomes == []
    (drift,) = result.plan.drift
    assert drift.name == "tiny" and drift.cause == "container removed outside the reconciler"
    assert any("self-heal is off" in w for w in result.plan.warnings)
    assert result.plan.to_json()["drift"] == [drift.to_json()]
    assert root.running("tiny") == []
    assert root.reconcile().converged  # the command line: self_heal=True
    assert root.running("tiny") == ["tiny-v1"]
