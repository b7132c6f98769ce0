"""What a store says of an artifact, whatever the store: its objects (key, size, ETag), the
version they make together, and a `Source` that reads a byte range of one of them.

Every store (S3 and S3-compatible servers in reconciler.stores.s3, plain HTTPS downloads in
reconciler.stores.https) gives a `Listing`; the model cache (reconciler.stores.cache) downloads
from any of them the same way, in ranges, so that a download cut halfway resumes where it
stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import UserError


class StoreError(UserError):
    """A store that cannot be read as asked: wrong secret, missing object, down, slow."""


class ChangedWhileReading(StoreError):
    """The object is no longer the version listed (uploaded again since): the next pass lists
    it again and takes the new version."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str  # the store's entity tag, no quotes (S3: the MD5 of a single-part upload)


class Source(Protocol):
    """Where a listing's objects are read from."""

    @property
    def prefix(self) -> str:
        """The folder the objects' keys start with ('' for one object named by its URL)."""

    @property
    def identity(self) -> str:
        """What the objects are read from and as whom (store, bucket, prefix, credential id;
        no secret): part of the version, so that a cached copy is shared only by deployments
        that read the same objects the same way, never handed to a tenant whose store merely
        claims the same keys, sizes and ETags."""

    @property
    def checksums(self) -> bool:
        """Whether an ETag of 32 hex digits is the object's MD5 (S3's single-part uploads),
        checked after the download."""

    @property
    def ranges(self) -> bool:
        """Whether `read` takes any range (else only the whole object: no parts, no resume)."""

    def describe(self) -> str:
        """Where, in words for an error line (never a credential)."""

    def read(self, obj: StoredObject, start: int, end: int) -> Iterator[bytes]:
        """The object's bytes [start, end), as the listing knew it: raises ChangedWhileReading
        when it changed since, StoreError for anything else."""


@dataclass(frozen=True)
class Listing:
    location: Source
    objects: tuple[StoredObject, ...]

    @property
    def version(self) -> str:
        """A digest of where the objects are read from (`Source.identity`) and every object's
        key (relative to the prefix), size and ETag."""
        prefix = self.location.prefix
        base = len(prefix) + 1 if prefix else 0
        rows = [[o.key[base:], o.size, o.etag] for o in self.objects]
        return hashlib.sha256(json.dumps([self.location.identity, rows]).encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    def relative(self, obj: StoredObject) -> str:
        """The object's path in the model's folder: a folder's objects keep their paths under
        it; one object named by the artifact's path is the folder's one file."""
        prefix = self.location.prefix
        folder = f"{prefix}/" if prefix else ""
        if folder and obj.key.startswith(folder):
            return obj.key[len(folder) :]
        return obj.key.split("/")[-1]


def one_line(exc: BaseException) -> str:
    """An error's text on one line, cut to 300 characters."""
    return re.sub(r"\s+", " ", str(exc)).strip()[:300]
