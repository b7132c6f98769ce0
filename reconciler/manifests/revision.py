"""The git revision the manifests come from (recorded on containers and in the state)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .sources import MANIFEST_FOLDERS


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def working_tree_revision(root: Path) -> str | None:
    """HEAD's commit, with `+dirty` when the manifest folders have uncommitted changes;
    None when the root is not a git work tree."""
    head = _git(root, "rev-parse", "HEAD")
    if head is None:
        return None
    dirty = _git(root, "status", "--porcelain", "--", *MANIFEST_FOLDERS)
    return f"{head}+dirty" if dirty else head
