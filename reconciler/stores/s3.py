"""S3 (and S3-compatible servers) through boto3: what is under a model's path, and its bytes.

An artifact names a folder, as AI Core's do (`ai://<secret>/churn/1` is every object under
`<pathPrefix>/churn/1/` in the secret's bucket): `listing` reads it with ListObjectsV2 and
gives each object's key, size and ETag, and `Listing.version` is a digest of all of them, the
artifact's version for the config hash (an object uploaded again under the same key changes
it). `Location.read` gets a byte range of one object with a ranged GetObject, only while its
ETag is the one listed (If-Match). Errors are one line naming the store, the path and what to
do (`StoreError`), never a traceback and never a credential.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..manifests.store_urls import parse_store_url
from .listing import ChangedWhileReading, Listing, StoredObject, StoreError, one_line
from .secrets import ObjectStoreSecret, ObjectStoreSecrets

CONNECT_SECONDS = 5.0
READ_SECONDS = 20.0  # without a byte: a hung store fails a pass in about a minute, not 3
ATTEMPTS = 3
DEFAULT_REGION = "us-east-1"  # what S3-compatible servers take when none is said
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Location:
    """Where an artifact's objects are: a secret (credentials, bucket, endpoint) and a key
    prefix in its bucket."""

    secret: ObjectStoreSecret
    prefix: str  # no leading '/', no trailing '/'
    ranges: bool = True  # (S3 reads any byte range of an object)
    checksums: bool = True  # a single-part upload's ETag is its MD5

    @property
    def identity(self) -> str:
        s = self.secret
        who = hashlib.sha256(s.access_key_id.encode()).hexdigest()[:16]  # (never shown as is)
        return f"s3 {s.endpoint or 'aws'} {s.bucket} {self.prefix} as {who}"

    def describe(self) -> str:
        where = self.secret.endpoint or "AWS S3"
        return f"s3://{self.secret.bucket}/{self.prefix} at {where} (secret {self.secret.name})"

    def read(self, obj: StoredObject, start: int, end: int) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = client(self.secret).get_object(
                Bucket=self.secret.bucket,
                Key=obj.key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=f'"{obj.etag}"',
            )
            body = answer["Body"]
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise ChangedWhileReading(
                    f"{self.describe()}: {obj.key} changed or went while it was downloaded: "
                    "the next pass lists it again"
                ) from None
            raise StoreError(f"{self.describe()}: reading {obj.key}: {_explain(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(
                f"{self.describe()}: reading {obj.key}: the store does not answer "
                f"({one_line(exc)}): check that it is up"
            ) from None


def locate(url: str, resource_group: str, secrets: ObjectStoreSecrets) -> Location:
    """Where an `ai://` or `s3://` artifact URL of a resource group points. Raises StoreError
    naming the secret (or bucket) and what to do."""
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise StoreError(f"{url}: {exc}") from None
    if parsed.scheme == "ai":
        secret = secrets.get(resource_group, parsed.name)
        if secret is None:
            raise StoreError(
                f"{url}: no object-store secret {parsed.name} in resource group "
                f"{resource_group}: add it with `reconciler secrets objectstore add "
                f"{parsed.name} --bucket ... -g {resource_group}`"
            )
        prefix = "/".join(p for p in (secret.path_prefix.strip("/"), parsed.path) if p)
        return Location(secret, prefix)
    matching = [s for s in secrets.list(resource_group) if s.bucket == parsed.name]
    if not matching:
        raise StoreError(
            f"{url}: no object-store secret of resource group {resource_group} is for bucket "
            f"{parsed.name}: add one with `reconciler secrets objectstore add NAME --bucket "
            f"{parsed.name} -g {resource_group}`"
        )
    return Location(matching[0], parsed.path)


@functools.lru_cache(maxsize=64)
def client(secret: ObjectStoreSecret) -> Any:
    """A boto3 S3 client for the secret: its endpoint (path-style addressing, as S3-compatible
    servers want), region, credentials, SigV4, bounded timeouts and retries. Made once per
    secret (a client takes 0.1-0.2 s to make; they are thread-safe), a changed secret is
    another key."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        connect_timeout=CONNECT_SECONDS,
        read_timeout=READ_SECONDS,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path" if secret.endpoint else "auto"},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=secret.endpoint,
        region_name=secret.region or DEFAULT_REGION,
        aws_access_key_id=secret.access_key_id,
        aws_secret_access_key=secret.secret_access_key,
        verify=secret.verify_ssl,
        config=config,
    )


def listing(location: Location, s3: Any | None = None) -> Listing:
    """Every object under the location's prefix (a folder), or the one object it names.
    Raises StoreError."""
    s3 = s3 or client(location.secret)
    found = list(_objects(s3, location))
    if not found:
        raise StoreError(f"{location.describe()}: no object there: check the artifact's path")
    return Listing(location, tuple(sorted(found, key=lambda o: o.key)))


def _objects(s3: Any, location: Location) -> Iterator[StoredObject]:
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = location.prefix
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=location.secret.bucket, Prefix=f"{prefix}/" if prefix else ""
        )
        found = False
        for page in pages:
            for item in page.get("Contents") or ():
                found = True
                etag = item.get("ETag")
                if etag is None:  # (some S3-compatible servers list without it: asked)
                    etag = s3.head_object(Bucket=location.secret.bucket, Key=item["Key"])["ETag"]
                yield StoredObject(item["Key"], int(item["Size"]), _etag(etag))
        if prefix and not found:  # the path may name one object rather than a folder
            try:
                head = s3.head_object(Bucket=location.secret.bucket, Key=prefix)
            except ClientError as exc:
                if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                    raise
            else:
                yield StoredObject(prefix, int(head["ContentLength"]), _etag(head["ETag"]))
    except ClientError as exc:
        raise StoreError(f"{location.describe()}: {_explain(exc)}") from None
    except BotoCoreError as exc:
        raise StoreError(
            f"{location.describe()}: the store does not answer ({one_line(exc)}): check the "
            "secret's endpoint and that the store is up"
        ) from None


def _etag(value: str) -> str:
    return value.strip('"')


def _code(exc: Any) -> str:
    return str((exc.response or {}).get("Error", {}).get("Code", ""))


_EXPLAINED = {
    "NoSuchBucket": "the bucket does not exist: check the secret's bucket",
    "InvalidAccessKeyId": "the store does not know the access key: check the secret's "
    "AWS_ACCESS_KEY_ID",
    "NotSignedUp": "the store does not know the access key: check the secret's AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the store refused the signature: check the secret's "
    "AWS_SECRET_ACCESS_KEY",
    "AccessDenied": "access denied: the secret's credentials may not read there",
    "403": "access denied: check the secret's credentials",
}


def _explain(exc: Any) -> str:
    code = _code(exc)
    return _EXPLAINED.get(code) or f"{code or 'error'}: {one_line(exc)}"
