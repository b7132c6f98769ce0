"""The model cache on a host: an artifact's objects downloaded once, kept by version.

`fetch(listing)` makes `<root>/<version>/` hold the artifact's files (paths relative to its
prefix) and returns it; deployments mount it read-only at /mnt/models. The version is the
listing's digest of every key, size and ETag (reconciler.stores.listing), so two deployments
of the same model share one copy, a second start finds it at once, and an object uploaded
again under the same path is a new version (a new folder), never a changed one.

A download goes to a hidden folder beside the cache's entries (`.partial-<version>`, same file
system), in parts of `PART` bytes read `PARALLEL` at a time from the store (ranged reads that
hold only while the object is the version listed), each written in place; every part done is
appended to the object's journal (`<file>.parts`). A download that fails or is killed keeps
that folder, never an entry: the next fetch of the version resumes it, reading only the parts
the journal lacks. Each object is checked against its listed size and, for a single-part
upload, its MD5 ETag; only a complete, checked folder is renamed into place. An object that
changed in the store meanwhile, or fails its check, is started again. Fetches of one version
take a lock, so that concurrent passes (and processes) download it once.

`evict(limit, keep)` removes the least recently used entries (their use time is touched on
every fetch) that no deployment uses until the cache is within `limit` bytes, and unfinished
downloads of versions nobody keeps.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from .listing import ChangedWhileReading, Listing, StoredObject, StoreError, one_line

COMPLETE = ".complete"  # written last in an entry: its presence says the entry is whole
PARTIAL = ".partial-"
JOURNAL = ".parts"  # beside a file being downloaded: the numbers of its parts written
LOCKS = ".locks"
USERS = ".users"  # <version>/<instance>: the instances that keep an entry (see `evict`)
PART = 8 * 1024 * 1024  # (boto3's transfer manager uses the same part size)
PARALLEL = 10  # parts read at a time (boto3's default concurrency)

Progress = Callable[[int, int], None]  # (bytes so far, bytes in all)


class CacheFull(StoreError):
    """The cache's disk is full: what was downloaded goes (it holds the space needed)."""


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, version: str) -> Path:
        return self.root / version

    def has(self, version: str) -> bool:
        return (self.path(version) / COMPLETE).is_file()

    def partial(self, version: str) -> Path:
        """Where a version's download is kept until it is complete."""
        return self.root / f"{PARTIAL}{version}"

    def fetch(self, listing: Listing, progress: Progress | None = None) -> Path:
        """The artifact's folder in the cache, downloaded first (or the rest of it) if it is
        not there. Raises StoreError: no entry is made, what was downloaded is kept for the
        next fetch (unless the store's object changed: then it goes)."""
        version = listing.version
        entry = self.path(version)
        with self._lock(version):
            if self.has(version):
                os.utime(entry / COMPLETE)  # used now: the last to be evicted
                return entry
            partial = self.partial(version)
            partial.mkdir(parents=True, exist_ok=True)
            try:
                _Download(listing, partial, progress, self.root).run()
            except (ChangedWhileReading, CacheFull):
                shutil.rmtree(partial, ignore_errors=True)
                raise
            (partial / COMPLETE).write_text(f"{listing.location.describe()}\n")
            if entry.exists():  # a stale incomplete entry (an older release's)
                shutil.rmtree(entry)
            partial.rename(entry)
        return entry

    @contextlib.contextmanager
    def _lock(self, version: str, wait: bool = True) -> Iterator[bool]:
        """The version's lock (across processes); yields False when `wait` is off and another
        holds it."""
        locks = self.root / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / version, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

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

    def evict(self, limit: int, keep: Iterable[str], user: str | None = None) -> list[str]:
        """Remove least recently used entries not in `keep` until within `limit` bytes, and
        unfinished downloads of versions not in `keep` that no fetch is busy with; the versions
        whose entries were removed.

        `user` (a reconciler instance): several instances on one host share the cache, each
        keeping only what it knows of. So each marks the entries it keeps as its own
        (`.users/<version>/<user>`) and unmarks the others; an entry another instance still
        marks is never removed."""
        kept = set(keep)
        if user is not None:
            self._mark(user, kept)
        if self.root.is_dir():
            for partial in self.root.glob(f"{PARTIAL}*"):
                version = partial.name[len(PARTIAL) :]
                if version in kept:
                    continue
                with self._lock(version, wait=False) as mine:
                    if mine:
                        shutil.rmtree(partial, ignore_errors=True)
        entries = sorted(self.entries(), key=lambda e: e[2])
        used = sum(size for _, size, _ in entries)
        removed = []
        for version, size, _ in entries:
            if used <= limit:
                break
            if version in kept or self._users(version):
                continue
            with self._lock(version):
                shutil.rmtree(self.path(version), ignore_errors=True)
                shutil.rmtree(self.root / USERS / version, ignore_errors=True)
            used -= size
            removed.append(version)
        return removed

    def _mark(self, user: str, kept: set[str]) -> None:
        for version, _, _ in self.entries():
            mark = self.root / USERS / version / user
            if version in kept:
                mark.parent.mkdir(parents=True, exist_ok=True)
                mark.touch()
            else:
                mark.unlink(missing_ok=True)

    def _users(self, version: str) -> list[str]:
        folder = self.root / USERS / version
        return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def _check(path: Path, obj: StoredObject, where: str, digest: _Digest | None) -> None:
    """The file is what the store listed: its size, and its MD5 where the store's ETag is one
    (`digest`: an S3 single-part upload's; a multi-part ETag, `<md5>-<parts>`, is not a
    digest of the file)."""
    got = path.stat().st_size
    if got != obj.size:
        raise StoreError(f"{where}: {obj.key} came with {got} bytes, the store lists {obj.size}")
    if digest is not None and digest.finish() != obj.etag:
        raise StoreError(f"{where}: {obj.key} does not match its ETag: downloaded damaged")


