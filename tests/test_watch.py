"""`reconciler watch` against the real Docker engine and real git repositories.

The watch loop runs as a child process (`python -m reconciler watch`), exactly as a user or a
systemd unit runs it, with short intervals; its JSON log lines are read from a file. Also here:
`plan`/`reconcile --revision` (rollback), the crash-loop backoff and the 7-day DEAD deletion.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from tests.engine_support import (
    TEST_IMAGE,
    Host,
    configuration,
    deployment,
    docs,
    wait_for,
)

pytestmark = pytest.mark.engine


class Watch:
    """`reconciler watch --root ROOT ARGS...` as a child process, its log in a file."""

    def __init__(self, root: Path, log: Path, *args: str) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "watch", "--root", str(root), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "text", "line": line})
        return out

    def passes(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == "pass"]

    def wait_pass(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20, what: str = ""
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited {self.proc.returncode}:\n{self.text()}")
            return next((p for p in self.passes() if predicate(p)), None)

        try:
            return wait_for(found, timeout, what or "a pass")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.text()}") from None

    def text(self) -> str:
        return self.log.read_text()

    def terminate(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watcher(host: Host, tmp_path: Path) -> Iterator[Callable[..., Watch]]:
    """Starts watch processes on the test's root; they are killed before the host's containers
    are removed (or they would restore them)."""
    started: list[Watch] = []

    def start(*args: str) -> Watch:
        w = Watch(host.root, tmp_path / f"watch-{len(started)}.log", *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def git_init(root: Path) -> None:
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("state/\n")


def commit(root: Path, message: str, *paths: str) -> str:
    git(root, "add", *(paths or ("-A",)))
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


def running(host: Host, name: str, config: str | None = None) -> bool:
    status = host.status().get(name) or {}
    return status.get("status") == "RUNNING" and (
        config is None or status.get("latestRunningConfigurationId") == config
    )


def history(host: Host) -> list[dict[str, Any]]:
    path = host.root / "state/snapshot.json"
    return json.loads(path.read_text())["history"] if path.exists() else []


def next_entry(host: Host, after: int, timeout: float = 15, what: str = "") -> dict[str, Any]:
    """The pass history entry after the first `after` ones (the pass has finished)."""
    return wait_for(
        lambda: history(host)[after] if len(history(host)) > after else None,
        timeout,
        what or "a pass in the history",
    )


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


V1_V2 = (configuration("tiny-v1"), configuration("tiny-v2", version="2"))


def test_a_commit_is_applied_within_seconds_and_the_working_tree_is_not(host, watcher):
    git_init(host.root)
    host.write(docs(*V1_V2, deployment("tiny", "tiny-v1")))
    commit(host.root, "tiny v1")
    w = watcher("--git", "--resync", "30", "--debounce-ms", "200")
    first = wait_for(w.events, what="the startup line")[0]
    assert first["event"] == "watching" and first["source"].startswith("git: main")
    assert first["instance"] == host.instance
    w.wait_pass(lambda p: p["result"] == "converged", what="the first pass")
    assert running(host, "tiny", "tiny-v1")
    # An uncommitted edit is not applied; a commit (of another file) is, within seconds.
    host.write(docs(*V1_V2, deployment("tiny", "tiny-v2")))
    (host.root / "manifests/other.yaml").write_text(deployment("other", "tiny-v1"))
    second = commit(host.root, "add other", "manifests/other.yaml")
    # "Within seconds": the pass is the commit's (its trigger), not the 30 s resync's, and it
    # comes within next_entry's deadline (no timed assertion: a loaded machine is slower).
    entry = next_entry(host, 1, what="the commit to be applied")
    assert entry["revision"] == second and entry["trigger"].startswith("watch: git")
    assert entry["result"] == "converged" and running(host, "other")
    assert running(host, "tiny", "tiny-v1")
    assert host.container_of("other")["Labels"]["reconciler.revision"] == second
    # Committing the edit applies it.
    third = commit(host.root, "tiny v2")
    assert next_entry(host, 2, what="tiny v2")["revision"] == third
    assert running(host, "tiny", "tiny-v2")
    assert w.terminate() == 0


def test_a_broken_commit_changes_nothing_is_reported_once_and_a_good_one_applies(
    host, watcher, docker_client
):
    git_init(host.root)
    host.write(docs(*V1_V2, deployment("tiny", "tiny-v1")))
    commit(host.root, "tiny v1")
    w = watcher("--git", "--resync", "1", "--debounce-ms", "200")
    w.wait_pass(lambda p: p["result"] == "converged", what="the first pass")
    before = host.container_of("tiny")["Id"]
    host.write(docs(*V1_V2, deployment("tiny", "tiny-v2")))
    (host.root / "manifests/broken.yaml").write_text("kind: Deployment\nmetadata: {name: [\n")
    broken = commit(host.root, "broken")
    invalid = w.wait_pass(lambda p: p["result"] == "invalid", what="the manifest error")
    assert invalid["revision"] == broken
    assert any(line.startswith("manifests/broken.yaml:") for line in invalid["problems"])
    assert invalid["error"].endswith("nothing was changed")
    # Hand-made drift while the head is broken is not restored either: no change at all.
    docker_client.stop(before, timeout=1)
    # A few resyncs (every second) and the Docker events of the stop, all silent: the error
    # is reported once for this revision, not every second. (The pause is the point: a window
    # in which nothing may be reported; nothing is waited for.)
    time.sleep(3.5)
    assert [p["result"] for p in w.passes()].count("invalid") == 1, w.text()
    assert [c["Id"] for c in host.containers()] == [before]
    assert host.container_of("tiny")["State"] == "exited"
    # The next good commit applies (and restores the stopped container, as v2).
    (host.root / "manifests/broken.yaml").unlink()
    good = commit(host.root, "fixed")
    assert next_entry(host, 1, what="the good commit")["revision"] == good
    assert running(host, "tiny", "tiny-v2")
    (container,) = host.containers()
    assert container["Labels"]["reconciler.revision"] == good
    assert w.terminate() == 0


def test_removed_or_stopped_containers_are_restored_and_the_drift_recorded(
    host, watcher, docker_client
):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    w = watcher("--resync", "60")
    w.wait_pass(lambda p: p["result"] == "converged", what="the first pass")
    first = host.container_of("tiny")["Id"]
    docker_client.remove_container(first, force=True)

    def replaced(old: str) -> str | None:
        found = [c for c in host.containers() if c["Id"] != old and c["State"] == "running"]
        return found[0]["Id"] if found and running(host, "tiny") else None

    # Restored by the Docker event (the entry's trigger says so), not the 60 s resync.
    second = wait_for(lambda: replaced(first), timeout=30, what="docker rm -f undone")
    entry = next_entry(host, 1)
    assert entry["changes"] == [
        f"+ tiny ({host.status()['tiny']['id']}): container removed outside the reconciler"
    ]
    assert "docker destroy tiny" in entry["trigger"]
    docker_client.stop(second, timeout=1)
    third = wait_for(lambda: replaced(second), timeout=30, what="docker stop undone")
    entry = next_entry(host, 2)
    (change,) = entry["changes"]
    assert change.startswith("-/+ tiny") and "container exited with code" in change
    assert change.endswith("outside the reconciler")
    assert [c["Id"] for c in host.containers()] == [third]
    assert w.terminate() == 0


def test_no_self_heal_reports_drift_and_leaves_the_containers_as_they_are(
    host, watcher, docker_client
):
    """`watch --no-self-heal` (Argo CD's self-heal off): a container removed or stopped by
    hand is reported on every pass (its log's `drift`, status `syncStatus: OutOfSync`) and
    left so; a git change still applies; a person's `reconciler reconcile` restores it."""
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    w = watcher("--resync", "1", "--no-self-heal")
    w.wait_pass(lambda p: p["result"] == "converged", what="the first pass")
    first = host.container_of("tiny")["Id"]
    docker_client.stop(first, timeout=1)
    reported = w.wait_pass(lambda p: "drift" in p, what="the drift reported")
    (line,) = reported["drift"]
    assert line.startswith("tiny: container exited with code") and "outside" in line, line
    assert reported["changes"] == [] and reported["result"] == "no-op"
    # Several passes later (resync every second), still reported, still not restored.
    w.wait_pass(lambda p: "drift" in p and p["time"] > reported["time"], what="later passes")
    assert [c["Id"] for c in host.containers()] == [first]
    assert host.container_of("tiny")["State"] == "exited"
    status = host.status()["tiny"]
    assert status["syncStatus"] == "OutOfSync" and status["status"] == "PENDING", status
    assert "outside the reconciler" in status["statusMessage"]
    # A change in git is applied as ever (it replaces the stopped container with v2).
    host.write(docs(configuration("tiny-v2", version="2"), deployment("tiny", "tiny-v2")))
    wait_for(lambda: running(host, "tiny", "tiny-v2"), timeout=30, what="the git change")
    second = host.container_of("tiny")["Id"]
    docker_client.remove_container(second, force=True)
    w.wait_pass(lambda p: any(d.startswith("tiny: container removed") for d in p.get("drift", ())))
    assert host.containers() == []
    assert w.terminate() == 0
    # A person decides: reconcile restores it.
    host.reconcile()
    assert running(host, "tiny", "tiny-v2") and host.status()["tiny"]["syncStatus"] == "Synced"


def test_sigterm_during_a_pass_releases_the_lock_and_the_next_start_converges(host, watcher):
    from reconciler.core.record import instance_lock

    host.write(docs(configuration("slow", readyDelay="5"), deployment("slow", "slow")))
    w = watcher()
    wait_for(lambda: host.containers(), what="the container being created")
    assert w.terminate() == 0
    # The readiness wait (5 s) was abandoned: the pass ended "interrupted" with the deployment
    # PENDING below; one that had waited would have converged (RUNNING).
    events = [e["event"] for e in w.events()]
    assert events[-2:] == ["pass", "stopped"] and "stopping" in events
    assert w.passes()[-1]["result"] == "interrupted"
    with instance_lock(host.root, wait=0):  # free at once
        pass
    status = host.status()["slow"]
    assert status["status"] == "PENDING"  # not DEAD: interrupted is no failure
    (kept,) = host.containers()
    w2 = watcher()
    w2.wait_pass(lambda p: p["result"] == "converged", what="the next start converging")
    assert running(host, "slow")
    assert [c["Id"] for c in host.containers()] == [kept["Id"]]  # no duplicate
    assert w2.terminate() == 0


def test_a_burst_of_50_file_writes_is_one_or_two_passes(host, watcher):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    w = watcher("--debounce-ms", "300", "--resync", "60")
    w.wait_pass(lambda p: p["result"] == "converged", what="the first pass")
    before = len(w.passes())
    for i in range(49):
        (host.root / f"manifests/burst-{i:02}.yaml").write_text(
            configuration(f"burst-{i:02}", version=str(i))
        )
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "burst-48")))
    wait_for(lambda: len(w.passes()) > before, timeout=20, what="the burst's pass")
    w.wait_pass(lambda p: "burst-48" in " ".join(p["changes"]), what="the burst applied")
    assert running(host, "tiny", "burst-48")
    # The point, not a wait: a window in which anything still queued would run (passes are
    # 1 s apart), and nothing may.
    time.sleep(1.5)
    burst = w.passes()[before:]
    assert 1 <= len(burst) <= 2, burst
    assert any("files changed" in t for p in burst for t in p["trigger"])
    assert len(host.containers()) == 1
    assert w.terminate() == 0


