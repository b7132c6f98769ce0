"""Pinning a model's version (issue 18): an artifact URL ending in `?version=<hex>` (at least
the 12 digits `reconciler plan` shows of a version) takes the store's version only while it
matches; once the store has moved on, a deployment goes on with the pinned version from the
model cache (a warning), and is DEAD with one line saying what to do when the cache has none.
Against a real S3-compatible server (s3s-fs on loopback), calling resolve_models directly with
a real cache: no Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.models import resolve_models
from reconciler.core.record import Snapshot
from reconciler.manifests.desired import DesiredState, desired_state
from reconciler.manifests.store_urls import parse_store_url, store_url_problem
from reconciler.stores.artifacts import list_artifact
from reconciler.stores.cache import ModelCache
from reconciler.stores.secrets import ObjectStoreSecret, ObjectStoreSecrets
from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, write_tree
from tests.plan_support import config_hash, record
from tests.s3_support import ACCESS_KEY, SECRET_KEY, S3Server

URL = "ai://models/churn/1"


@pytest.fixture
def store(s3_server: S3Server, tmp_path: Path):
    """A bucket with a model folder, its secret, an empty model cache; and `upload` to put a
    new model there, which returns the store's version afterwards."""
    bucket = s3_server.bucket()
    secrets = ObjectStoreSecrets(tmp_path / "objectstores.json")
    secrets.put(
        ObjectStoreSecret(
            "models", "default", bucket, ACCESS_KEY, SECRET_KEY, endpoint=s3_server.endpoint
        )
    )

    def upload(body: bytes) -> str:
        s3_server.client().put_object(Bucket=bucket, Key="churn/1/model.bin", Body=body)
        return list_artifact(URL, "default", secrets).version

    return upload, secrets, ModelCache(tmp_path / "cache")


