"""A model's download within a reconcile pass (issue 18). A large one says how it goes. A
store that fails while a pass downloads: the deployment is DEAD with the store's line, but not
held by the failed-hash rule, and the next pass downloads it (resuming the parts that came:
tests/test_model_cache.py) and serves. Real passes over a real GitOps root against the
in-memory backend, whose hosts keep models in a real cache folder; the store is a real S3
server (s3s-fs), behind a link that goes down after the listing where a test needs it to."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.backends.fake import FakeBackend
from reconciler.core.lifecycle import Status
from reconciler.core.models import DownloadMeter
from reconciler.core.reconcile import reconcile
from reconciler.core.record import read_snapshot
from reconciler.stores.cache import ModelCache
from reconciler.stores.s3 import listing, locate
from reconciler.stores.secrets import ObjectStoreSecret, ObjectStoreSecrets
from tests.conftest import write_tree
from tests.s3_support import ACCESS_KEY, SECRET_KEY, FaultyLink, S3Server

INSTANCE = "model-retry"
IMAGE = "reconciler-test/busybox:2"
MANIFESTS = f"""
apiVersion: reconciler/v1
kind: ServingTemplate
metadata: {{name: tiny-serving}}
spec:
  scenarioId: tiny
  inputs:
    artifacts: [{{name: model}}]
  container:
    image: "{IMAGE}"
    modelArtifact: model
    startupTimeout: 30
---
apiVersion: reconciler/v1
kind: Artifact
metadata: {{name: tiny-model}}
spec: {{kind: model, url: "ai://models/tiny/1", scenarioId: tiny}}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {{name: tiny-v1}}
spec:
  executableId: tiny-serving
  scenarioId: tiny
  inputArtifactBindings: [{{key: model, artifactId: tiny-model}}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {{name: tiny}}
spec: {{configurationId: tiny-v1}}
"""
SETTINGS = f"""
apiVersion: reconciler/v1
kind: Settings
metadata: {{name: host}}
spec: {{instance: {INSTANCE}}}
"""


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/reconciler-tests/docker.sock")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_a_download_cut_midway_is_retried_by_the_next_pass(s3_server: S3Server, tmp_path: Path):
    bucket = s3_server.bucket()
    s3_server.client().put_object(Bucket=bucket, Key="tiny/1/weights.bin", Body=b"w" * 200_000)
    link = FaultyLink(s3_server.port)
    try:
        secrets = ObjectStoreSecrets(
            tmp_path / "config/reconciler" / INSTANCE / "objectstores.json"
        )
        secrets.put(
            ObjectStoreSecret(
                "models", "default", bucket, ACCESS_KEY, SECRET_KEY, endpoint=link.endpoint
            )
        )
        listing(locate("ai://models/tiny/1", "default", secrets))  # how much a listing takes
        listed = link.relayed
        root = write_tree(
            tmp_path / "repo",
            {"manifests/app.yaml": MANIFESTS, "manifests/settings.yaml": SETTINGS},
        )
        cache = ModelCache(tmp_path / "cache")
        fake = FakeBackend(images={IMAGE: "sha256:" + "2" * 64}, model_hosts=cache)

        link.heal()
        link.down_after = listed + 100_000  # the listing passes, the download breaks off
        first = reconcile(root, backend=fake, trigger="test")
        (outcome,) = first.outcomes
        assert not outcome.ok and outcome.retry, outcome
        assert first.store_waits == ("tiny",)
        (record,) = read_snapshot(root, INSTANCE).records.values()
        assert record.status == Status.DEAD, record
        assert record.failed_hash is None  # not held: the next pass tries again
        message = record.status_message or ""
        assert "ai://models/tiny/1" in message or "s3://" in message, message
        assert SECRET_KEY not in message and "\n" not in message
        assert not fake.of("tiny")

        link.heal()  # the store is back
        second = reconcile(root, backend=fake, trigger="test")
        assert second.converged and second.store_waits == (), second.outcomes
        (record,) = read_snapshot(root, INSTANCE).records.values()
        assert record.status == Status.RUNNING
        assert cache.has(record.model_version or "")
    finally:
        link.close()


def test_a_large_download_says_how_it_goes(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A model of 32 MB or more: the pass says when its download starts (and how large it
    is), how far it is every few seconds, and when it is done, through the pass's `note`
    (the command line prints them; watch and serve log them)."""
    monkeypatch.setattr(DownloadMeter, "EVERY", 0.0)  # every report, for the test
    bucket = s3_server.bucket()
    s3_server.client().put_object(Bucket=bucket, Key="tiny/1/weights.bin", Body=b"w" * 40_000_000)
    secrets = ObjectStoreSecrets(tmp_path / "config/reconciler" / INSTANCE / "objectstores.json")
    secrets.put(
        ObjectStoreSecret(
            "models", "default", bucket, ACCESS_KEY, SECRET_KEY, endpoint=s3_server.endpoint
        )
    )
    root = write_tree(
        tmp_path / "repo", {"manifests/app.yaml": MANIFESTS, "manifests/settings.yaml": SETTINGS}
    )
    fake = FakeBackend(
        images={IMAGE: "sha256:" + "2" * 64}, model_hosts=ModelCache(tmp_path / "cache")
    )
    lines: list[tuple[str, str]] = []
    result = reconcile(
        root, backend=fake, trigger="test", note=lambda name, line: lines.append((name, line))
    )
    assert result.converged
    said = [line for name, line in lines if name == "tiny"]
    assert said[0].startswith("downloading the model s3://") and "(40 MB)" in said[0], said
    assert any("% (" in line and "MB/s" in line for line in said[1:-1]), said
    assert said[-1].startswith("model downloaded: 40 MB in "), said
    assert all(SECRET_KEY not in line and ACCESS_KEY not in line for line in said)
