"""AI Core's /v2/admin/objectStoreSecrets on a real `reconciler serve`, with SAP's own SDK
(issue 18): create, list, get, modify, delete in the caller's resource group; credentials
never returned; another tenant sees and touches nothing; a tenant cannot make the reconciler
call an endpoint the operator did not allow (it would send requests there from its host)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ai_api_client_sdk.exception import AIAPIInvalidRequestException, AIAPINotFoundException

from tests.engine_support import make_root, settings
from tests.test_ai_api import sdk, serve_api

KEYS = {
    "AWS_ACCESS_KEY_ID": "AKIAAPITESTKEY000001",
    "AWS_SECRET_ACCESS_KEY": "api-secret-value-xyz",
}
ALLOWED = "http://10.9.8.7:9000"


@pytest.fixture
def served(tmp_path: Path, monkeypatch):
    """`serve_api` (two tenants: team-a in default, team-b in other) on a root whose Settings
    allow one object-store endpoint."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    root, instance = make_root(tmp_path)
    (root / "manifests/settings.yaml").write_text(
        settings(instance, f"  objectStoreEndpoints: [{ALLOWED}]\n")
    )
    server, a, b, _ = serve_api(root, tmp_path)
    yield root, instance, server, a, b, tmp_path
    server.stop()


def test_the_sdk_manages_a_groups_object_store_secrets_and_never_sees_the_keys(served):
    root, instance, server, a, b, tmp_path = served
    mine = sdk(server, a)
    created = mine.object_store_secrets.create(
        name="models", type="S3", data=KEYS, bucket="ml-models", endpoint=ALLOWED,
        region="eu-central-1", path_prefix="team-a",
    )  # fmt: skip
    assert created.message == "Secret has been created"
    listed = mine.object_store_secrets.query()
    assert [s.name for s in listed.resources] == ["models"]
    one = mine.object_store_secrets.get("models")
    assert one.metadata["storage.ai.sap.com/bucket"] == "ml-models"
    assert one.metadata["storage.ai.sap.com/pathPrefix"] == "team-a"

    stored = tmp_path / "config/reconciler" / instance / "objectstores.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert json.loads(stored.read_text())["secrets"]["default"]["models"]["data"] == KEYS
    assert not any(
        KEYS["AWS_SECRET_ACCESS_KEY"] in p.read_text(errors="replace")
        for p in root.rglob("*")
        if p.is_file()
    )  # fmt: skip  (not in git)

    mine.object_store_secrets.modify(
        name="models", type="S3", data=KEYS, bucket="ml-models-2", endpoint=ALLOWED
    )
    assert (
        mine.object_store_secrets.get("models").metadata["storage.ai.sap.com/bucket"]
        == "ml-models-2"
    )

    theirs = sdk(server, b, "other")
    assert theirs.object_store_secrets.query().count == 0
    with pytest.raises(AIAPINotFoundException):
        theirs.object_store_secrets.get("models")
    with pytest.raises(AIAPINotFoundException):
        theirs.object_store_secrets.delete("models")
    mine.object_store_secrets.delete("models")
    assert mine.object_store_secrets.query().count == 0


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:2375", "http://169.254.169.254", "unix:///var/run/docker.sock", "10.0.0.1"],
)
def test_a_tenant_cannot_point_the_reconciler_at_an_endpoint_not_allowed(served, endpoint):
    _, _, server, a, _, _ = served
    with pytest.raises(AIAPIInvalidRequestException, match="objectStoreEndpoints"):
        sdk(server, a).object_store_secrets.create(
            name="sneaky", type="S3", data=KEYS, bucket="ml-models", endpoint=endpoint
        )
    assert sdk(server, a).object_store_secrets.query().count == 0
