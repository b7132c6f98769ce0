"""The git revision the manifests come from (recorded on containers and in the state)."""

from __future__ import annotations

from pathlib import Path

from .git import git_output
from .sources import MANIFEST_FOLDERS


def working_tree_revision(root: Path) -> str | None:
    """HEAD's commit, with `+dirty` when the manifest folders have uncommitted changes;
    None when the root is not a git work tree."""
    head = git_output(root, "rev-parse", "HEAD")
    if head is None:
        return None
    dirty = git_output(root, "status", "--porcelain", "--", *MANIFEST_FOLDERS)
    return f"{head}+dirty" if dirty else head