def _is_md5(etag: str) -> bool:
    return len(etag) == 32 and "-" not in etag


class _Digest:
    """A file's MD5 taken part by part, in order, as its parts arrive (on the threads that
    bring them, when no other is at it), so that checking a large model after its last part
    costs little more than that part. `finish` takes whatever is left."""

    def __init__(self, path: Path, size: int, parts: int) -> None:
        self.path, self.size, self.parts = path, size, parts
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.next = 0  # the first part not yet in the digest
        self.arrived: set[int] = set()
        self.arriving = threading.Lock()  # guards `arrived`
        self.hashing = threading.Lock()  # one thread hashes at a time

    def arrived_part(self, n: int) -> None:
        with self.arriving:
            self.arrived.add(n)
        if self.hashing.acquire(blocking=False):  # (busy: its holder, or finish, takes it)
            try:
                self._take()
            finally:
                self.hashing.release()

    def finish(self) -> str:
        with self.hashing:
            with self.arriving:
                self.arrived.update(range(self.parts))
            self._take()
            return self.md5.hexdigest()

    def _take(self) -> None:
        with open(self.path, "rb") as f:
            while True:
                with self.arriving:
                    if self.next not in self.arrived:
                        return
                n = self.next
                start = n * PART if self.parts > 1 else 0
                end = min(self.size, start + PART) if self.parts > 1 else self.size
                f.seek(start)
                left = end - start
                while left > 0:
                    chunk = f.read(min(left, 1024 * 1024))
                    if not chunk:
                        return  # (shorter than listed: the size check says so)
                    self.md5.update(chunk)
                    left -= len(chunk)
                self.next += 1


