"""State that cannot be written (issue 13, finding 8), against the real Docker engine.

A pass must be recorded: when `state/` cannot be written, reconcile says so in one line naming
the state folder and changes nothing on the host; a write that fails at the end (space ran out
during the pass) is one line too, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Result, cli_process
from tests.engine_support import Host, configuration, deployment, docs

pytestmark = pytest.mark.engine


def manifests(config: str) -> str:
    return docs(
        configuration("tiny-v1"),
        configuration("tiny-v2", version="2"),
        deployment("tiny", config),
    )


def reconcile_process(host: Host) -> Result:
    return cli_process("reconcile", "--root", host.root, timeout=120)


def one_line(result: Result) -> str:
    """The one error line of a failed command (no traceback, nothing else on stderr)."""
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err, result.err
    (line,) = result.lines
    return line


def ids(host: Host) -> list[str]:
    return sorted(c["Id"] for c in host.containers())


def test_state_that_is_a_file_creates_nothing(host):
    host.write(manifests("tiny-v1"))
    (host.root / "state").write_text("not a folder\n")
    line = one_line(reconcile_process(host))
    assert line.startswith("error: ") and str(host.root / "state") in line, line
    assert "not a folder" in line
    assert host.containers() == []


def test_state_that_is_a_file_replaces_nothing(host):
    """The finding: the container had been replaced without the pass being recorded."""
    host.write(manifests("tiny-v1"))
    host.reconcile()
    before = ids(host)
    state = host.root / "state"
    state.rename(host.root / "state-aside")
    state.write_text("not a folder\n")
    host.write(manifests("tiny-v2"))
    line = one_line(reconcile_process(host))
    assert str(state) in line, line
    assert ids(host) == before
    assert host.container_of("tiny")["Labels"]["reconciler.configuration-id"] == "tiny-v1"


def test_state_that_is_a_dangling_link_creates_nothing(host, tmp_path):
    host.write(manifests("tiny-v1"))
    os.symlink(tmp_path / "gone", host.root / "state")
    line = one_line(reconcile_process(host))
    assert str(host.root / "state") in line and "missing folder" in line, line
    assert host.containers() == []
    assert not (tmp_path / "gone").exists()


@pytest.fixture
def small_state(host: Host) -> Iterator[Path]:
    """state/ on a tmpfs of its own, 1 MiB (tests run as root); unmounted afterwards."""
    state = host.root / "state"
    state.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(state)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(folder: Path) -> None:
    """Write a file until the file system is full."""
    block = b"\0" * 4096
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass


def test_a_full_disk_replaces_nothing(host, small_state):
    host.write(manifests("tiny-v1"))
    host.reconcile()
    before = ids(host)
    snapshot = (small_state / "snapshot.json").read_bytes()
    fill(small_state)
    host.write(manifests("tiny-v2"))
    line = one_line(reconcile_process(host))
    assert str(small_state) in line and "No space left on device" in line, line
    assert "nothing was changed" in line
    assert ids(host) == before
    assert (small_state / "snapshot.json").read_bytes() == snapshot
    assert sorted(p.name for p in small_state.iterdir()) == [".lock", "filler", "snapshot.json"]


def test_a_write_that_fails_after_the_check_is_one_line(host, small_state, monkeypatch):
    """Space can run out during a pass, after the check: the pass's changes stay, and the
    failure to record them is one line saying what to do, not a traceback."""
    monkeypatch.setattr("reconciler.core.reconcile.check_state_writable", lambda root: None)
    host.write(manifests("tiny-v1"))
    fill(small_state)
    result = host.reconcile(ok=False)  # in-process: any other exception fails the test here
    assert result.code == 1, result.out + result.err
    errors = [line for line in result.lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.err, result.err
    assert f"cannot write {small_state / 'snapshot.json'} (No space left on device)" in errors[0]
    assert "run reconcile again" in errors[0]
    # Once there is space again, the next pass records what the host runs.
    (small_state / "filler").unlink()
    host.reconcile()
    assert host.status()["tiny"]["status"] == "RUNNING"
