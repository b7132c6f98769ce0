"""Record: the state snapshot under `state/`, and the lock that keeps one writer per instance.

The snapshot is what Docker cannot tell us: AI Core's deployment fields (status, statusMessage,
lastOperation, latestRunningConfigurationId, timestamps), GPU assignments, configurations that
failed (so they are not retried in a tight loop), and a short history of passes. It is written
atomically (temp file + rename), as deterministic, sorted JSON that diffs well in git. It never
holds a secret: environment values are not recorded, and log lines are redacted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import FileVersion, config_dir, file_version, write_atomic

FORMAT_VERSION = 1
STATE_DIR = "state"
SNAPSHOT = "snapshot.json"
LOCK = ".lock"
HISTORY_LENGTH = 20
LABEL_KEY = "label-key"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return _parse_iso(text)


# A status listing parses each deployment's recorded times several times per request, and
# strptime is slow (about 0.1 ms a call: 40 ms of a 200-deployment page, bench/dashboard.py);
# the same few hundred strings come back on every request.
@lru_cache(maxsize=4096)
def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Record:
    """One deployment as the reconciler last left it (AI Core's field names in `to_api`)."""

    id: str
    name: str
    resource_group: str
    status: str = "UNKNOWN"
    status_message: str | None = None
    target_status: str = "RUNNING"
    last_operation: str | None = None
    configuration_id: str | None = None
    executable_id: str | None = None
    scenario_id: str | None = None
    latest_running_configuration_id: str | None = None
    ttl: str | None = None
    created_at: str | None = None
    modified_at: str | None = None
    submission_time: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    dead_since: str | None = None
    config_hash: str | None = None  # what serves now (or was last attempted)
    failed_hash: str | None = None  # a configuration that failed; retried only once it changes
    expired: bool = False  # deleted by its ttl; not recreated under the same name
    # Drift restores in the current crash-loop window (plan.RESTORE_WINDOW) and the last one's
    # time: restores back off exponentially and a deployment that keeps dying ends DEAD.
    restores: int = 0
    last_restore: str | None = None
    replicas: int | None = None  # how many run (an autoscaled count is runtime state)
    # When a pass last saw the replicas answer and recorded them (routing trusts replicas
    # started before it while their engine's first health check is pending).
    ready_at: str | None = None
    # Replicas the last pass retired (a scale-down): drained, so not routed, until they stop.
    retiring: tuple[str, ...] = ()
    model_version: str | None = None  # an object-store model's version that serves
    scaled_at: str | None = None  # the last change of an autoscaled count, and why
    scale_reason: str | None = None
    gpus: tuple[str, ...] = ()
    # Resources applied in place with `docker update`, per container id (labels are immutable).
    updated_resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    last_logs: tuple[str, ...] = ()
    revision: str | None = None

    @property
    def ever_started(self) -> bool:
        return self.start_time is not None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = list(self.gpus)
        data["last_logs"] = list(self.last_logs)
        data["retiring"] = list(self.retiring)
        data["updated_resources"] = {k: dict(v) for k, v in self.updated_resources.items()}
        return {_camel(k): v for k, v in sorted(data.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        known = {f for f in cls.__dataclass_fields__}
        values = {_snake(k): v for k, v in data.items() if _snake(k) in known}
        values["gpus"] = tuple(values.get("gpus") or ())
        values["last_logs"] = tuple(values.get("last_logs") or ())
        values["retiring"] = tuple(values.get("retiring") or ())
        return cls(**values)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@dataclass(frozen=True)
class Snapshot:
    instance: str
    records: Mapping[str, Record]
    history: tuple[Mapping[str, Any], ...] = ()
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "formatVersion": FORMAT_VERSION,
            "instance": self.instance,
            "revision": self.revision,
            "deployments": {k: self.records[k].to_json() for k in sorted(self.records)},
            "history": list(self.history),
        }


def snapshot_path(root: Path) -> Path:
    return root / STATE_DIR / SNAPSHOT


def snapshot_version(root: Path) -> FileVersion | None:
    """Which snapshot is on disk now (None: none, or unreadable): readers that follow it
    (the routing table, the autoscaler's policies) re-read only when it changed."""
    try:
        return file_version(snapshot_path(root))
    except OSError:
        return None


def read_snapshot(root: Path, instance: str) -> Snapshot:
    """The last snapshot of this instance (empty when none, or when it names another)."""
    path = snapshot_path(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Snapshot(instance, {})
    except NotADirectoryError:
        raise UserError(f"{path.parent} is not a folder: {_STATE_FIX}") from None
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} is unreadable ({exc}): restore it from git or delete it "
            "(statuses and history are then rebuilt from the containers)"
        ) from None
    if data.get("instance") != instance:
        return Snapshot(instance, {})
    records = {k: Record.from_json(v) for k, v in (data.get("deployments") or {}).items()}
    return Snapshot(instance, records, tuple(data.get("history") or ()), data.get("revision"))


# What to do about state that cannot be read or written, said the same way everywhere.
_STATE_FIX = (
    "the reconciler keeps its state in that folder: make it a writable folder (move a file or "
    "link of that name away, free space), then run again"
)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_snapshot(root: Path, snapshot: Snapshot) -> None:
    """Write the snapshot; a failure (a full disk) is one line saying what it means."""
    text = json.dumps(snapshot.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    path = snapshot_path(root)
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise UserError(
            f"cannot write {path} ({_why(exc)}): what this pass changed on the host may be "
            f"unrecorded; fix {path.parent} (free space, make it a writable folder) and run "
            "reconcile again, which records it from the containers"
        ) from None


_PROBE_SLACK = 64 * 1024  # a snapshot grows by a few KiB per deployment and pass


def check_state_writable(root: Path) -> None:
    """Fail before anything changes on the host when the state cannot be written: a pass that
    replaced containers without recording it leaves a snapshot that tells a wrong story (and a
    failed write mid-pass could only say so afterwards). Creates and removes a probe as large
    as the snapshot is now, plus room to grow, so that a nearly full disk is caught too."""
    folder = root / STATE_DIR
    if os.path.lexists(folder) and not folder.is_dir():
        what = "a link to a missing folder" if folder.is_symlink() else "not a folder"
        raise UserError(f"the state folder {folder} is {what}; nothing was changed: {_STATE_FIX}")
    try:
        size = snapshot_path(root).stat().st_size
    except OSError:
        size = 0
    try:
        folder.mkdir(exist_ok=True)  # the root itself exists (checked first)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * (size + _PROBE_SLACK))
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"the state folder {folder} cannot be written ({_why(exc)}); nothing was changed: "
            f"{_STATE_FIX}"
        ) from None


class Recorder:
    """The snapshot being written during one pass; safe to use from apply's worker threads.

    Every status change is written to disk promptly, so a killed pass leaves a true record, but
    not by the thread that made it: a writer thread writes the newest state whenever it changed
    since its last write. With 100 deployments changing at once, workers would otherwise queue
    behind each other's serialisation of the whole snapshot. `close` (or `finish`) waits for
    the last write."""

    def __init__(self, root: Path, snapshot: Snapshot, revision: str | None) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._instance = snapshot.instance
        self._records = dict(snapshot.records)
        self._history = list(snapshot.history)
        self._revision = revision
        self._version = 0  # bumped by every change
        self._written = 0  # the version on disk
        self._closing = False
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="recorder", daemon=True)
        self._writer.start()

    def get(self, deployment_id: str) -> Record | None:
        with self._lock:
            return self._records.get(deployment_id)

    def put(self, record: Record) -> None:
        with self._lock:
            self._records[record.id] = record
            self._touch()

    def update(self, deployment_id: str, **changes: Any) -> Record:
        with self._lock:
            record = replace(self._records[deployment_id], **changes)
            self._records[deployment_id] = record
            self._touch()
            return record

    def forget(self, deployment_id: str) -> None:
        with self._lock:
            if self._records.pop(deployment_id, None) is not None:
                self._touch()

    def finish(self, entry: Mapping[str, Any]) -> Snapshot:
        """Add the pass to the history and write the final snapshot."""
        with self._lock:
            self._history = [*self._history, dict(entry)][-HISTORY_LENGTH:]
            self._touch()
        self.close()
        with self._lock:
            snapshot, pending = self._current(), self._written != self._version
            self._written = self._version
        if pending:  # the writer was closed before: write the last state here
            write_snapshot(self._root, snapshot)
        return snapshot

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._current()

    def close(self) -> None:
        """Wait until everything recorded is on disk; stop the writer."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._writer.join()
        if self._error is not None:
            raise self._error

    def _touch(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def _current(self) -> Snapshot:
        return Snapshot(self._instance, dict(self._records), tuple(self._history), self._revision)

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while self._written == self._version and not self._closing:
                    self._changed.wait()
                if self._written == self._version:  # closing, and nothing left to write
                    return
                version, snapshot = self._version, self._current()
            try:
                write_snapshot(self._root, snapshot)
            except BaseException as exc:  # a full disk: surfaced by close(), not lost
                self._error = exc
                return
            with self._lock:
                self._written = version


@contextlib.contextmanager
def instance_lock(root: Path, wait: float = 10.0) -> Iterator[None]:
    """One writer per GitOps root. `flock` is released by the kernel when the holder dies,
    even by SIGKILL, so a killed reconcile never leaves a stale lock."""
    path = root / STATE_DIR / LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot open the lock {path} ({_why(exc)}): {_STATE_FIX}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise UserError(
                        f"another reconcile is running on {root} ({holder}); "
                        "wait for it to finish, or stop it"
                    ) from None
                time.sleep(0.1)
        # Who holds the lock, for the message of the next one waiting: nice to have, so a full
        # disk here is not an error (the lock itself is the kernel's, not the file's content).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {iso(now())}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def label_key_path(instance: str) -> Path:
    return config_dir(instance) / LABEL_KEY


def label_key(instance: str) -> bytes:
    """The instance's key that seals secret values in labels, state and plans (spec.Hashing).
    It lives next to `reconciler serve`'s credentials, outside the GitOps root (which is
    committed, and which deployments mount by relative paths), mode 0600. Made on first use,
    atomically: written in full under a temp name, then linked into place, which never replaces
    a key that exists, so two first passes at once agree on one key."""
    path = label_key_path(instance)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{LABEL_KEY}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise UserError(
            f"cannot create the label key {path} ({_why(exc)}): make {path.parent} writable "
            "for this user, or set XDG_CONFIG_HOME to a folder that is"
        ) from None
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    not_a_key = (
        f"{path} is not a label key: delete it (a new one is made; deployments with secret "
        "values are then replaced once)"
    )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read the label key {path} ({_why(exc)}): {not_a_key}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 1024:
            raise UserError(not_a_key)
        if st.st_mode & 0o077:  # readable by others: the seal would protect nothing
            raise UserError(
                f"the label key {path} is open to other users (mode {st.st_mode & 0o777:o}): "
                f"chmod 600 {path}"
            )
        data = os.read(fd, 1024)
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is one
        raise UserError(not_a_key) from None
    if len(key) != 32:
        raise UserError(not_a_key)
    return key
