"""Reading an object store (issue 18) against a real S3-compatible server (s3s-fs on
loopback, tests/s3_support.py), through boto3: where an artifact URL points, what is there and
its version, and one clear line for each way it can be wrong, never with a credential in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.stores.listing import Listing
from reconciler.stores.s3 import Location, StoreError, listing, locate
from reconciler.stores.secrets import ObjectStoreSecret, ObjectStoreSecrets
from tests.s3_support import ACCESS_KEY, SECRET_KEY, S3Server


@pytest.fixture
def stored(s3_server: S3Server, tmp_path: Path) -> tuple[S3Server, str, ObjectStoreSecrets]:
    """A bucket holding a model folder `team-a/churn/1/` (two files) and the secret for it."""
    bucket = s3_server.bucket()
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="team-a/churn/1/model.joblib", Body=b"m" * 1000)
    s3.put_object(Bucket=bucket, Key="team-a/churn/1/meta.json", Body=b'{"v": 1}')
    s3.put_object(Bucket=bucket, Key="team-a/churn/10/model.joblib", Body=b"other")
    secrets = ObjectStoreSecrets(tmp_path / "objectstores.json")
    secrets.put(
        ObjectStoreSecret(
            "models", "default", bucket, ACCESS_KEY, SECRET_KEY,
            endpoint=s3_server.endpoint, path_prefix="team-a",
        )
    )  # fmt: skip
    return s3_server, bucket, secrets


def test_an_ai_url_lists_its_folder_and_a_new_upload_changes_the_version(stored):
    server, bucket, secrets = stored
    location = locate("ai://models/churn/1", "default", secrets)
    assert location.prefix == "team-a/churn/1"
    found = listing(location)
    keys = [o.key for o in found.objects]
    assert keys == ["team-a/churn/1/meta.json", "team-a/churn/1/model.joblib"]  # not churn/10
    assert found.size == 1008
    assert listing(location).version == found.version  # stable

    server.client().put_object(Bucket=bucket, Key="team-a/churn/1/model.joblib", Body=b"n" * 1000)
    assert listing(location).version != found.version  # same key and size, new content

    by_bucket = locate(f"s3://{bucket}/team-a/churn/1", "default", secrets)
    assert listing(by_bucket).objects == listing(location).objects
    one = listing(locate("ai://models/churn/1/meta.json", "default", secrets))
    assert [o.key for o in one.objects] == ["team-a/churn/1/meta.json"]


@pytest.mark.parametrize(
    ("change", "url", "says"),
    [
        ({}, "ai://models/churn/9", "no object there: check the artifact's path"),
        ({}, "ai://nobody/churn/1", "no object-store secret nobody in resource group default"),
        ({}, "s3://other-bucket/x", "no object-store secret of resource group default is for"),
        ({"bucket": "no-such-bucket"}, "ai://models/churn/1", "the bucket does not exist"),
        ({"secret_access_key": "wrong-secret-key"}, "ai://models/churn/1", "signature"),
        ({"access_key_id": "WRONGKEYID"}, "ai://models/churn/1", "access key"),
        ({"endpoint": "http://127.0.0.1:1"}, "ai://models/churn/1", "does not answer"),
    ],
)
def test_each_way_a_store_can_be_wrong_is_one_line_without_credentials(
    stored, tmp_path: Path, change: dict[str, str], url: str, says: str
):
    _, _, secrets = stored
    secret = secrets.get("default", "models")
    assert secret is not None
    fields = {**secret.__dict__, **change}
    broken = ObjectStoreSecrets(tmp_path / "broken.json")
    broken.put(ObjectStoreSecret(**fields))
    with pytest.raises(StoreError) as caught:
        listing(locate(url, "default", broken))
    message = str(caught.value)
    assert says in message, message
    assert "\n" not in message
    for value in (SECRET_KEY, ACCESS_KEY, "wrong-secret-key"):
        assert value not in message, message


def test_the_version_names_where_and_as_whom_the_objects_are_read(stored, tmp_path: Path):
    """The same keys, sizes and ETags from another store, bucket or credential are another
    version: a cached copy is never handed to a deployment whose store merely claims them
    (a tenant's own server could claim anyone's ETags)."""
    _, _, secrets = stored
    found = listing(locate("ai://models/churn/1", "default", secrets))
    secret = secrets.get("default", "models")
    assert secret is not None
    for change in (
        {"endpoint": "http://127.0.0.1:9"},
        {"bucket": "another-bucket"},
        {"access_key_id": "ANOTHERKEY"},
    ):
        other = Location(ObjectStoreSecret(**{**secret.__dict__, **change}), found.location.prefix)
        claimed = Listing(other, found.objects)  # the very same objects, claimed elsewhere
        assert claimed.version != found.version, change
    same = ObjectStoreSecret(**{**secret.__dict__, "name": "alias", "resource_group": "team-b"})
    assert Listing(Location(same, found.location.prefix), found.objects).version == found.version
    assert ACCESS_KEY not in found.location.identity
