"""Reading manifests from a git commit (no Docker): the same files, names and order as the
working tree reader, for a GitOps root at the top of a repository or in a folder of one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.errors import ManifestError, UserError
from reconciler.manifests.gitsource import read_commit
from reconciler.manifests.sources import read_tree
from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, git, write_tree


def repo_with_root_in(tmp_path: Path, sub: str) -> tuple[Path, Path]:
    top = tmp_path / "top"
    root = write_tree(
        top / sub if sub else top,
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS,
            "manifests/b/z.yml": "kind: x\n",
            "manifests/a/y.yaml": "kind: y\n",
            "manifests/a.yaml": "kind: a\n",
            "manifests/.hidden.yaml": "kind: hidden\n",
            "manifests/README.md": "not a manifest\n",
        },
    )
    (top / "other").mkdir(parents=True, exist_ok=True)
    (top / "other/manifests.yaml").write_text("kind: elsewhere\n")
    git(top, "init", "-q")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "one")
    return top, root


@pytest.mark.parametrize("sub", ["", "deploy/prod"])
def test_a_commit_reads_like_the_working_tree(tmp_path, sub):
    top, root = repo_with_root_in(tmp_path, sub)
    commit, files = read_commit(root, "HEAD")
    assert commit == git(top, "rev-parse", "HEAD")
    tree, problems = read_tree(root)
    assert problems == [] and files == tree
    assert [f.path for f in files] == [
        "manifests/a.yaml",
        "manifests/echo.yaml",
        "manifests/a/y.yaml",
        "manifests/b/z.yml",
        "templates/echo.yaml",
    ]
    # Uncommitted edits are not read.
    (root / "manifests/a.yaml").write_text("kind: edited\n")
    assert read_commit(root, commit)[1] == files


def test_files_that_cannot_be_manifests_are_problems(tmp_path):
    top, root = repo_with_root_in(tmp_path, "")
    (root / "manifests/latin1.yaml").write_bytes(b"name: caf\xe9\n")
    os.symlink("echo.yaml", root / "manifests/link.yaml")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "two")
    with pytest.raises(ManifestError) as caught:
        read_commit(root, "HEAD")
    assert caught.value.lines() == [
        "manifests/latin1.yaml: /: not UTF-8 text (byte 9): is this really a YAML manifest?",
        "manifests/link.yaml: /: a symbolic link: commit the manifest itself, not a link",
    ]


def test_unknown_revisions_and_folders_are_user_errors(tmp_path):
    top, root = repo_with_root_in(tmp_path, "deploy")
    with pytest.raises(UserError, match="revision 'v9' is not a commit of the repository"):
        read_commit(root, "v9")
    empty = top / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("x\n")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "two")
    with pytest.raises(UserError, match="has no manifests/ or templates/ folder under empty/"):
        read_commit(empty, "HEAD")
    with pytest.raises(UserError, match="is not in a git work tree"):
        read_commit(tmp_path, "HEAD")