def test_watch_wakes_up_for_a_ttl_deadline(host, watcher):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1", "  ttl: 10m\n")))
    host.reconcile()
    host.edit_record("tiny", createdAt=ago(minutes=10, seconds=-3))  # expires in 3 s
    w = watcher("--resync", "60")
    deleted = w.wait_pass(lambda p: p["result"] == "converged", timeout=15, what="ttl expiry")
    assert deleted["trigger"] == ["deadline ttl 10m of tiny expires"]
    assert host.status()["tiny"]["statusMessage"] == "deleted: ttl 10m expired"
    assert host.containers() == []
    assert w.terminate() == 0


def test_watch_follows_a_remote_branch(host, watcher, tmp_path):
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    git_init(host.root)
    host.write(docs(*V1_V2, deployment("tiny", "tiny-v1")))
    commit(host.root, "tiny v1")
    git(host.root, "remote", "add", "origin", str(origin))
    git(host.root, "push", "-q", "origin", "main")
    w = watcher("--git", "--remote", "origin", "--fetch-interval", "1", "--resync", "60")
    w.wait_pass(lambda p: p["result"] == "converged", what="the first pass")
    # Someone else pushes v2; the host follows the remote branch.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    (clone / "manifests/app.yaml").write_text(docs(*V1_V2, deployment("tiny", "tiny-v2")))
    pushed = commit(clone, "tiny v2")
    git(clone, "push", "-q", "origin", "main")
    assert next_entry(host, 1, what="the pushed commit")["revision"] == pushed
    assert running(host, "tiny", "tiny-v2")
    assert any(t.startswith("fetch origin/main") for p in w.passes() for t in p["trigger"])
    assert w.terminate() == 0