class _Download:
    """One version's objects into its partial folder: the parts each journal lacks, read
    PARALLEL at a time, then every object checked. Raises StoreError."""

    def __init__(self, listing: Listing, into: Path, progress: Progress | None, root: Path) -> None:
        self.listing = listing
        self.into = into
        self.progress = progress
        self.root = root
        self.where = listing.location.describe()
        self.done = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        work: list[tuple[StoredObject, Path, int, int]] = []  # (object, file, part, parts)
        self.digests: dict[str, _Digest] = {}
        for obj in self.listing.objects:
            target = self._target(obj)
            if target.is_file() and not _journal(target).exists():
                self.done += obj.size  # downloaded and checked by an earlier fetch
                continue
            parts = _parts(obj.size) if self.listing.location.ranges else 1
            written = _written(target, obj.size)
            if not written:  # begun afresh: the journal first, so a file never lacks one
                target.parent.mkdir(parents=True, exist_ok=True)
                _journal(target).write_text("")
                with open(target, "wb") as f:
                    f.truncate(obj.size)
            if obj.size == 0:
                continue
            self.done += sum(_span(obj.size, n, parts) for n in written)
            if self.listing.location.checksums and _is_md5(obj.etag):
                self.digests[obj.key] = _Digest(target, obj.size, parts)
                for n in sorted(written):
                    self.digests[obj.key].arrived.add(n)
            work += [(obj, target, n, parts) for n in range(parts) if n not in written]
        self._report()
        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="model-download") as pool:
            futures = [pool.submit(self._part, *w) for w in work]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                self.stop.set()  # the parts not begun are not read; those under way end
                wait(futures)
                raise self._explained(failed.exception())  # type: ignore[arg-type]
        for obj in self.listing.objects:
            target = self._target(obj)
            journal = _journal(target)
            if journal.exists():
                try:
                    _check(target, obj, self.where, self.digests.get(obj.key))
                except StoreError:
                    target.unlink(missing_ok=True)  # damaged: read again next time
                    journal.unlink(missing_ok=True)
                    raise
                journal.unlink()

    def _target(self, obj: StoredObject) -> Path:
        target = self.into / self.listing.relative(obj)
        if not target.resolve().is_relative_to(self.into.resolve()) or target.name.endswith(
            JOURNAL
        ):
            raise StoreError(f"{self.where}: object {obj.key!r} leaves its folder")
        return target

    def _part(self, obj: StoredObject, target: Path, n: int, parts: int) -> None:
        if self.stop.is_set():
            return
        start = n * PART if parts > 1 else 0
        end = min(obj.size, start + PART) if parts > 1 else obj.size
        fd = os.open(target, os.O_WRONLY)
        try:
            offset = start
            for chunk in self.listing.location.read(obj, start, end):
                if self.stop.is_set():
                    return
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
                with self.lock:
                    self.done += len(chunk)
                self._report()
            if offset != end:
                raise StoreError(
                    f"{self.where}: {obj.key} ended after {offset} bytes, the store lists "
                    f"{obj.size}"
                )
        finally:
            os.close(fd)
        with open(_journal(target), "a") as journal:  # (the part's bytes are written first)
            journal.write(f"{n}\n")
        if (digest := self.digests.get(obj.key)) is not None:
            digest.arrived_part(n)

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.listing.size)

    def _explained(self, exc: BaseException) -> BaseException:
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return CacheFull(
                f"{self.where}: writing the model failed: {one_line(exc)}: free space in "
                f"{self.root}, or lower modelCacheSize"
            )
        if isinstance(exc, OSError):
            return StoreError(f"{self.where}: writing the model failed: {one_line(exc)}")
        if isinstance(exc, Exception):  # (a connection cut mid-body, as the HTTP stack says it)
            return StoreError(
                f"{self.where}: the download broke off ({type(exc).__name__}: {one_line(exc)}): "
                "what came is kept, the next pass resumes it"
            )
        return exc


def _journal(target: Path) -> Path:
    return target.with_name(target.name + JOURNAL)


def _parts(size: int) -> int:
    return max(1, -(-size // PART))


def _span(size: int, n: int, parts: int) -> int:
    """The bytes of part n."""
    if parts == 1:
        return size
    return min(size, (n + 1) * PART) - n * PART


def _written(target: Path, size: int) -> set[int]:
    """The parts an earlier fetch wrote (its journal), where the file is still its size."""
    journal = _journal(target)
    if not journal.exists() or not target.is_file() or target.stat().st_size != size:
        return set()
    lines = journal.read_text().split("\n")
    return {int(n) for n in lines[:-1] if n.isdigit()}  # (a last line without \n: unfinished)
