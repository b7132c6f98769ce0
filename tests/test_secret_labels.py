"""Secret values in what the tool writes (issue 13, finding 9a).

Container labels, container names, the state snapshot and plan output carry hashes of the
identity fields. A short secret must not be recoverable from them by hashing guesses: secret
values enter only as HMAC-SHA256 under the instance's key, kept outside the GitOps root with
mode 0600. Containers labelled by earlier releases (unsealed digests) are still recognised as
unchanged, so upgrading replaces nothing.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from reconciler.manifests.desired import desired_state
from tests.conftest import cli
from tests.engine_support import Host, configuration, deployment, docs, settings

SECRET = "1234"

SECRET_TEMPLATE = f"""
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: secret-serving
spec:
  scenarioId: tiny
  inputs:
    parameters:
      - {{name: version, default: "1"}}
  container:
    image: reconciler-test/busybox:2
    command: [/bin/serve]
    env:
      - {{name: KEY, value: "{SECRET}", secret: true}}
      - {{name: DB_PASSWORD, value: "{SECRET}"}}
      - {{name: VERSION, value: "{{{{ inputs.parameters.version }}}}"}}
    resourcePlan: starter
    startupTimeout: 30
    stopTimeout: 2
"""


def manifests(version: str = "1") -> str:
    return docs(
        configuration(f"secret-v{version}", template="secret-serving", version=version),
        deployment("secret", f"secret-v{version}"),
    )


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The instance keys go here, not into the home folder of whoever runs the tests."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def secret_host(host: Host, config_home: Path) -> Host:
    host.write(SECRET_TEMPLATE, "templates/secret.yaml")
    host.write(manifests())
    return host


def guessable(name: str, value: str) -> list[str]:
    """Unkeyed SHA-256 digests someone could compute from a guess of the value, as the
    prefixes the tool writes (10 hex characters per field, 8 in container names)."""
    texts = [
        f'env.{name}="{value}"',  # what earlier releases hashed into reconciler.fields
        f"env.{name}={value}",
        f"{name}={value}",
        f'{name}="{value}"',
        value,
        f'"{value}"',
    ]
    return [hashlib.sha256(t.encode()).hexdigest()[:8] for t in texts]


def unsealed_config_hash(root: Path, image_id: str) -> str:
    """The config hash earlier releases wrote: SHA-256 over the plain identity fields."""
    (d,) = desired_state(root).deployments
    canonical = json.dumps(
        {"v": "1", "fields": d.spec.identity_fields(), "imageId": image_id},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def written(host: Host) -> str:
    """Everything the tool wrote that others read: labels, container names, state, plan."""
    containers = host.containers()
    parts = [json.dumps(c["Labels"]) + " ".join(c["Names"]) for c in containers]
    parts.append((host.root / "state/snapshot.json").read_text())
    parts.append(host.cli("plan", "--json").out)
    return "\n".join(parts)


@pytest.mark.engine
def test_a_short_secret_cannot_be_guessed_back_from_what_is_written(secret_host, config_home):
    host = secret_host
    host.reconcile()
    container = host.container_of("secret")
    labels = container["Labels"]
    text = written(host)
    for name in ("KEY", "DB_PASSWORD"):
        for prefix in guessable(name, SECRET):
            assert prefix not in text, (name, prefix)
    image_id = labels["reconciler.image-id"]
    assert unsealed_config_hash(host.root, image_id)[:8] not in text
    assert labels["reconciler.hash-version"] == "2"
    # The key: per instance, outside the GitOps root, readable by its owner only.
    key = config_home / "reconciler" / host.instance / "label-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not key.resolve().is_relative_to(host.root.resolve())
    # And nothing is recreated by the new hashes: a second pass changes nothing.
    before = (host.root / "state/snapshot.json").read_bytes()
    result = host.cli("plan", "--detailed-exitcode")
    assert result.code == 0 and "Plan: no changes." in result.out, result.out + result.err
    assert "converged: nothing to change" in host.reconcile().out
    assert (host.root / "state/snapshot.json").read_bytes() == before
    assert host.container_of("secret")["Id"] == container["Id"]


@pytest.mark.engine
def test_containers_labelled_by_an_earlier_release_are_kept(secret_host, monkeypatch):
    """An earlier release labelled secret values unsealed (hash version 1). Upgrading must not
    replace, settle or re-record such a container; its next configuration change seals."""
    from reconciler.manifests.spec import UNSEALED

    host = secret_host
    with monkeypatch.context() as m:  # the earlier release: no key, plain digests
        m.setattr("reconciler.core.reconcile.instance_hashing", lambda instance: UNSEALED)
        host.reconcile()
    old = host.container_of("secret")
    fields = json.loads(old["Labels"]["reconciler.fields"])
    assert old["Labels"]["reconciler.hash-version"] == "1"
    assert fields["env.KEY"] == hashlib.sha256(b'env.KEY="1234"').hexdigest()[:10]
    assert old["Labels"]["reconciler.config-hash"] == unsealed_config_hash(
        host.root, old["Labels"]["reconciler.image-id"]
    )
    before = (host.root / "state/snapshot.json").read_bytes()
    result = host.cli("plan", "--detailed-exitcode")
    assert result.code == 0 and "Plan: no changes." in result.out, result.out + result.err
    assert "converged: nothing to change" in host.reconcile().out
    assert (host.root / "state/snapshot.json").read_bytes() == before
    assert host.container_of("secret")["Id"] == old["Id"]
    # A real change replaces it, names only what changed, and labels the new one sealed.
    host.write(
        docs(
            configuration("secret-v1", template="secret-serving", version="1"),
            configuration("secret-v2", template="secret-serving", version="2"),
            deployment("secret", "secret-v2"),
        )
    )
    (change,) = host.plan()["changes"]
    assert change["action"] == "replace"
    assert change["cause"] == "config changed: env.VERSION (configuration secret-v1 → secret-v2)"
    host.reconcile()
    new = host.container_of("secret")
    assert new["Id"] != old["Id"] and new["Labels"]["reconciler.hash-version"] == "2"
    assert fields["env.KEY"] not in new["Labels"]["reconciler.fields"]


def test_the_key_is_made_once_private_and_refused_when_open(gitops, config_home):
    from reconciler.core.record import label_key, label_key_path
    from reconciler.errors import UserError

    # Only hashing a secret value needs the key: validate makes none.
    root = gitops(
        {
            "templates/secret.yaml": SECRET_TEMPLATE,
            "manifests/app.yaml": manifests(),
            "manifests/settings.yaml": settings("keyless"),
        }
    )
    result = cli("validate", "--root", root)
    assert result.code == 0, result.err
    assert not config_home.exists()
    first = label_key("inst-a")
    assert label_key("inst-a") == first and len(first) == 32
    assert label_key("inst-b") != first  # one key per instance
    path = label_key_path("inst-a")
    assert path.parent.parent == config_home / "reconciler"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["label-key"]  # no temp file left
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        label_key("inst-a")
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(UserError, match="is not a label key: delete it"):
        label_key("inst-a")
