"""S3 (and S3-compatible servers) through boto3: what is under a model's path, and its bytes.

An artifact names a folder, as AI Core's do (`ai://<secret>/churn/1` is every object under
`<pathPrefix>/churn/1/` in the secret's bucket): `listing` reads it with ListObjectsV2 and
gives each object's key, size and ETag, and `Listing.version` is a digest of all of them, the
artifact's version for the config hash (an object uploaded again under the same key changes
it). Errors are one line naming the store, the path and what to do (`StoreError`), never a
traceback and never a credential.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..manifests.store_urls import parse_store_url
from .secrets import ObjectStoreSecret, ObjectStoreSecrets

CONNECT_SECONDS = 5.0
READ_SECONDS = 60.0
ATTEMPTS = 3
DEFAULT_REGION = "us-east-1"  # what S3-compatible servers take when none is said


class StoreError(UserError):
    """An object store that cannot be read as asked: wrong secret, missing object, down."""


@dataclass(frozen=True)
class Location:
    """Where an artifact's objects are: a secret (credentials, bucket, endpoint) and a key
    prefix in its bucket."""

    secret: ObjectStoreSecret
    prefix: str  # no leading '/', no trailing '/'

    def describe(self) -> str:
        where = self.secret.endpoint or "AWS S3"
        return f"s3://{self.secret.bucket}/{self.prefix} at {where} (secret {self.secret.name})"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Listing:
    location: Location
    objects: tuple[StoredObject, ...]

    @property
    def version(self) -> str:
        """A digest of every object's key (relative to the prefix), size and ETag."""
        base = len(self.location.prefix) + 1 if self.location.prefix else 0
        rows = [[o.key[base:], o.size, o.etag] for o in self.objects]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)


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


def one_line(exc: BaseException) -> str:
    """An error's text on one line, cut to 300 characters."""
    return re.sub(r"\s+", " ", str(exc)).strip()[:300]