def declared(tmp_path: Path, url: str, name: str = "repo") -> DesiredState:
    """The echo deployment with its model at `url` (written to a root of its own)."""
    manifests = ECHO_MANIFESTS.replace("url: file:models/echo", f'url: "{url}"')
    files = {"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests}
    return desired_state(write_tree(tmp_path / name, files))


def test_a_pin_that_matches_the_store_takes_its_version(store, tmp_path):
    upload, secrets, cache = store
    version = upload(b"model one")
    for pin in (version[:12], version.upper()[:20], version):
        desired = declared(tmp_path, f"{URL}?version={pin}", name=f"repo-{len(pin)}")
        resolved, models = resolve_models(desired, Snapshot("x", {}), cache, secrets)
        (d,) = resolved.deployments
        assert d.spec.model_version == version
        assert d.spec.model_path == str(cache.path(version))
        assert list(models.listings) == [version]  # what apply downloads
        assert not models.unavailable and not models.warnings


def test_when_the_store_moves_on_the_pinned_version_goes_on_from_the_cache(store, tmp_path):
    upload, secrets, cache = store
    old = upload(b"model one")
    cache.fetch(list_artifact(URL, "default", secrets))  # what the deployment has run
    new = upload(b"model two")
    desired = declared(tmp_path, f"{URL}?version={old[:12]}")
    (d,) = desired.deployments
    snapshot = Snapshot("x", {d.id: record(d, model_version=old)})

    resolved, models = resolve_models(desired, snapshot, cache, secrets)
    (d,) = resolved.deployments
    assert d.spec.model_version == old and d.spec.model_path == str(cache.path(old))
    assert not models.unavailable
    assert models.listings == {}  # nothing to download: the cache has it
    assert models.warnings == (
        f"echo: {URL} is pinned to version {old[:12]}; the store has a newer one ({new[:12]}): "
        f"it goes on with {old[:12]} from the model cache",
    )

    # A second deployment of the same pinned model, new: another's recorded copy serves it.
    other = declared(tmp_path, f"{URL}?version={old[:12]}", name="another")
    (o,) = other.deployments
    resolved, models = resolve_models(
        other, Snapshot("x", {"someone": record(o, id="someone", model_version=old)}), cache,
        secrets,
    )  # fmt: skip
    assert resolved.deployments[0].spec.model_version == old and not models.unavailable

    # ... but never another resource group's (another tenant's) copy, whatever it pins.
    resolved, models = resolve_models(
        other,
        Snapshot("x", {"theirs": record(o, id="theirs", model_version=old, resource_group="b")}),
        cache,
        secrets,
    )
    assert resolved.deployments[0].spec.model_version is None and o.id in models.unavailable

    # Pinned to the store's version instead: that one, to be downloaded.
    repinned = declared(tmp_path, f"{URL}?version={new[:12]}", name="repinned")
    resolved, models = resolve_models(repinned, snapshot, cache, secrets)
    assert resolved.deployments[0].spec.model_version == new and list(models.listings) == [new]


def test_when_the_store_moved_on_and_the_cache_has_no_pinned_version_it_is_dead(store, tmp_path):
    upload, secrets, cache = store
    old = upload(b"model one")
    new = upload(b"model two")  # (never downloaded: the cache has neither)
    desired = declared(tmp_path, f"{URL}?version={old[:16]}")
    (d,) = desired.deployments
    snapshot = Snapshot("x", {d.id: record(d, model_version=old)})  # recorded, but evicted

    resolved, models = resolve_models(desired, snapshot, cache, secrets)
    assert resolved.deployments[0].spec.model_version is None  # nothing it can start with
    assert models.unavailable == {
        d.id: f"{URL}: pinned to version {old[:16]}, the store has {new[:12]} and the model "
        f"cache has no {old[:16]}: pin ?version={new[:12]} (or no version) to take the "
        f"store's, or put version {old[:16]} back in the store"
    }
    assert "\n" not in models.unavailable[d.id] and not models.warnings


def test_a_store_that_cannot_be_read_keeps_a_cached_version_only_if_it_matches_the_pin(
    store, tmp_path
):
    upload, secrets, cache = store
    version = upload(b"model one")
    cache.fetch(list_artifact(URL, "default", secrets))
    nowhere = "ai://nobody/churn/1"  # (no such secret: the store cannot be read)
    for pin, goes_on in ((version[:12], True), ("0" * 12, False)):
        desired = declared(tmp_path, f"{nowhere}?version={pin}", name=f"repo-{pin}")
        (d,) = desired.deployments
        snapshot = Snapshot("x", {d.id: record(d, model_version=version)})
        resolved, models = resolve_models(desired, snapshot, cache, secrets)
        if goes_on:
            assert resolved.deployments[0].spec.model_version == version
            (warning,) = models.warnings
            assert "no object-store secret nobody" in warning and "goes on" in warning
        else:
            assert resolved.deployments[0].spec.model_version is None
            assert "no object-store secret nobody" in models.unavailable[d.id]


def test_a_changed_pin_is_a_changed_url_that_replaces_the_containers(store, tmp_path):
    upload, secrets, cache = store
    version = upload(b"model one")
    hashes = set()
    for digits in (12, 13):
        desired = declared(tmp_path, f"{URL}?version={version[:digits]}", name=f"r{digits}")
        resolved, _ = resolve_models(desired, Snapshot("x", {}), cache, secrets)
        assert resolved.deployments[0].spec.model_version == version  # the same model
        hashes.add(config_hash(resolved.deployments[0]))
    assert len(hashes) == 2


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"{URL}?version=0123456789a", "at least 12 hex digits"),  # 11: shorter than plan's
        (f"{URL}?version=0123456789ag", "at least 12 hex digits"),
        (f"{URL}?version=0123456789ab&version=0123456789ab", "once"),
        (f"{URL}?version=0123456789ab&x=1", "no user, port or query but ?version=<hex>"),
        ("s3://bucket/churn/1?x=1", "no user, port or query but ?version=<hex>"),
    ],
)
def test_a_bad_pin_is_one_line(url: str, problem: str):
    found = store_url_problem(url)
    assert found is not None and problem in found and "\n" not in found


def test_the_pin_is_no_part_of_where_the_model_is():
    parsed = parse_store_url(f"{URL}?version=0123456789AB")
    assert (parsed.name, parsed.path, parsed.pin) == ("models", "churn/1", "0123456789ab")
    https = parse_store_url("https://files.example/m/model.bin?sig=a%2Fb&version=0123456789ab")
    assert https.pin == "0123456789ab"
    assert https.fetched == "https://files.example/m/model.bin?sig=a%2Fb"
