"""`reconciler watch` restores a frozen replica on its own: the health event and/or the
unready deadline trigger a pass that replaces the replica, recorded in the history."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import (
    TINY_TEMPLATE,
    Host,
    configuration,
    deployment,
    docs,
    http_get,
    settings,
    wait_for,
)
from tests.test_watch import Watch, history, running

pytestmark = pytest.mark.engine

PROBE = "    readinessProbe: {periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1}\n"


def _health(host: Host, cid: str) -> str | None:
    return ((host.client.inspect_container(cid)["State"] or {}).get("Health") or {}).get("Status")


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    """pids frozen by the test: always continued in teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _restore_trigger(entry: dict[str, Any]) -> bool:
    trigger = entry.get("trigger") or ""  # a list in the log line, a string in the history
    text = trigger if isinstance(trigger, str) else " ".join(trigger)
    return "health" in text or "deadline" in text


def test_watch_replaces_a_frozen_replica_without_a_manual_step(
    host: Host, tmp_path: Path, frozen: list[int]
):
    template = TINY_TEMPLATE.replace("    startupTimeout: 30\n", "    startupTimeout: 30\n" + PROBE)
    assert PROBE in template
    host.write(template, "templates/tiny.yaml")
    host.write(settings(host.instance, "  unreadyRestartSeconds: 3\n"), "manifests/settings.yaml")
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    w = Watch(host.root, tmp_path / "watch-health.log", "--resync", "120", "--debounce-ms", "200")
    try:
        w.wait_pass(lambda p: p["result"] == "converged", timeout=40, what="the first pass")
        wait_for(lambda: running(host, "tiny"), timeout=30, what="tiny RUNNING")
        cid = host.container_of("tiny")["Id"]
        wait_for(lambda: _health(host, cid) == "healthy", timeout=30, what="healthy")
        n_passes, n_history = len(w.passes()), len(history(host))
        frozen.extend(int(p[1]) for p in host.client.top(cid, ps_args="-o user,pid")["Processes"])
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)

        def restored() -> dict[str, Any] | None:
            if w.proc.poll() is not None:
                raise AssertionError(f"watch exited {w.proc.returncode}:\n{w.text()}")
            return next(
                (
                    p
                    for p in w.passes()[n_passes:]
                    if any("unready for" in c for c in p.get("changes", []))
                ),
                None,
            )

        try:
            line = wait_for(restored, timeout=45, what="a pass restoring the frozen replica")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{w.text()}") from None
        assert line["result"] == "converged", line
        assert _restore_trigger(line), line  # the health event and/or the unready deadline
        (change,) = [c for c in line["changes"] if "unready for" in c]
        assert "replica 0 unready for " in change and "(unreadyRestartSeconds 3)" in change, line

        new = wait_for(
            lambda: (c := host.container_of("tiny"))["Id"] != cid and c["State"] == "running" and c,
            timeout=30,
            what="a new container",
        )
        port = next(p["PublicPort"] for p in new["Ports"] if p.get("PublicPort"))
        assert wait_for(
            lambda: http_get(f"http://127.0.0.1:{port}/v2/health/ready")[0] == 200,
            timeout=15,
            what="the new replica to answer",
        )
        assert running(host, "tiny")
        entries = history(host)[n_history:]
        entry = next(
            (e for e in entries if any("unready for" in str(c) for c in e.get("changes", []))),
            None,
        )
        assert entry is not None, entries
        assert _restore_trigger(entry), entry
        assert entry["trigger"].startswith("watch: "), entry
        # Docker's health_status event alone asked for a pass too (before or with the restore).
        after = w.passes()[n_passes:]
        assert any("health_status: unhealthy tiny" in " ".join(p["trigger"]) for p in after), after
        (record,) = host.snapshot()["deployments"].values()
        assert record["restores"] == 1, record
    finally:
        w.kill()
