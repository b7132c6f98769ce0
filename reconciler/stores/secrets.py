"""Object-store secrets: where a model store is and how to sign in to it, outside git.

AI Core's `/v2/admin/objectStoreSecrets`: a secret has a name (unique within its resource
group), a type (S3), a bucket, an optional endpoint (an S3-compatible server), region and path
prefix, and credentials (`data`: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). A manifest names a
secret only by name, in an `ai://<secret>/<path>` artifact URL.

They live in a file beside the API clients, `~/.config/reconciler/<instance>/objectstores.json`,
written atomically with mode 0600 (as `~/.aws/credentials` is kept), and read only when only
this user may read it: a file others could read is refused with what to do, never used. The
credentials are never printed, logged, recorded in state or plans, or returned by the API:
`public()` is what may be shown.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import config_dir, write_atomic

FORMAT_VERSION = 1
FILE = "objectstores.json"
TYPES = ("S3",)
# AI Core's secret names: lower-case letters, digits and '-', at most 233 characters.
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,231}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def default_path(instance: str) -> Path:
    return config_dir(instance) / FILE


@dataclass(frozen=True)
class ObjectStoreSecret:
    name: str
    resource_group: str
    bucket: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    type: str = "S3"
    endpoint: str | None = None  # an S3-compatible server; None: AWS
    region: str | None = None
    path_prefix: str = ""
    verify_ssl: bool = True

    def public(self) -> dict[str, Any]:
        """What may be shown of it (AI Core's listing): everything but the credentials."""
        return {
            "name": self.name,
            "resourceGroup": self.resource_group,
            "type": self.type,
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "region": self.region,
            "pathPrefix": self.path_prefix,
            "verifySsl": self.verify_ssl,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.public().items() if k not in ("name", "resourceGroup")},
            "data": {
                "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            },
        }

    @classmethod
    def from_json(cls, name: str, group: str, data: Mapping[str, Any]) -> ObjectStoreSecret:
        creds = data.get("data") or {}
        return cls(
            name=name,
            resource_group=group,
            bucket=str(data["bucket"]),
            access_key_id=str(creds.get("AWS_ACCESS_KEY_ID", "")),
            secret_access_key=str(creds.get("AWS_SECRET_ACCESS_KEY", "")),
            type=str(data.get("type") or "S3"),
            endpoint=data.get("endpoint") or None,
            region=data.get("region") or None,
            path_prefix=str(data.get("pathPrefix") or ""),
            verify_ssl=bool(data.get("verifySsl", True)),
        )


def check(secret: ObjectStoreSecret) -> None:
    """Raises UserError naming the field that is wrong and what it takes."""
    if not _NAME.match(secret.name):
        raise UserError(
            f"object-store secret name {secret.name!r}: use lower-case letters, digits and "
            "'-' (at most 233), as AI Core does"
        )
    if secret.type not in TYPES:
        raise UserError(f"object-store secret {secret.name}: type {secret.type!r} is not S3")
    if not _BUCKET.match(secret.bucket):
        raise UserError(
            f"object-store secret {secret.name}: bucket {secret.bucket!r} is not an S3 bucket "
            "name (3-63 lower-case letters, digits, '.' and '-')"
        )
    if secret.endpoint and not re.match(r"^https?://[^\s/]+(/\S*)?$", secret.endpoint):
        raise UserError(
            f"object-store secret {secret.name}: endpoint {secret.endpoint!r} is not an "
            "http(s):// URL"
        )
    if not secret.access_key_id or not secret.secret_access_key:
        raise UserError(
            f"object-store secret {secret.name}: both AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY are needed"
        )


class ObjectStoreSecrets:
    """The secrets file: read on every call (the API and the CLI may both change it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{self.path} is not a regular file: move it away")
        if st.st_mode & 0o077 or st.st_uid != os.getuid():
            raise UserError(
                f"{self.path} may be read by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                f"chmod 600 {self.path}, and rotate the credentials it holds"
            )
        try:
            data = json.loads(self.path.read_text())
            groups = data["secrets"]
            if not isinstance(groups, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{self.path} cannot be read ({exc}): restore it or remove it"
            ) from None
        return groups

    def list(self, resource_group: str | None = None) -> list[ObjectStoreSecret]:
        return [
            ObjectStoreSecret.from_json(name, group, data)
            for group, secrets in sorted(self._read().items())
            if resource_group is None or group == resource_group
            for name, data in sorted(secrets.items())
        ]

    def get(self, resource_group: str, name: str) -> ObjectStoreSecret | None:
        data = self._read().get(resource_group, {}).get(name)
        return ObjectStoreSecret.from_json(name, resource_group, data) if data else None

    def put(self, secret: ObjectStoreSecret, replace: bool = False) -> None:
        """Add it (or replace one of that name when `replace`); UserError if it exists."""
        check(secret)
        groups = self._read()
        secrets = groups.setdefault(secret.resource_group, {})
        if secret.name in secrets and not replace:
            raise UserError(
                f"object-store secret {secret.name} exists in resource group "
                f"{secret.resource_group}: remove it first, or update it"
            )
        secrets[secret.name] = secret.to_json()
        self._write(groups)

    def remove(self, resource_group: str, name: str) -> bool:
        groups = self._read()
        if name not in groups.get(resource_group, {}):
            return False
        del groups[resource_group][name]
        if not groups[resource_group]:
            del groups[resource_group]
        self._write(groups)
        return True

    def _write(self, groups: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps({"formatVersion": FORMAT_VERSION, "secrets": groups}, indent=2)
        write_atomic(self.path, text + "\n", mode=0o600)
