"""Odd files a merged change can bring under manifests/ or templates/ (issue 13, finding 6).

Each must fail `validate` and `plan` with one line naming the file and what to do, exit 1, no
traceback, nothing changed, and never hang: the real CLI runs in a child process of its own
(forked, tests/forked_cli.py) whose timeout is a hang guard (generous, not a timed assertion).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, Result
from tests.forked_cli import run_cli

HANG_GUARD = 20.0  # seconds; these commands take well under one when they work

OTHER_DEPLOYMENT = """
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: echo-two
spec:
  configurationId: echo-config
"""

Make = Callable[[Path], None]


@pytest.fixture
def repo(gitops: Callable[..., Path]) -> Path:
    return gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": ECHO_MANIFESTS})


def run(root: Path, command: str) -> Result:
    return run_cli(command, "--root", root, timeout=HANG_GUARD).result


def assert_refused(result: Result, rel: str, *words: str) -> None:
    """Exit 1, no traceback; exactly one line about `rel` (then the summary), saying `words`."""
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err, result.err
    problem, summary = result.lines  # nothing else: one line for the file, one summary
    assert problem.startswith(f"{rel}: "), problem
    for word in words:
        assert word in problem, problem
    assert summary == "error: 1 problem in the manifests; nothing was changed"


def dir_link_to_slash(folder: Path) -> None:
    os.symlink("/", folder / "everything")


def fifo(folder: Path) -> None:
    os.mkfifo(folder / "x.yaml")


def link_to_dev_zero(folder: Path) -> None:
    os.symlink("/dev/zero", folder / "zero.yaml")


def link_loop(folder: Path) -> None:
    os.symlink("loop.yaml", folder / "loop.yaml")


def dir_link_loop(folder: Path) -> None:
    os.symlink("..", folder / "up")


def fifty_mib(folder: Path) -> None:
    with open(folder / "big.yaml", "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: quick to make, 50 MiB to read


CASES: dict[str, tuple[Make, str, tuple[str, ...]]] = {
    # name: (how to make it in a folder, the file it names, words its line must say)
    "dir-link-to-slash": (dir_link_to_slash, "everything", ("outside the GitOps root",)),
    "fifo": (fifo, "x.yaml", ("not a regular file", "FIFO", "remove it")),
    "link-to-dev-zero": (link_to_dev_zero, "zero.yaml", ("/dev/zero", "outside the GitOps root")),
    "link-loop": (link_loop, "loop.yaml", ("loop", "remove")),
    "dir-link-loop": (dir_link_loop, "up", ("loop", "remove it")),
    "50-mib-file": (fifty_mib, "big.yaml", ("1 MiB", "split it")),
}


@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_odd_file_under_manifests_is_one_line_and_no_hang(repo, case, command):
    make, name, words = CASES[case]
    make(repo / "manifests")
    assert_refused(run(repo, command), f"manifests/{name}", *words)
    assert not (repo / "state").exists()  # nothing changed, not even the state folder


@pytest.mark.parametrize("case", ["dir-link-to-slash", "fifo", "link-to-dev-zero", "50-mib-file"])
def test_odd_file_under_templates_is_one_line_and_no_hang(repo, case):
    make, name, words = CASES[case]
    make(repo / "templates")
    assert_refused(run(repo, "validate"), f"templates/{name}", *words)


@pytest.mark.parametrize("folder", ["manifests", "templates"])
def test_a_link_out_of_the_root_is_refused_one_inside_is_followed(repo, tmp_path, folder):
    """The chosen rule: links are followed while they stay inside the root (sharing a file
    between folders keeps working); a link out of it is a problem, even to a valid manifest."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "two.yaml").write_text(OTHER_DEPLOYMENT)
    os.symlink(outside / "two.yaml", repo / folder / "two.yaml")
    # Inside the root: the template file, read through a link from another name.
    (repo / "shared").mkdir()
    (repo / "templates/echo.yaml").rename(repo / "shared/echo.yaml")
    os.symlink("../shared/echo.yaml", repo / "templates/echo.yaml")
    result = run(repo, "validate")
    assert_refused(result, f"{folder}/two.yaml", str(outside / "two.yaml"), "outside")
    # Without the outside link, the inside one is read like the file itself.
    (repo / folder / "two.yaml").unlink()
    result = run(repo, "validate")
    assert result.code == 0 and result.out.startswith("valid: 1 deployments"), result.err


def test_a_manifest_folder_that_is_a_link_out_of_the_root_is_refused(repo):
    (repo / "manifests/echo.yaml").unlink()
    (repo / "manifests").rmdir()
    os.symlink("/", repo / "manifests")
    assert_refused(run(repo, "validate"), "manifests", "outside the GitOps root")
