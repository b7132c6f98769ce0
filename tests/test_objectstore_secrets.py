"""Object-store secrets outside git (issue 18): `reconciler secrets objectstore add|list|
remove`, a file of mode 0600 that is refused when others may read it, and credentials that
are never printed or taken as arguments."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from reconciler.errors import UserError
from reconciler.stores.secrets import ObjectStoreSecret, ObjectStoreSecrets
from tests.conftest import cli_process
from tests.engine_support import make_root

KEY_ID = "AKIAEXAMPLEKEYID0001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    root, _ = make_root(tmp_path)
    return root, tmp_path / "secrets" / "objectstores.json"


def run(root: Path, path: Path, *args: str, creds: bool = True):
    env = {**os.environ}
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    if creds:
        env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)
    return cli_process(
        "secrets", "objectstore", *args, "--root", root, "--secrets-file", path, env=env
    )


def test_add_list_remove_and_the_credentials_are_never_shown(setup):
    root, path = setup
    added = run(
        root, path, "add", "models-store", "--bucket", "ml-models", "--endpoint",
        "http://127.0.0.1:9000/", "--path-prefix", "/team-a/", "-g", "default",
    )  # fmt: skip
    assert added.code == 0, added.err
    assert "ai://models-store/<path>" in added.out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())["secrets"]["default"]["models-store"]
    assert stored["data"] == {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    assert stored["pathPrefix"] == "team-a" and stored["endpoint"] == "http://127.0.0.1:9000"

    listed = run(root, path, "list")
    as_json = run(root, path, "list", "--json")
    for out in (added, listed, as_json):
        text = out.out + out.err
        assert KEY_ID not in text and SECRET not in text, text
    assert "models-store" in listed.out and "s3://ml-models/team-a" in listed.out
    (item,) = json.loads(as_json.out)["objectStoreSecrets"]
    assert item["bucket"] == "ml-models" and "data" not in item

    again = run(root, path, "add", "models-store", "--bucket", "ml-models")
    assert again.code != 0 and "exists in resource group default" in again.err
    replaced = run(root, path, "add", "models-store", "--bucket", "ml-models-2", "--replace")
    assert replaced.code == 0, replaced.err
    assert "ml-models-2" in run(root, path, "list").out

    assert run(root, path, "remove", "models-store").code == 0
    gone = run(root, path, "remove", "models-store")
    assert gone.code != 0 and "no object-store secret models-store" in gone.err
    assert "no object-store secrets" in run(root, path, "list").out


def test_bad_input_is_one_line_and_writes_nothing(setup):
    root, path = setup
    for args, says in (
        (("Bad_Name", "--bucket", "ml-models"), "use lower-case letters"),
        (("good-name", "--bucket", "B"), "is not an S3 bucket name"),
        (("good-name", "--bucket", "ml-models", "--endpoint", "ftp://x"), "http(s):// URL"),
    ):
        out = run(root, path, "add", *args)
        assert out.code != 0 and says in out.err, out.err
        assert "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1, out.err
    assert not path.exists()


def test_credentials_are_asked_for_not_taken_as_arguments(setup):
    root, path = setup
    asked = cli_process(
        "secrets", "objectstore", "add", "store-a", "--bucket", "ml-models",
        "--root", root, "--secrets-file", path,
        input=f"{KEY_ID}\n{SECRET}\n",
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )  # fmt: skip
    assert asked.code == 0, asked.err
    assert SECRET not in asked.out + asked.err  # the secret's prompt does not echo it
    stored = ObjectStoreSecrets(path).get("default", "store-a")
    assert stored is not None and stored.secret_access_key == SECRET
    assert SECRET not in repr(stored) and KEY_ID not in repr(stored)


def test_a_file_others_may_read_is_refused(setup):
    _, path = setup
    store = ObjectStoreSecrets(path)
    store.put(ObjectStoreSecret("store-a", "default", "ml-models", KEY_ID, SECRET))
    path.chmod(0o644)
    with pytest.raises(UserError, match=r"may be read by other users .* chmod 600"):
        store.list()


ARTIFACT = """
apiVersion: reconciler/v1
kind: Artifact
metadata: {{name: churn-model}}
spec: {{kind: model, url: "{url}", scenarioId: tiny}}
"""


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ai://models/churn/1", None),
        ("s3://ml-models/churn/1", None),
        ("ai://Models_X/churn/1", "ai:// object-store secret 'Models_X' is not a valid name"),
        ("ai://models/", "must name a folder or object"),
        ("ai://models/a/../b", "must name a folder or object"),
        ("s3://x/churn", "s3:// bucket 'x' is not a valid name"),
        ("ai://key:secret@models/churn", "takes object-store secret and a path only"),
    ],
)
def test_validate_checks_the_form_of_object_store_urls(tmp_path: Path, url: str, says: str | None):
    """The secret and the objects are outside git: `validate` checks only the URL's form, and
    names the scheme and the part that is wrong."""
    root, _ = make_root(tmp_path)
    (root / "manifests/artifact.yaml").write_text(ARTIFACT.format(url=url))
    out = cli_process("validate", "--root", root)
    if says is None:
        assert out.code == 0, out.out + out.err
    else:
        assert out.code != 0 and says in out.out + out.err, out.out + out.err
        assert "key:secret" not in out.out + out.err  # credentials in a URL are not echoed
