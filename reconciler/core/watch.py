"""`reconciler watch`: keep the host converged with the manifests, continuously.

Level-triggered, as Kubernetes controllers are: a trigger only asks for a pass, and every pass is
the same full reconcile (desired state against the whole host), so a missed, duplicated or
reordered trigger costs at most a pass, never a wrong result. Triggers:

* files: the manifest folders changed (watchfiles, debounced), or with `--git` a ref of the
  repository moved (a commit, a pull, a reset);
* docker: an event of one of this instance's containers (die, oom, destroy, health status,
  pause), from the engine's event stream, resumed with `since` after a break;
* fetch: with `--git --remote R`, `git fetch` brought a new commit of the branch;
* resync: the periodic pass that catches whatever the others missed;
* deadline: the moment the plan changes by the clock alone (ttl expiry, the deletion of a
  deployment DEAD for 7 days, the end of a restore backoff) — see `DEADLINE_SOURCES`;
* retry: after an error (engine down, lock held), with an exponential backoff.

Triggers that arrive before or during a pass are coalesced into one next pass, and passes are at
least MIN_INTERVAL apart: an editor's save burst, a `git pull` of 50 files or a crash-looping
container's events are a pass or two, not a storm. Docker events caused by the reconciler's own
stops and removals are not triggers at all.

A manifest error stops all changes (nothing is pruned) and is reported once per revision and
error; Docker events do not retry a revision known to be broken. Every pass logs one JSON line
to stderr (trigger, revision, result, changes, duration); passes that change something are also
in the state snapshot's history.

Threads: one consumer runs the passes; the producers (file watcher, Docker events, git fetch)
only add reasons. The main thread waits and handles SIGINT/SIGTERM: the first stops the loop (a
pass in progress abandons its readiness waits, leaves what it started PENDING for the next
start, and releases the lock by leaving it); a second one exits at once (the kernel releases the
lock).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..backends import Backend, EngineError, EngineUnreachable, Event, EventStream, connect
from ..errors import ManifestError, UserError
from ..manifests import gitsource
from ..manifests.desired import DesiredState
from ..manifests.kinds import Repository
from ..manifests.load import load
from ..manifests.revision import working_tree_revision
from ..manifests.sources import MANIFEST_FOLDERS, check_root
from .plan import Deadline
from .plan import deadlines as plan_deadlines
from .reconcile import PassResult, reconcile
from .record import Snapshot, iso, now, read_snapshot
from .triggers import Reasons, Triggers, describe

# Where the clock-driven moments come from. Each source reads the desired state and the
# snapshot after a pass; model retirement dates (a later issue) add their source here.
DeadlineSource = Callable[[DesiredState, Snapshot], Iterable[Deadline]]
DEADLINE_SOURCES: list[DeadlineSource] = [plan_deadlines]

MIN_INTERVAL = 1.0  # seconds from the end of a pass to the start of the next
LOCK_WAIT = 2.0  # someone else reconciles this root: retry later rather than block shutdown
RETRY_CAP = 60.0  # an error is retried after 1, 2, 4 ... seconds, at most this (or --resync)
STORE_RETRY = 5.0  # a model's store that failed: read again after 5, 10, 20 ... s (to --resync)
EVENTS_BACKOFF_CAP = 30.0  # reconnecting to a stopped engine: 1, 2, 4 ... seconds, at most this
DEADLINE_SLACK = 0.2  # wake this long after a deadline: the plan's clock has 1 s steps
# A pass triggered by Docker alone waits this long for the rest of the sequence: one
# `docker rm -f` is a `die` then a `destroy`, one pass.
DOCKER_SETTLE = 0.3
# Triggers that may bring different manifests: they retry a revision known to be broken.
CONTENT_TRIGGERS = frozenset({"start", "files", "git", "fetch", "resync"})


@dataclass(frozen=True)
class WatchOptions:
    root: Path
    resync: float = 60.0
    debounce_ms: int = 500
    git: bool = False
    branch: str | None = None
    remote: str | None = None
    fetch_interval: float = 60.0
    parallel: int | None = None
    allow_empty: bool = False
    self_heal: bool | None = None  # None: as the Settings say (spec.selfHeal, default true)


class Log:
    """Structured log: one JSON object per line (time, event, fields), thread-safe."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        line = json.dumps({"time": iso(now()), "event": event, **fields}, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class _WorkingTree:
    """Manifests as they are in the root's folders (what `reconcile` reads)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return "working tree: " + ", ".join(f"{f}/" for f in MANIFEST_FOLDERS)

    def commit(self) -> str | None:
        return None  # reconcile reads the working tree and names its revision itself

    def revision(self) -> str | None:
        return working_tree_revision(self.root)

    def repository(self) -> Repository:
        return load(self.root)[0]

    def watched(self) -> tuple[list[Path], Callable[[Any, str], bool] | None, str]:
        import watchfiles

        paths = [self.root / f for f in MANIFEST_FOLDERS if (self.root / f).is_dir()]
        return paths, watchfiles.DefaultFilter(), "files"


class _GitBranch:
    """Manifests as committed on a branch (a local one, or REMOTE/BRANCH fetched on an
    interval); the working tree is never read for manifests."""

    def __init__(self, root: Path, branch: str | None, remote: str | None) -> None:
        gitsource.require_repository(root)
        self.root = root
        self.branch = branch or gitsource.current_branch(root)
        self.remote = remote
        self.ref = f"refs/remotes/{remote}/{self.branch}" if remote else f"refs/heads/{self.branch}"
        self.git_dir = gitsource.git_dir(root)
        if remote is not None:
            gitsource.require_remote(root, remote)
        else:
            try:
                gitsource.resolve(root, self.ref)
            except UserError:
                raise UserError(f"branch {self.branch!r} does not exist in {root}") from None

    def describe(self) -> str:
        if self.remote:
            return f"git: {self.remote}/{self.branch} (committed manifests, fetched)"
        return f"git: {self.branch} (committed manifests, not the working tree)"

    def commit(self) -> str:
        return gitsource.resolve(self.root, self.ref)

    def revision(self) -> str | None:
        try:
            return self.commit()
        except UserError:
            return None

    def repository(self) -> Repository:
        try:
            return load(self.root, gitsource.read_commit(self.root, self.ref)[1])[0]
        except UserError:  # not fetched yet: the working tree's Settings name it too
            return load(self.root)[0]

    def watched(self) -> tuple[list[Path], Callable[[Any, str], bool] | None, str]:
        git_dir = self.git_dir

        def refs_only(change: Any, path: str) -> bool:
            rel = os.path.relpath(path, git_dir)
            if rel.endswith(".lock"):
                return False
            return rel in ("HEAD", "packed-refs") or rel.startswith("refs" + os.sep)

        return [git_dir], refs_only, "git"


class Watcher:
    def __init__(self, options: WatchOptions, log: Log | None = None) -> None:
        self.options = options
        self.root = options.root
        self.log = log or Log(sys.stderr)
        self.stop = threading.Event()
        self.triggers = Triggers()
        if options.git:
            self.source: _WorkingTree | _GitBranch = _GitBranch(
                options.root, options.branch, options.remote
            )
        else:
            self.source = _WorkingTree(options.root)
        repo = self.source.repository()
        # One backend for the whole watch: it remembers its own stops and removals, so that
        # the events they cause are told from drift.
        self.backend: Backend = connect(repo.settings)
        self._instance = repo.instance  # read by the events thread
        self._events: EventStream | None = None
        self.crashed = False
        # The consumer's state (only its thread touches these).
        self._last_end = float("-inf")  # monotonic end of the last pass
        self._pass_wall: datetime = now()  # wall-clock start of the last pass
        self._deadline: tuple[float, str] | None = None  # (monotonic, what)
        self._retry_at: float | None = None
        self._store_waits = 0  # passes in a row where a deployment waited for its model's store
        self._errors = 0  # passes failed in a row (not counting invalid manifests)
        self._invalid: str | None = None  # revision ("" = working tree) with broken manifests
        self._reported: tuple[Any, ...] | None = None  # the last error logged
        self._warnings: tuple[str, ...] = ()
        self._fetch_error: str | None = None

    # -- the main thread --------------------------------------------------------------------

    def run(self) -> int:
        # The main thread only waits (join) while the others work, so a signal handler here
        # never runs while the main thread holds a lock.
        def on_signal(signo: int, frame: Any) -> None:
            name = signal.Signals(signo).name
            if self.stop.is_set():  # the second one: exit now (the kernel frees the lock)
                self.log("stopped", signal=name, note="at once; the next start finishes")
                sys.stderr.flush()
                os._exit(130)
            self.log("stopping", signal=name, note="finishing or abandoning the pass")
            self._shutdown()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            o = self.options
            self.log(
                "watching",
                root=str(self.root),
                instance=self._instance,
                source=self.source.describe(),
                dockerEvents=self.backend.watching(self._instance),
                resyncSeconds=o.resync,
                debounceMs=o.debounce_ms,
                **({"fetchSeconds": o.fetch_interval} if o.git and o.remote else {}),
            )
            consumer = self._thread(self._consume, "watch-passes")
            self._thread(self._watch_files, "watch-files")
            self._thread(self._watch_docker, "watch-docker")
            if o.git and o.remote:
                self._thread(self._fetch_loop, "watch-fetch")
            while consumer.is_alive():
                consumer.join(0.25)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        self.log("stopped")
        return 1 if self.crashed else 0

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        # Daemon threads: a producer blocked in a read never keeps the process alive.
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _shutdown(self) -> None:
        self.stop.set()
        self.triggers.wake()
        if self._events is not None:
            self._events.close()

    # -- the consumer: passes ---------------------------------------------------------------

    def _consume(self) -> None:
        try:
            if self.options.git and self.options.remote:
                self._fetch()  # the first pass applies the remote's newest commit
            reasons: Reasons = {("start", ""): 1}
            while not self.stop.is_set():
                if reasons:
                    self._pass(reasons)
                reasons = self._next_reasons()
        except BaseException:  # a bug: say so, and stop rather than spin
            self.crashed = True
            self.log("crashed", error=traceback.format_exc())
            self._shutdown()

    def _due(self) -> tuple[float, tuple[str, str]]:
        """The next timed reason: resync, deadline or retry, whichever comes first."""
        due = [(self._last_end + self.options.resync, ("resync", ""))]
        if self._deadline is not None:
            due.append((self._deadline[0], ("deadline", self._deadline[1])))
        if self._retry_at is not None:
            due.append((self._retry_at, ("retry", "")))
        return min(due)

    def _next_reasons(self) -> Reasons:
        while not self.stop.is_set():
            at, timed = self._due()
            reasons = self.triggers.take(at - time.monotonic())
            if self.stop.is_set():
                break
            if time.monotonic() >= at:
                reasons[timed] = reasons.get(timed, 0) + 1
                if timed[0] == "deadline":
                    self._deadline = None
                elif timed[0] == "retry":
                    self._retry_at = None
            if not reasons:
                continue
            # Passes at least MIN_INTERVAL apart; whatever comes meanwhile joins this one.
            rest = self._last_end + MIN_INTERVAL - time.monotonic()
            if {kind for kind, _ in reasons} == {"docker"}:
                rest = max(rest, DOCKER_SETTLE)
            if rest > 0 and self.stop.wait(rest):
                break
            for key, n in self.triggers.take(0).items():
                reasons[key] = reasons.get(key, 0) + n
            return reasons
        return {}

    def _pass(self, reasons: Reasons) -> None:
        trigger = describe(reasons)
        kinds = {kind for kind, _ in reasons}
        started = time.monotonic()
        revision: str | None = None
        try:
            revision = self.source.commit()
            if self._invalid == (revision or "") and not kinds & CONTENT_TRIGGERS:
                return  # known broken manifests: a Docker event or a deadline changes nothing
            self._pass_wall = now()
            result = reconcile(
                self.root,
                allow_empty=self.options.allow_empty,
                parallel=self.options.parallel,
                stop=self.stop,
                trigger="watch: " + "; ".join(trigger),
                lock_wait=LOCK_WAIT,
                revision=revision,
                backend=self.backend,
                self_heal=self.options.self_heal,
            )
        except ManifestError as exc:
            self._last_end = time.monotonic()
            shown = revision or self.source.revision()
            self._invalid, self._deadline, self._retry_at = revision or "", None, None
            self._report(
                ("invalid", shown, tuple(exc.lines())),
                trigger=trigger,
                revision=shown,
                result="invalid",
                error=f"{exc.summary()}; nothing was changed",
                problems=exc.lines(),
                durationSeconds=round(time.monotonic() - started, 2),
            )
            return
        except Exception as exc:  # the engine is down, the lock is held, or a bug: retry later
            self._last_end = time.monotonic()
            self._errors += 1
            delay = min(2.0 ** (self._errors - 1), RETRY_CAP, self.options.resync)
            self._retry_at = self._last_end + delay
            user = isinstance(exc, UserError)
            text = str(exc) if user else f"internal error: {exc!r}"
            self._report(
                ("error", text),
                trigger=trigger,
                revision=revision or self.source.revision(),
                result="error",
                error=text,
                retryInSeconds=delay,
                **({} if user else {"traceback": traceback.format_exc()}),
            )
            return
        self._last_end = time.monotonic()
        self._invalid, self._errors, self._retry_at, self._reported = None, 0, None, None
        if result.store_waits:  # a model's store: tried again soon, then less and less often
            self._store_waits += 1
            delay = min(STORE_RETRY * 2.0 ** (self._store_waits - 1), self.options.resync)
            self._retry_at = self._last_end + delay
        else:
            self._store_waits = 0
        self._log_pass(trigger, result)
        if result.desired is not None:
            self._instance = result.desired.repo.instance
            self._schedule(result.desired, result.plan.waits)

    def _report(self, key: tuple[Any, ...], **fields: Any) -> None:
        """A failed pass, logged once per (revision, error): not every resync."""
        if key != self._reported:
            self._reported = key
            self.log("pass", **fields)

    def _log_pass(self, trigger: list[str], result: PassResult) -> None:
        outcomes = result.outcomes
        if not outcomes:
            verdict = "no-op"
        elif any(o.interrupted for o in outcomes):
            verdict = "interrupted"
        else:
            verdict = "converged" if result.converged else "failed"
        fields: dict[str, Any] = {
            "trigger": trigger,
            "revision": result.plan.revision,
            "result": verdict,
            "changes": [c.describe() for c in result.plan.changes],
            "durationSeconds": round(result.seconds, 2),
        }
        failures = [o.describe() for o in outcomes if not o.ok and not o.interrupted]
        if failures:
            fields["failures"] = failures
        if result.plan.drift:  # (every pass while it lasts: it is what a person must decide)
            fields["drift"] = [f"{d.name}: {d.cause}" for d in result.plan.drift]
        if result.store_waits and self._retry_at is not None:
            fields["waitingForStores"] = list(result.store_waits)
            fields["retryInSeconds"] = round(self._retry_at - self._last_end, 1)
        warnings = tuple(result.plan.warnings)
        if warnings != self._warnings:  # warnings repeat on every pass: logged when they change
            self._warnings = warnings
            fields["warnings"] = list(warnings)
        self.log("pass", **fields)

    def _schedule(self, desired: DesiredState, waits: Iterable[Deadline]) -> None:
        """Wake up for the first clock-driven moment still ahead of the last pass: the
        sources' deadlines, and the restores the pass deferred."""
        try:
            snapshot = read_snapshot(self.root, desired.repo.instance)
        except UserError:
            return
        found = [d for source in DEADLINE_SOURCES for d in source(desired, snapshot)]
        ahead = [d for d in (*found, *waits) if d.at > self._pass_wall]
        if not ahead:
            self._deadline = None
            return
        first = min(ahead)
        delay = (first.at - datetime.now(UTC)).total_seconds() + DEADLINE_SLACK
        self._deadline = (time.monotonic() + max(0.0, delay), first.what)

    # -- producers --------------------------------------------------------------------------

    def _watch_files(self) -> None:
        import watchfiles

        paths, watch_filter, kind = self.source.watched()
        if not paths:
            return
        step = self.options.debounce_ms  # quiet time that ends a burst
        try:
            for changes in watchfiles.watch(
                *paths,
                watch_filter=watch_filter,
                step=step,
                debounce=max(4 * step, 1600),  # a never-ending burst still passes this often
                stop_event=self.stop,
                raise_interrupt=False,
            ):
                self.triggers.add(kind, "changed", len(changes))
        except Exception as exc:  # a folder deleted, inotify limits: resync still works
            if not self.stop.is_set():
                self.log(
                    "error",
                    error=f"watching {kind} stopped: {exc}; changes apply at the next resync "
                    f"(every {self.options.resync:g}s)",
                )

    def _watch_docker(self) -> None:
        since = time.time_ns()
        failures = 0
        while not self.stop.is_set():
            try:
                stream = self.backend.events(since)
            except (EngineUnreachable, EngineError) as exc:
                failures += 1
                if failures == 1:
                    self.log("docker-events", state="lost", error=str(exc))
                self.stop.wait(min(2.0 ** (failures - 1), EVENTS_BACKOFF_CAP))
                continue
            self._events = stream
            if self.stop.is_set():
                break
            if failures:
                # Events may have been missed while it was away: look at everything.
                self.log("docker-events", state="resumed", since=_timestamp(since))
                self.triggers.add("docker", "engine reachable again")
                failures = 0
            for event in stream:
                if event.time_ns:  # resume just after it (`since` is inclusive)
                    since = event.time_ns + 1
                self._docker_event(event)
            stream.close()
            if not self.stop.is_set():  # the engine closed the stream: stopped or restarted
                failures = 1
                self.log("docker-events", state="lost", error="the engine closed the stream")
                self.stop.wait(0.5)
        if self._events is not None:
            self._events.close()

    def _docker_event(self, event: Event) -> None:
        if event.instance != self._instance:
            return  # another root's replica
        if event.own:  # told by id: a name can come back on a new replica
            return  # the reconciler's own stop or removal
        self.triggers.add("docker", f"{event.action} {event.name}")

    def _fetch_loop(self) -> None:
        while not self.stop.wait(self.options.fetch_interval):
            self._fetch()

    def _fetch(self) -> None:
        source = self.source
        assert isinstance(source, _GitBranch) and source.remote
        before = source.revision()
        try:
            gitsource.fetch(self.root, source.remote, source.branch)
        except UserError as exc:
            if str(exc) != self._fetch_error:  # once per error, not every interval
                self._fetch_error = str(exc)
                self.log("fetch", result="error", error=str(exc))
            return
        if self._fetch_error is not None:
            self._fetch_error = None
            self.log("fetch", result="recovered")
        after = source.revision()
        if after != before:
            self.triggers.add("fetch", f"{source.remote}/{source.branch} {(after or '')[:12]}")


def _timestamp(ns: int) -> str:
    """A moment in nanoseconds as "seconds.nanoseconds", for the log (Docker's `since`)."""
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def watch(options: WatchOptions) -> int:
    check_root(options.root)
    return Watcher(options).run()
