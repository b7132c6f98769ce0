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
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import UserError

FORMAT_VERSION = 1
STATE_DIR = "state"
SNAPSHOT = "snapshot.json"
LOCK = ".lock"
HISTORY_LENGTH = 20


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
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
    replicas: int | None = None
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
        data["updated_resources"] = {k: dict(v) for k, v in self.updated_resources.items()}
        return {_camel(k): v for k, v in sorted(data.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        known = {f for f in cls.__dataclass_fields__}
        values = {_snake(k): v for k, v in data.items() if _snake(k) in known}
        values["gpus"] = tuple(values.get("gpus") or ())
        values["last_logs"] = tuple(values.get("last_logs") or ())
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


def read_snapshot(root: Path, instance: str) -> Snapshot:
    """The last snapshot of this instance (empty when none, or when it names another)."""
    path = snapshot_path(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Snapshot(instance, {})
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} is unreadable ({exc}): restore it from git or delete it "
            "(statuses and history are then rebuilt from the containers)"
        ) from None
    if data.get("instance") != instance:
        return Snapshot(instance, {})
    records = {k: Record.from_json(v) for k, v in (data.get("deployments") or {}).items()}
    return Snapshot(instance, records, tuple(data.get("history") or ()), data.get("revision"))


FileVersion = tuple[int, int, int]


def file_version(path: Path) -> FileVersion | None:
    """What tells one version of a file from the next (None when there is no file): its inode,
    since `write_atomic` renames a new file into place, with its modification time and size.
    Time and size alone are not enough: file times come from a clock that moves every few
    milliseconds, and two snapshots of the same size written within one tick (a deployment's
    PENDING, then RUNNING) would look like one."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_snapshot(root: Path, snapshot: Snapshot) -> None:
    text = json.dumps(snapshot.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(snapshot_path(root), text)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {iso(now())}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
