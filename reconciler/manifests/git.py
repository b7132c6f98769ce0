"""Running git: the one wrapper every git call of the reconciler goes through.

Why one: a watch loop and `reconciler serve` run unattended, so git must never wait for a
credential prompt (GIT_TERMINAL_PROMPT=0), its messages must be parseable (LC_ALL=C), and a
hung git (a dead remote) must end with a clear error after a bounded time, not hang a pass.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..errors import UserError

TIMEOUT = 60.0  # local calls: ls-tree, cat-file, commit
FETCH_TIMEOUT = 120.0  # calls that reach a remote


def git(
    root: Path,
    *args: str,
    stdin: bytes | None = None,
    timeout: float = TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """`git -C root ARGS` with its output captured; raises UserError when git is missing or
    takes longer than `timeout`. `env` adds to (does not replace) the environment."""
    full_env = {**os.environ, **(env or {}), "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            env=full_env,
        )
    except FileNotFoundError:
        raise UserError("git is not installed: install it to read committed manifests") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"git {args[0]} in {root} took more than {timeout:.0f}s") from None


def git_output(root: Path, *args: str, timeout: float = 10.0) -> str | None:
    """git's stripped output, or None when git fails, is missing or is slow: for what is nice
    to know (the revision a pass records), never worth failing a pass for."""
    try:
        result = git(root, *args, timeout=timeout)
    except UserError:
        return None
    return result.stdout.decode(errors="replace").strip() if result.returncode == 0 else None
