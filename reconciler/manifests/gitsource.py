"""Manifests as committed in git: read a revision's files without touching the working tree.

`reconcile --revision REV`, `plan --revision REV` and `watch --git` apply what a commit holds,
not whatever the working tree happens to contain (an uncommitted edit, a half-finished merge).
Two git calls per read, whatever the number of files: `git ls-tree` lists the manifest files
of the commit, one `git cat-file --batch` reads them all.

The GitOps root may be a folder inside a larger repository: paths are taken relative to it, as
the working tree reader does, so problems name the same `manifests/app.yaml` either way.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..errors import ManifestError, Problem, UserError
from .git import FETCH_TIMEOUT, git
from .sources import MANIFEST_FOLDERS, YAML_SUFFIXES, SourceFile, decode

_SYMLINK, _SUBMODULE = "120000", "160000"


def _said(result: subprocess.CompletedProcess[bytes]) -> str:
    """git's own last line of complaint."""
    lines = [x for x in result.stderr.decode(errors="replace").splitlines() if x.strip()]
    return lines[-1].strip() if lines else f"exit status {result.returncode}"


def require_repository(root: Path) -> None:
    result = git(root, "rev-parse", "--is-inside-work-tree")
    if result.returncode != 0 or result.stdout.strip() != b"true":
        raise UserError(
            f"{root} is not in a git work tree: committed manifests need a git repository "
            "(git init, or drop --git/--revision)"
        )


def resolve(root: Path, revision: str) -> str:
    """The full commit id `revision` names (a commit, tag, branch, `HEAD~1` ...)."""
    result = git(
        root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"
    )
    if result.returncode != 0:
        require_repository(root)
        raise UserError(
            f"revision {revision!r} is not a commit of the repository at {root} "
            "(git log --oneline lists them)"
        )
    return result.stdout.decode().strip()


def current_branch(root: Path) -> str:
    result = git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    if result.returncode != 0:
        require_repository(root)
        raise UserError(f"HEAD of {root} is detached (on no branch): pass --branch NAME")
    return result.stdout.decode().strip()


def git_dir(root: Path) -> Path:
    """The repository's git folder (the common one, where refs live, also for worktrees)."""
    result = git(root, "rev-parse", "--git-common-dir")
    if result.returncode != 0:
        require_repository(root)
        raise UserError(f"cannot find the git folder of {root}: {_said(result)}")
    path = Path(result.stdout.decode().strip())
    return (path if path.is_absolute() else root / path).resolve()


def require_remote(root: Path, remote: str) -> None:
    if git(root, "remote", "get-url", remote).returncode != 0:
        raise UserError(f"{root} has no git remote {remote!r} (git remote -v lists them)")


def fetch(root: Path, remote: str, branch: str) -> None:
    """Update `refs/remotes/REMOTE/BRANCH` from the remote (explicit refspec: it works whatever
    the remote's configured fetch refspec is)."""
    refspec = f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}"
    result = git(root, "fetch", "--quiet", "--no-tags", remote, refspec, timeout=FETCH_TIMEOUT)
    if result.returncode != 0:
        raise UserError(f"git fetch {remote} {branch} failed: {_said(result)}")


def _prefix(root: Path) -> str:
    """The root's path inside the repository ('' at the top, else 'deploy/')."""
    result = git(root, "rev-parse", "--show-prefix")
    if result.returncode != 0:
        require_repository(root)
        raise UserError(f"cannot read the git repository at {root}: {_said(result)}")
    return result.stdout.decode().strip()


def read_commit(root: Path, revision: str) -> tuple[str, list[SourceFile]]:
    """The commit `revision` names and its manifest files, in the working tree reader's order.
    Raises ManifestError for files that cannot be manifests (not UTF-8, symbolic links)."""
    commit = resolve(root, revision)
    prefix = _prefix(root)
    listed = git(
        root,
        "ls-tree",
        "-r",
        "-z",
        "--full-name",
        commit,
        "--",
        *(f"{f}/" for f in MANIFEST_FOLDERS),
    )
    if listed.returncode != 0:
        raise UserError(f"cannot list the files of {commit[:12]}: {_said(listed)}")
    entries: list[tuple[str, str]] = []  # (relative path, blob id)
    problems: list[Problem] = []
    folders_seen = False
    for item in listed.stdout.split(b"\0"):
        if not item:
            continue
        meta, _, raw_path = item.partition(b"\t")
        mode, kind, obj = meta.decode().split()
        rel = raw_path.decode(errors="replace").removeprefix(prefix)
        parts = rel.split("/")
        folders_seen = True
        if kind != "blob" or mode == _SUBMODULE:
            continue
        if not rel.endswith(YAML_SUFFIXES) or any(p.startswith(".") for p in parts[1:]):
            continue
        if mode == _SYMLINK:
            problems.append(
                Problem(rel, None, "", "a symbolic link: commit the manifest itself, not a link")
            )
            continue
        entries.append((rel, obj))
    if not folders_seen:
        raise UserError(
            f"commit {commit[:12]} has no manifests/ or templates/ folder"
            + (f" under {prefix}" if prefix else "")
            + ": is it the right branch or revision?"
        )
    entries.sort(key=lambda e: _walk_order(e[0]))
    files: list[SourceFile] = []
    for (rel, _), data in zip(entries, _blobs(root, [obj for _, obj in entries]), strict=True):
        text, problem = decode(rel, data)
        if problem:
            problems.append(problem)
        else:
            files.append(SourceFile(rel, text))
    if problems:
        raise ManifestError(problems)
    return commit, files


def _walk_order(rel: str) -> tuple[int, tuple[str, ...], str]:
    """The order `sources.read_tree` walks in: folder, then a folder's files before its
    subfolders', names sorted (it matters: the first of two duplicates is the one kept)."""
    parts = rel.split("/")
    return MANIFEST_FOLDERS.index(parts[0]), tuple(parts[1:-1]), parts[-1]


def _blobs(root: Path, objects: list[str]) -> list[bytes]:
    if not objects:
        return []
    result = git(root, "cat-file", "--batch", stdin="".join(f"{o}\n" for o in objects).encode())
    if result.returncode != 0:
        raise UserError(f"cannot read committed files in {root}: {_said(result)}")
    out, data, at = [], result.stdout, 0
    for _ in objects:
        header_end = data.index(b"\n", at)
        size = int(data[at:header_end].split()[2])
        start = header_end + 1
        out.append(data[start : start + size])
        at = start + size + 1  # the content is followed by a newline
    return out