CRASHER = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: crasher-serving
spec:
  scenarioId: tiny
  container:
    image: reconciler-test/busybox:2
    # Ready and serving for 2 s on its first run, then it dies quickly on every restart
    # (the container's file system survives Docker's restarts).
    command:
      - sh
      - -c
      - >-
        /bin/serve & if [ -e /tmp/crashed ]; then sleep 0.3; else sleep 2; fi;
        touch /tmp/crashed; echo 'fatal: lost the model' >&2; exit 5
    startupTimeout: 30
    stopTimeout: 1
"""


def test_a_crash_loop_ends_dead_without_slowing_the_others(host, watcher):
    """Docker restarts the crashing server (restart policy unless-stopped, with Docker's own
    exponential backoff); after more than 4 restarts it is DEAD with the reason and its last
    words, while a change to another deployment applies meanwhile; no pass storm."""
    (host.root / "templates/crasher.yaml").write_text(CRASHER)
    host.write(
        docs(
            configuration("crash", "crasher-serving"),
            deployment("crasher", "crash"),
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2"),
            deployment("steady", "tiny-v1"),
        )
    )
    w = watcher("--resync", "60", "--debounce-ms", "200")
    w.wait_pass(lambda p: p["result"] == "converged", what="the first pass")
    wait_for(lambda: any("docker die crasher" in t for p in w.passes() for t in p["trigger"]))
    host.write(
        docs(
            configuration("crash", "crasher-serving"),
            deployment("crasher", "crash"),
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2"),
            deployment("steady", "tiny-v2"),
        )
    )
    # Not held up by the crash loop: the wait's deadline is the bound (generous; the change
    # itself is one pass of a second or two, debounced 0.2 s).
    wait_for(lambda: running(host, "steady", "tiny-v2"), timeout=15, what="the other change")
    wait_for(
        lambda: host.status()["crasher"]["status"] == "DEAD", timeout=30, what="the crash loop"
    )
    message = host.status()["crasher"]["statusMessage"]
    assert message.startswith("crash loop: container exited with code 5 and was restarted ")
    assert "times by Docker; not retried until its configuration or image changes" in message
    assert message.endswith("fatal: lost the model")
    assert "fatal: lost the model" in host.cli("logs", "crasher").out
    dead = w.wait_pass(lambda p: p["result"] == "failed", what="the pass that found it DEAD")
    assert dead["failures"][0].startswith("-/+ crasher: DEAD")
    wait_for(lambda: len(host.containers()) == 1, what="the crashing container removed")
    assert running(host, "steady", "tiny-v2")
    passes = len(w.passes())
    assert passes < 20, w.text()
    time.sleep(1.5)  # the point: a window in which no pass may come
    assert len(w.passes()) == passes  # DEAD: nothing more to do, no event storm
    assert w.terminate() == 0


def test_a_container_that_keeps_exiting_is_dead_after_four_restores(host, docker_client):
    """The reconciler's own restores (a container stopped, or exited without a restart
    policy): a fifth exit within 10 minutes of four restores is a crash loop."""
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    docker_client.stop(host.container_of("tiny")["Id"], timeout=1)
    host.edit_record("tiny", restores=4, lastRestore=ago(seconds=30))
    (change,) = host.plan()["changes"]
    assert change["failure"].startswith(
        "crash loop: container exited with code 0 outside the reconciler after 4 restores "
        "within 10 minutes"
    )
    assert host.reconcile(ok=False).code == 1
    status = host.status()["tiny"]
    assert status["status"] == "DEAD" and status["statusMessage"].startswith("crash loop: ")
    assert host.containers() == []
    assert host.plan()["changes"] == []  # not retried until the configuration changes


def test_restores_back_off_exponentially(host, docker_client):
    """The backoff in the plan: restore n waits 2^(n-2) s after restore n-1."""
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    docker_client.stop(host.container_of("tiny")["Id"], timeout=1)
    host.edit_record("tiny", restores=3, lastRestore=ago(seconds=1))
    plan = host.plan()
    assert plan["changes"] == []
    assert any("restore 4 backs off until" in w for w in plan["warnings"]), plan["warnings"]
    host.edit_record("tiny", restores=3, lastRestore=ago(seconds=5))
    (change,) = host.plan()["changes"]
    assert change["action"] == "replace" and change["failure"] is None
    # Restores long ago (out of the window) count from zero again.
    host.edit_record("tiny", restores=4, lastRestore=ago(minutes=11))
    assert host.plan()["changes"][0]["failure"] is None
    host.edit_record("tiny", restores=4, lastRestore=ago(seconds=30))
    assert host.plan()["changes"][0]["failure"].startswith("crash loop: ")


def test_revision_plans_and_reconciles_a_commit_for_rollback(host):
    git_init(host.root)
    host.write(docs(*V1_V2, deployment("tiny", "tiny-v1")))
    first = commit(host.root, "tiny v1")
    host.write(docs(*V1_V2, deployment("tiny", "tiny-v2")))
    second = commit(host.root, "tiny v2")
    host.reconcile()
    assert running(host, "tiny", "tiny-v2")
    # The working tree is not read with --revision: a broken file there does not matter.
    (host.root / "manifests/broken.yaml").write_text("kind: [\n")
    plan = json.loads(host.cli("plan", "--json", "--revision", "HEAD~1").out)
    assert plan["revision"] == first
    (change,) = plan["changes"]
    assert change["action"] == "replace"
    assert change["cause"].endswith("(configuration tiny-v2 → tiny-v1)")
    host.reconcile("--revision", first[:10])
    assert running(host, "tiny", "tiny-v1")
    assert host.snapshot()["history"][-1]["revision"] == first
    assert host.container_of("tiny")["Labels"]["reconciler.revision"] == first
    # Roll forward again by commit.
    host.reconcile("--revision", "main")
    assert running(host, "tiny", "tiny-v2")
    assert host.snapshot()["history"][-1]["revision"] == second
    bad = host.cli("plan", "--revision", "no-such-rev")
    assert bad.code == 1 and "Traceback" not in bad.err
    assert bad.err.strip().startswith("error: revision 'no-such-rev' is not a commit")


def test_a_deployment_dead_for_seven_days_is_deleted(host):
    host.write(
        docs(configuration("crash-config", crash="yes"), deployment("crash", "crash-config"))
    )
    host.reconcile(ok=False)
    assert host.status()["crash"]["status"] == "DEAD"
    eight_days_ago = ago(days=8)
    host.edit_record("crash", deadSince=eight_days_ago)
    (change,) = host.plan()["changes"]
    assert (change["action"], change["cause"]) == (
        "delete",
        f"DEAD since {eight_days_ago}, more than 7 days",
    )
    host.reconcile()
    status = host.status()["crash"]
    assert status["status"] == "DEAD" and status["lastOperation"] == "DELETE"
    assert status["statusMessage"] == f"deleted: DEAD since {eight_days_ago}, more than 7 days"
    plan = host.plan()
    assert plan["changes"] == []
    assert "crash: deleted after 7 days DEAD" in plan["warnings"][0]
    assert host.containers() == []


def test_docker_events_resume_from_since_and_own_actions_are_known(host, docker_client):
    from reconciler.backends import Event, connect

    backend = connect()
    since = time.time_ns()
    labels = {"reconciler.managed": "true", "reconciler.instance": host.instance}
    c = docker_client.create_container(TEST_IMAGE, command=["true"], labels=labels)
    docker_client.start(c["Id"])
    docker_client.wait(c["Id"], timeout=10)
    # Opened after the container died: the engine replays its `die` from `since` on.
    stream = backend.events(since)
    got: queue.Queue[Event] = queue.Queue()

    def next_of(action: str) -> Event:  # other roots' containers may have events too
        while True:
            event = got.get(timeout=10)
            if event.replica_id == c["Id"] and event.action == action:
                return event

    reader = threading.Thread(target=lambda: [got.put(e) for e in stream], daemon=True)
    reader.start()
    try:
        event = next_of("die")
    finally:
        stream.close()
    reader.join(timeout=5)
    assert not reader.is_alive()  # close() ends the stream from another thread
    assert event.action == "die" and event.replica_id == c["Id"]
    assert event.instance == host.instance and not event.own
    assert event.time_ns is not None and event.time_ns >= since
    # The backend's own removal: its `destroy` is marked as such.
    (replica,) = [r for r in backend.observe(host.instance).containers if r.id == c["Id"]]
    own = backend.events(event.time_ns + 1)
    backend.delete([replica])
    reader = threading.Thread(target=lambda: [got.put(e) for e in own], daemon=True)
    reader.start()
    try:
        assert next_of("destroy").own
    finally:
        own.close()
