"""GitOps write-back: the AI API's writes become manifest edits and git commits.

Git stays the source of truth. A write is made in memory first (a new file, or one document of
an existing file edited or removed), the whole repository is validated with it exactly as
`reconciler validate` would, and only then is the file written (atomically) and committed, when
the root is a git work tree, with a message that names the API call and the caller. Edits of
existing files keep the user's comments and formatting (round-trip YAML); only the touched
document changes. Nothing here talks to Docker: the server reconciles after a write.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ManifestError, UserError
from ..files import write_atomic
from ..manifests.desired import DesiredState, desired_state
from ..manifests.git import git
from ..manifests.sources import Document, SourceFile, read_tree


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and block strings survive
    yaml.width = 4096  # never fold long values
    yaml.indent(mapping=2, sequence=4, offset=2)  # the project's own style: "  - key: ..."
    yaml.preserve_quotes = True
    return yaml


def dump_document(body: dict[str, Any]) -> str:
    out = io.StringIO()
    _yaml().dump(body, out)
    return out.getvalue()


@dataclass(frozen=True)
class Written:
    path: str
    commit: str | None  # the new commit, or None when the root is not a git work tree
    desired: DesiredState


class WriteBack:
    """Serialises the API's writes to one GitOps root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def create(self, path: str, body: dict[str, Any], message: str, author: str) -> Written:
        with self._lock:
            if (self.root / path).exists():
                raise UserError(f"{path} exists already")
            return self._write(path, dump_document(body), message, author)

    def edit(
        self,
        doc: Document,
        change: Callable[[Any], None],
        message: str,
        author: str,
    ) -> Written:
        """Apply `change` to the round-trip body of `doc` (in its file) and write the file."""
        with self._lock:
            yaml = _yaml()
            docs = list(yaml.load_all(doc.file.text))
            change(docs[doc.index])
            out = io.StringIO()
            yaml.dump_all(docs, out)
            return self._write(doc.file.path, out.getvalue(), message, author)

    def remove(self, doc: Document, message: str, author: str) -> Written:
        """Remove `doc` from its file (the file itself when it held nothing else)."""
        with self._lock:
            yaml = _yaml()
            docs = list(yaml.load_all(doc.file.text))
            del docs[doc.index]
            docs = [d for d in docs if d is not None]
            if not docs:
                return self._write(doc.file.path, None, message, author)
            out = io.StringIO()
            yaml.dump_all(docs, out)
            return self._write(doc.file.path, out.getvalue(), message, author)

    # -- the one way a file changes ---------------------------------------------------------

    def _write(self, path: str, text: str | None, message: str, author: str) -> Written:
        files, problems = read_tree(self.root)
        if problems:
            raise ManifestError(problems)
        others = [f for f in files if f.path != path]
        candidate = others + ([SourceFile(path, text)] if text is not None else [])
        # Validated as a whole, exactly as `reconciler validate` would see it after the write:
        # a write that would break the repository changes nothing.
        desired = desired_state(self.root, sorted(candidate, key=lambda f: f.path))
        target = self.root / path
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        else:
            write_atomic(target, text)
        commit = self._commit(path, message, author)
        return Written(path, commit, desired)

    def _git(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(exit status, output, complaint) of one git call in the root."""
        done = git(self.root, *args, env=env, timeout=30)
        return done.returncode, done.stdout.decode().strip(), done.stderr.decode().strip()

    def _commit(self, path: str, message: str, author: str) -> str | None:
        code, inside, _ = self._git("rev-parse", "--is-inside-work-tree")
        if code != 0 or inside != "true":
            return None
        # Who the commit is by, unless the environment already says.
        env = {"GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": "ai-api@reconciler.local"}
        if self._git("config", "user.name")[0] != 0:
            env["GIT_COMMITTER_NAME"] = "reconciler serve"
            env["GIT_COMMITTER_EMAIL"] = "ai-api@reconciler.local"
        env = {k: v for k, v in env.items() if k not in os.environ}
        code, _, said = self._git("add", "--all", "--", path)
        if code != 0:
            raise UserError(f"git add {path} failed: {said}")
        # Only this path is committed: whatever else the user staged stays staged.
        code, _, said = self._git("commit", "--quiet", "-m", message, "--", path, env=env)
        if code != 0:
            raise UserError(f"git commit of {path} failed: {said}")
        return self._git("rev-parse", "HEAD")[1] or None
