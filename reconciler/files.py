"""Files the reconciler writes outside its state: atomic writes, version stamps, and the
per-instance configuration folder (credentials and the label key live there, outside the
GitOps root, which is committed)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def config_dir(instance: str) -> Path:
    """`$XDG_CONFIG_HOME/reconciler/<instance>` (default `~/.config/...`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "reconciler" / instance


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/reconciler` (default `~/.cache/reconciler`): what can be made again."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reconciler"


FileVersion = tuple[int, int, int]


def file_version(path: Path) -> FileVersion | None:
    """What tells one version of a file from the next (None when there is no file): its inode,
    since `write_atomic` renames a new file into place, with its modification time and size.
    Time and size alone are not enough: file times come from a clock that moves every few
    milliseconds, and two snapshots of the same size written within one tick (a deployment's
    PENDING, then RUNNING) would look like one."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write_atomic(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
