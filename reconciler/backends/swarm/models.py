"""Models from object stores on a Swarm: a cache folder on every node, filled by a job there.

Each node keeps its own model cache (reconciler.stores.cache, one folder per version) in the
host folder `Settings.spec.engine.modelCache` (default /var/lib/reconciler/models); a replica
binds `<that>/<version>` read-only at /mnt/models, wherever Swarm places it.

`fetch(listing)` runs the storage initializer (the image `reconciler/initializer:1`, copied to
the nodes as any image is: images.py) as a Swarm job, mode GlobalJob (Docker API 1.41+): one
task on every node the Settings' placement constraints allow, each running
`ModelCache(<the node's cache>).fetch(listing)`, so that each node's download is resumable,
checked, atomic and locked as on one host, and a node that has the version is done at once.
The job gets the listing (objects, sizes, ETags, bucket, endpoint, prefix) as a Swarm config
and what may not be shown (the store's credentials, or an https:// URL) as a Swarm secret,
mounted as a file: never in its spec, arguments, environment, labels or logs. Job, secret and
config are made for one download and removed once its tasks end. The reconciler waits until
every node's task completed; the first that fails ends the download with one line naming its
node and the initializer's last line. Nodes that are down are not waited for (Swarm places
no replica there). A node whose cache folder does not exist yet rejects the job's bind mount:
a one-off job then makes the folder (binding the path's top-level folder, /var for the
default, and running nothing but mkdir), and the download runs again.

What the nodes have is recorded in Swarm itself: after a download, a Swarm config per version
and cache folder (`reconciler-model-…`, labels: the folder, the version, its bytes, when it
was last fetched, and `model-user.<instance>` for each reconciler instance that keeps it)
says that every node has it. `has(version)` is one lookup of those labels; `evict(limit,
keep, user)` one listing of them (it runs after a pass that changed something): when their
bytes exceed the limit, the least recently fetched versions beyond it that no deployment of
any instance keeps are removed from every node by one evict job (with unfinished downloads of
versions not kept), and their records with them. Leftovers of a reconciler that died while it
waited (a finished job, its secret and config) are removed after STALE seconds.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from ...manifests.kinds import EngineSettings
from ...stores.initializer import split
from ...stores.listing import Listing, StoreError, one_line
from .. import labels as L
from ..base import ConvergeFailed, EngineError, EngineUnreachable, NotFound
from ..docker.engine import Engine
from .images import ImageCourier
from .parse import ENDED, FAILED, NO_NODE, Node, task_error, task_state, unix_time

if TYPE_CHECKING:
    from ...stores.cache import Progress

INITIALIZER_IMAGE = "reconciler/initializer:1"
JOB = L.PREFIX + "model-job"  # a job's id: on its service, secret and config
CACHE = L.PREFIX + "model-cache"  # the nodes' cache folder: on jobs and records
VERSION = L.PREFIX + "model-version"  # a record's version, which every node has
BYTES = L.PREFIX + "model-bytes"
USED = L.PREFIX + "model-used"  # unix seconds of the record's last fetch
USER = L.PREFIX + "model-user."  # + an instance that keeps the record's version
MOUNT = "/cache"  # the node's cache folder, inside a job's container
ANCHOR = "/host"  # the mkdir job's view of the folder above the cache
LISTING = "/listing.json"
PRIVATE = "model-store"  # /run/secrets/model-store
JOB_MEMORY = 1024**3
POLL_SECONDS = 0.5
NO_TASK_SECONDS = 30.0  # a job with no task this long: no node takes it
NODES_EVERY = 5.0  # while waiting, nodes are asked this often which are up (and progress)
PROGRESS_FROM = 32 * 1024 * 1024  # a download this large reports its nodes' progress
FRESH_SECONDS = 60.0  # a version this process fetched this recently is not fetched again
STALE = 600.0  # leftovers of a reconciler that died while it waited go after this long
MISSING = "bind source path does not exist"

TaskLines = Callable[[str, int], Sequence[str]]


@dataclass(frozen=True)
class Record:
    id: str
    version: str
    bytes: int
    used: float
    users: frozenset[str]  # the instances that keep it


class SwarmModels:
    """The ModelHosts of a Swarm (reconciler.backends.base)."""

    def __init__(
        self,
        manager: Engine,
        images: ImageCourier,
        settings: EngineSettings,
        nodes: Callable[[], Mapping[str, Node]],
        task_lines: TaskLines,
    ) -> None:
        self.manager = manager
        self.images = images
        self.settings = settings
        self.root = PurePosixPath(settings.model_cache)
        self._nodes = nodes
        self._task_lines = task_lines
        self._lock = threading.Lock()
        self._versions: dict[str, threading.Lock] = {}
        self._fetched: dict[str, float] = {}  # version -> when this process last fetched it
        self._swept = -math.inf

    # -- the ModelHosts interface -----------------------------------------------------------

    def path(self, version: str) -> PurePosixPath:
        return self.root / version

    def has(self, version: str) -> bool:
        try:
            return bool(self._records(version))
        except (EngineError, EngineUnreachable, NotFound):
            return False

    def fetch(self, listing: Listing, progress: Progress | None = None) -> PurePosixPath:
        """The version on every node, downloaded there by one job. Raises StoreError."""
        version = listing.version
        with self._version_lock(version):
            if time.monotonic() - self._fetched.get(version, -math.inf) < FRESH_SECONDS:
                return self.path(version)
            public, private = split(listing)
            if progress is not None:
                progress(0, listing.size)
            where = listing.location.describe()
            watch = None
            if progress is not None and listing.size >= PROGRESS_FROM:
                watch = lambda tasks: self._progress(tasks, listing.size, progress)  # noqa: E731
            try:
                self._sweep()
                image = self._image()
                files = {
                    LISTING: json.dumps(public).encode(),
                    PRIVATE: json.dumps(private).encode(),
                }
                args = ["fetch", "--cache", MOUNT, "--listing", LISTING]
                args += ["--private", f"/run/secrets/{PRIVATE}"]
                failed = self._job(image, "fetch", args, [self._bind()], files, watch)
                if failed and all(MISSING in f for f in failed.values()):
                    self._make_folder(image)
                    failed = self._job(image, "fetch", args, [self._bind()], files, watch)
            except (EngineError, EngineUnreachable, NotFound) as exc:
                raise StoreError(f"{where}: the Swarm refused the download job: {exc}") from None
            if failed:
                node, line = next(iter(failed.items()))
                more = f" (and on {len(failed) - 1} other nodes)" if len(failed) > 1 else ""
                if MISSING in line:
                    line += f": create {self.root} on every node"
                raise StoreError(f"model download on node {node} failed{more}: {line}")
            self._record(version, listing.size)
            self._fetched[version] = time.monotonic()
            if progress is not None:
                progress(listing.size, listing.size)
        return self.path(version)

    def evict(self, limit: int, keep: Iterable[str], user: str | None = None) -> list[str]:
        """The least recently fetched versions beyond `limit` bytes (by the records), never
        one in `keep` or that another `user` (an instance sharing the Swarm's caches) keeps,
        removed from every node by one job. One listing of the records when nothing needs to
        go; never raises (what could not go is tried again next pass)."""
        kept = set(keep)
        try:
            self._sweep()
            records = sorted(self._records(), key=lambda r: r.used)
            if user is not None:
                records = [self._mark(r, user, r.version in kept) for r in records]
        except (EngineError, EngineUnreachable, NotFound):
            return []
        used = sum(r.bytes for r in records)
        chosen: list[Record] = []
        for record in records:
            if used <= limit:
                break
            if record.version not in kept and not record.users:
                chosen.append(record)
                used -= record.bytes
        if not chosen:
            return []
        versions = [r.version for r in chosen]
        try:
            image = self._image()
            args = ["evict", "--cache", MOUNT, "--remove", *versions, "--keep", *sorted(kept)]
            failed = self._job(image, "evict", args, [self._bind()], {})
        except (StoreError, EngineError, EngineUnreachable, NotFound):
            return []
        if any(MISSING not in line for line in failed.values()):
            return []  # (a node without the folder has nothing to remove)
        for record in chosen:
            with contextlib.suppress(EngineError, NotFound, EngineUnreachable):
                self.manager.call(self.manager.sdk.remove_config, record.id)
            self._fetched.pop(record.version, None)
        return versions

    # -- jobs -------------------------------------------------------------------------------

    def _job(
        self,
        image: str,
        kind: str,
        args: list[str],
        mounts: list[dict[str, Any]],
        files: Mapping[str, bytes],
        watch: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> dict[str, str]:
        """Run the initializer on every node (a GlobalJob) until each node's task ended; the
        nodes (host names) whose task failed, with the line that says why. `files`: the
        listing (a config) and what may not be shown (a secret)."""
        job = uuid.uuid4().hex[:12]
        name = f"reconciler-models-{job}"
        labels = {JOB: job, CACHE: str(self.root)}
        made: list[tuple[str, str]] = []  # (kind of object, id), removed in reverse order
        try:
            container: dict[str, Any] = {
                "Image": image,
                "Args": args,
                "Mounts": mounts,
                "ReadOnly": True,
                "Labels": {JOB: job},
            }
            if LISTING in files:
                config = self._create("configs", name, files[LISTING], labels)
                made.append(("configs", config))
                container["Configs"] = [
                    {"File": _file(LISTING, 0o444), "ConfigID": config, "ConfigName": name}
                ]
            if PRIVATE in files:
                secret = self._create("secrets", name, files[PRIVATE], labels)
                made.append(("secrets", secret))
                container["Secrets"] = [
                    {"File": _file(PRIVATE, 0o400), "SecretID": secret, "SecretName": name}
                ]
            spec = {
                "Name": name,
                "Labels": {**labels, JOB + "-kind": kind},
                "TaskTemplate": {
                    "ContainerSpec": container,
                    # (Swarm starts a job's task again after some failures all the same:
                    # the first failure ends the wait, and the job is removed)
                    "RestartPolicy": {"Condition": "none"},
                    "Placement": {"Constraints": list(self.settings.constraints)},
                    "Resources": {"Limits": {"MemoryBytes": JOB_MEMORY}},
                },
                "Mode": {"GlobalJob": {}},
            }
            service = self._post("/services/create", spec)["ID"]
            made.append(("services", service))
            return self._await(service, name, watch)
        finally:
            for what, ident in reversed(made):
                self._remove(what, ident)

    def _await(
        self,
        service: str,
        name: str,
        watch: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> dict[str, str]:
        """Until every node's task ended: {} when each that is up completed, else the failed
        ones (see `_job`). `watch` sees the tasks every NODES_EVERY seconds."""
        started = time.monotonic()
        nodes: Mapping[str, Node] = {}
        nodes_at = -math.inf
        unplaced_since: float | None = None
        pause = 0.1
        while True:
            tasks = self._tasks(service)
            now = time.monotonic()
            if now - nodes_at >= NODES_EVERY:
                nodes, nodes_at = self._nodes(), now
                if watch is not None and tasks:
                    watch(tasks)
            failed = {
                _hostname(nodes, t): self._why(t)
                for t in tasks
                if task_state(t) in FAILED and _up(nodes, t)
            }
            if failed:
                return failed
            waiting = [
                t
                for t in tasks
                if _up(nodes, t)
                and not any(
                    task_state(o) == "complete" for o in tasks if o.get("NodeID") == t.get("NodeID")
                )
            ]
            if tasks and not waiting:
                return {}
            if not tasks and now - started > NO_TASK_SECONDS:
                raise StoreError(
                    f"no node of the Swarm took the job {name}: check Settings.spec.engine."
                    "constraints and that nodes are ready"
                )
            unplaced = [t for t in waiting if NO_NODE in task_error(t)]
            if unplaced:
                unplaced_since = unplaced_since or now
                if now - unplaced_since > self.settings.placement_timeout:
                    return {_hostname(nodes, unplaced[0]): task_error(unplaced[0])}
            else:
                unplaced_since = None
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_SECONDS)

    def _progress(self, tasks: list[dict[str, Any]], size: int, progress: Progress) -> None:
        """The slowest node's share, from the last line of each running task (the
        initializer prints `57% (...)` every few seconds)."""
        shares = []
        for task in tasks:
            state = task_state(task)
            if state == "complete":
                shares.append(100)
            elif state == "running":
                lines = self._task_lines(task["ID"], 1)
                found = re.match(r"(\d+)% \(", lines[-1]) if lines else None
                shares.append(int(found[1]) if found else 0)
        if shares:
            progress(size * min(shares) // 100, size)

    def _why(self, task: Mapping[str, Any]) -> str:
        """The initializer's last line, else Swarm's error (a task that never started)."""
        placed = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
        lines = self._task_lines(task["ID"], 5) if placed else ()
        last = lines[-1].strip() if lines else ""
        return one_line(Exception(last)) if last else task_error(task)

    def _make_folder(self, image: str) -> None:
        """The cache folder on every node that lacks it: a job that binds the folder's
        top-level folder (which every host has: /var for the default) and makes it."""
        parts = self.root.parts
        anchor = PurePosixPath(*parts[:2]) if len(parts) > 2 else PurePosixPath("/")
        inside = PurePosixPath(ANCHOR, *parts[len(anchor.parts) :])
        mount = {"Type": "bind", "Source": str(anchor), "Target": ANCHOR}
        self._job(image, "mkdir", ["mkdir", str(inside)], [mount], {})

    def _bind(self) -> dict[str, Any]:
        return {"Type": "bind", "Source": str(self.root), "Target": MOUNT}

    def _image(self) -> str:
        """How the job names the initializer image, once every node has it. The image is
        this machine's (built by `make images`), or the manager's; never pulled from a
        registry by its tag, since it is handed the store's credentials."""
        image_id = None
        for engine in (self.images.source, self.manager):
            with contextlib.suppress(EngineError, EngineUnreachable):
                image_id = engine.image_id(INITIALIZER_IMAGE)
            if image_id:
                break
        if not image_id:
            raise StoreError(
                f"the storage initializer image {INITIALIZER_IMAGE} is not on this machine: "
                "build it with `make images` (scripts/build-images)"
            )
        try:
            return self.images.deliver(INITIALIZER_IMAGE, image_id)
        except ConvergeFailed as exc:
            raise StoreError(str(exc)) from None

    # -- records and leftovers --------------------------------------------------------------

    def _records(self, version: str | None = None) -> list[Record]:
        wanted = [f"{CACHE}={self.root}", f"{VERSION}={version}" if version else VERSION]
        found = self.manager.get("/configs", {"filters": json.dumps({"label": wanted})})
        out = []
        for config in found:
            labels = (config.get("Spec") or {}).get("Labels") or {}
            users = frozenset(k[len(USER) :] for k in labels if k.startswith(USER))
            with contextlib.suppress(KeyError, ValueError):
                out.append(
                    Record(
                        config["ID"],
                        labels[VERSION],
                        int(labels.get(BYTES) or 0),
                        float(labels.get(USED) or 0),
                        users,
                    )
                )
        return out

    def _mark(self, record: Record, user: str, keeps: bool) -> Record:
        """The record marked as kept by `user` (an instance), or not: a label each."""
        if (user in record.users) == keeps:
            return record
        key = USER + user
        self._relabel(
            record.id,
            lambda labels: (
                {**labels, key: "1"} if keeps else {k: v for k, v in labels.items() if k != key}
            ),
        )
        users = record.users | {user} if keeps else record.users - {user}
        return Record(record.id, record.version, record.bytes, record.used, users)

    def _relabel(self, config: str, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        """A config's labels changed (the only part of a config Swarm lets change)."""
        live = self.manager.get(f"/configs/{config}", {})
        spec = dict(live["Spec"])
        spec["Labels"] = change(dict(spec.get("Labels") or {}))
        index = (live.get("Version") or {}).get("Index")
        self._post(f"/configs/{config}/update", spec, {"version": index})

    def _record(self, version: str, size: int) -> None:
        """Every node has `version` now, fetched now (a label of its record)."""
        now = str(int(time.time()))
        try:
            found = self._records(version)
            if not found:
                labels = {CACHE: str(self.root), VERSION: version, BYTES: str(size), USED: now}
                data = {"cache": str(self.root), "version": version, "bytes": size}
                digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
                name = f"reconciler-model-{digest}-{version[:32]}"
                self._create("configs", name, json.dumps(data).encode(), labels)
                return
            self._relabel(found[0].id, lambda labels: {**labels, USED: now})
        except (EngineError, NotFound, EngineUnreachable):
            pass  # (a record not written: the next fetch writes it; has() says no meanwhile)

    def _sweep(self) -> None:
        """Jobs whose tasks all ended, and secrets and configs of jobs, older than STALE:
        left by a reconciler that died while it waited. At most every STALE / 2 seconds."""
        if time.monotonic() - self._swept < STALE / 2:
            return
        self._swept = time.monotonic()
        mine = json.dumps({"label": [f"{CACHE}={self.root}", JOB]})
        old = time.time() - STALE
        with contextlib.suppress(EngineError, EngineUnreachable, NotFound):
            for service in self.manager.get("/services", {"filters": mine}):
                if (unix_time(service.get("CreatedAt")) or 0) < old and all(
                    task_state(t) in ENDED for t in self._tasks(service["ID"])
                ):
                    self._remove("services", service["ID"])
            for what in ("secrets", "configs"):
                for item in self.manager.get(f"/{what}", {"filters": mine}):
                    if (unix_time(item.get("CreatedAt")) or 0) < old:
                        self._remove(what, item["ID"])  # (refused while a job uses it)

    # -- the Engine API ---------------------------------------------------------------------

    def _post(
        self, path: str, body: Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> Any:
        """The answer's JSON (None where it has none: an update)."""
        api = self.manager.sdk

        def post() -> Any:
            answer = api._post_json(api._url(path), data=dict(body), params=dict(params or {}))
            api._raise_for_status(answer)
            return answer.json() if answer.content else None

        return self.manager.call(post)

    def _create(self, what: str, name: str, data: bytes, labels: Mapping[str, str]) -> str:
        body = {"Name": name, "Labels": dict(labels), "Data": base64.b64encode(data).decode()}
        return str(self._post(f"/{what}/create", body)["ID"])

    def _remove(self, what: str, ident: str) -> None:
        api = self.manager.sdk
        remove = {
            "services": api.remove_service,
            "secrets": api.remove_secret,
            "configs": api.remove_config,
        }[what]
        with contextlib.suppress(EngineError, NotFound, EngineUnreachable):
            self.manager.call(remove, ident)

    def _tasks(self, service: str) -> list[dict[str, Any]]:
        filters = json.dumps({"service": [service]})
        try:
            return list(self.manager.get("/tasks", {"filters": filters}))
        except EngineError:
            return []

    def _version_lock(self, version: str) -> threading.Lock:
        with self._lock:
            return self._versions.setdefault(version, threading.Lock())


def _file(name: str, mode: int) -> dict[str, Any]:
    return {"Name": name, "UID": "0", "GID": "0", "Mode": mode}


def _up(nodes: Mapping[str, Node], task: Mapping[str, Any]) -> bool:
    """Whether the task's node is up (or not placed yet, or unknown to the last listing)."""
    node = nodes.get(task.get("NodeID") or "")
    return node is None or node.state == "ready"


def _hostname(nodes: Mapping[str, Node], task: Mapping[str, Any]) -> str:
    node_id = task.get("NodeID") or ""
    node = nodes.get(node_id)
    return node.hostname if node is not None else (node_id[:12] or "(none yet)")
