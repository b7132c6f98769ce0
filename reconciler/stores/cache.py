"""The model cache on a host: an artifact's objects downloaded once, kept by version.

`fetch(listing)` makes `<root>/<version>/` hold the artifact's files (paths relative to its
prefix) and returns it; deployments mount it read-only at /mnt/models. The version is the
listing's digest of every key, size and ETag (reconciler.stores.s3), so two deployments of the
same model share one copy, a second start finds it at once, and an object uploaded again under
the same path is a new version (a new folder), never a changed one.

A download goes to a hidden folder beside the cache's entries (same file system), each object
with boto3's transfer manager (multi-part and parallel for large objects), checked against
its listed size and, for a single-part upload, its MD5 ETag; only a complete, checked folder is
renamed into place. A download that fails or is killed leaves no entry: its folder is removed
by the next fetch of that version (or `clean`). Fetches of one version take a lock, so that
concurrent passes download it once.

`evict(limit, keep)` removes the least recently used entries (their use time is touched on
every fetch) that no deployment uses until the cache is within `limit` bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .s3 import Listing, StoreError, client, one_line

COMPLETE = ".complete"  # written last in an entry: its presence says the entry is whole
PARTIAL = ".partial-"
LOCKS = ".locks"

Progress = Callable[[int, int], None]  # (bytes so far, bytes in all)


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, version: str) -> Path:
        return self.root / version

    def has(self, version: str) -> bool:
        return (self.path(version) / COMPLETE).is_file()

    def fetch(self, listing: Listing, progress: Progress | None = None, s3: Any = None) -> Path:
        """The artifact's folder in the cache, downloaded first if it is not there. Raises
        StoreError (nothing of the download is left)."""
        version = listing.version
        entry = self.path(version)
        with self._lock(version):
            if self.has(version):
                os.utime(entry / COMPLETE)  # used now: the last to be evicted
                return entry
            self._clean(version)
            partial = self.root / f"{PARTIAL}{version}-{uuid.uuid4().hex[:8]}"
            partial.mkdir(parents=True)
            try:
                self._download(listing, partial, progress, s3 or client(listing.location.secret))
                (partial / COMPLETE).write_text(f"{listing.location.describe()}\n")
                if entry.exists():  # a stale incomplete entry (an older release's)
                    shutil.rmtree(entry)
                partial.rename(entry)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
        return entry

    def _download(self, listing: Listing, into: Path, progress: Progress | None, s3: Any) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        location = listing.location
        folder = f"{location.prefix}/" if location.prefix else ""
        total, done = listing.size, 0
        config = TransferConfig()  # (boto3's defaults: parts of 8 MiB, 10 at a time)
        for obj in listing.objects:
            # A folder's objects keep their paths under it; one object named by the path is
            # the folder's one file.
            relative = (
                obj.key[len(folder) :] if obj.key.startswith(folder) else obj.key.split("/")[-1]
            )
            target = into / relative
            if not target.resolve().is_relative_to(into.resolve()):
                raise StoreError(f"{location.describe()}: object {obj.key!r} leaves its folder")
            target.parent.mkdir(parents=True, exist_ok=True)

            def step(count: int) -> None:
                nonlocal done
                done += count
                if progress is not None:
                    progress(done, total)

            try:
                s3.download_file(
                    location.secret.bucket, obj.key, str(target), Config=config, Callback=step
                )
            except (ClientError, BotoCoreError, OSError) as exc:
                full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
                hint = f": free space in {self.root}, or lower modelCacheSize" if full else ""
                raise StoreError(
                    f"{location.describe()}: downloading {obj.key} failed: {one_line(exc)}{hint}"
                ) from None
            _check(target, obj.size, obj.etag, location.describe(), obj.key)

    @contextlib.contextmanager
    def _lock(self, version: str) -> Iterator[None]:
        locks = self.root / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / version, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _clean(self, version: str) -> None:
        """Folders of downloads of this version that did not finish (killed midway)."""
        for left in self.root.glob(f"{PARTIAL}{version}-*"):
            shutil.rmtree(left, ignore_errors=True)

    def entries(self) -> list[tuple[str, int, float]]:
        """(version, bytes, last used) of every complete entry."""
        out = []
        if not self.root.is_dir():
            return out
        for entry in self.root.iterdir():
            marker = entry / COMPLETE
            if entry.name.startswith(".") or not marker.is_file():
                continue
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            out.append((entry.name, size, marker.stat().st_mtime))
        return out

    def evict(self, limit: int, keep: Iterable[str]) -> list[str]:
        """Remove least recently used entries not in `keep` until within `limit` bytes; the
        versions removed."""
        kept = set(keep)
        entries = sorted(self.entries(), key=lambda e: e[2])
        used = sum(size for _, size, _ in entries)
        removed = []
        for version, size, _ in entries:
            if used <= limit:
                break
            if version in kept:
                continue
            with self._lock(version):
                shutil.rmtree(self.path(version), ignore_errors=True)
            used -= size
            removed.append(version)
        return removed


def _check(path: Path, size: int, etag: str, where: str, key: str) -> None:
    """The file is what the store listed: its size, and its MD5 where the ETag is one (a
    single-part upload's; a multi-part ETag, `<md5>-<parts>`, is not a digest of the file)."""
    got = path.stat().st_size
    if got != size:
        raise StoreError(f"{where}: {key} came with {got} bytes, the store lists {size}")
    if len(etag) == 32 and "-" not in etag:
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1024 * 1024), b""):
                md5.update(chunk)
        if md5.hexdigest() != etag:
            raise StoreError(f"{where}: {key} does not match its ETag: downloaded damaged")
