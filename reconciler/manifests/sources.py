"""Where manifests come from: YAML files under `manifests/` and `templates/` of a GitOps root.

Files are parsed with libyaml's C parser. Two deliberate departures from plain `yaml.safe_load`:
duplicate mapping keys are errors (the last one silently winning hides typos), and timestamps
stay strings (a retirement date is data to check, not a `datetime` to mistype). Line numbers are
found only when a problem must be reported, by re-composing that one file.

A merged change may bring odd files, and reading them must never hang or crash the tool (a
stalled `watch` stops every later pass). So only regular files are read, at most
`MAX_MANIFEST_BYTES` each; a FIFO, socket or device named `*.yaml` is a problem without being
opened. Symbolic links are followed only while they stay inside the GitOps root (sharing a file
between folders keeps working); one that leads out of it (`/`, `/dev/zero`, another checkout),
nowhere, or back to a folder above it (a loop) is a problem. Each problem is one line naming the
file and what to do.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import Problem, UserError

MANIFEST_FOLDERS = ("manifests", "templates")
# Where the AI API writes the objects tenants create (writeback), and so what render treats as a
# tenant's document.
API_FOLDER = "manifests/api"
YAML_SUFFIXES = (".yaml", ".yml")
# A manifest is a few KiB; a bound keeps a stray data file (or a merged 50 MiB blob) from
# being parsed in full on every pass of a watch loop.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DEPTH = 32  # folder levels below manifests/ or templates/


class _Loader(yaml.CSafeLoader):  # type: ignore[misc, name-defined]
    """Safe C loader that rejects duplicate keys and keeps dates as strings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        # Fewer keys than pairs means a key was repeated (cheap test first; merge keys `<<`
        # legitimately collapse, so only explicit keys are compared).
        if len(mapping) < len(node.value):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return mapping


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)


@dataclass(frozen=True)
class SourceFile:
    """One manifest file's text, named by its path relative to the GitOps root."""

    path: str
    text: str


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file."""

    file: SourceFile
    index: int
    body: Any

    def problem(self, pointer: str, message: str, inner_line: int | None = None) -> Problem:
        """A problem at `pointer`; `inner_line` is a line within a multi-line string value."""
        return Problem(
            self.file.path, locate(self.file, self.index, pointer, inner_line), pointer, message
        )


def check_root(root: Path) -> None:
    if not root.exists():
        raise UserError(f"GitOps root {root} does not exist: pass --root DIR or cd into it")
    if not root.is_dir():
        raise UserError(f"GitOps root {root} is not a directory")
    if not any((root / folder).is_dir() for folder in MANIFEST_FOLDERS):
        raise UserError(
            f"{root} has neither manifests/ nor templates/: is --root the GitOps repository?"
        )


def read_tree(root: Path) -> tuple[list[SourceFile], list[Problem]]:
    """Read every YAML file under the root's manifest folders, in a stable order."""
    check_root(root)
    files: list[SourceFile] = []
    problems: list[Problem] = []
    for entry in _scan(root):
        if entry.problem:
            problems.append(entry.problem)
            continue
        data, problem = _read_regular(entry.rel, entry.path)
        if problem:
            problems.append(problem)
            continue
        text, problem = decode(entry.rel, data)
        if problem:
            problems.append(problem)
        else:
            files.append(SourceFile(entry.rel, text))
    return files, problems


def yaml_paths(root: Path) -> Iterator[Path]:
    """Every manifest file of the root, in a stable order (hidden files and folders skipped).
    Folders outside the root and folder loops are not entered; the paths may still name odd
    files (read_tree reports those)."""
    for entry in _scan(root):
        yield entry.path


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative to the root, as problems name it
    path: Path  # where to read it: inside the root, symbolic links resolved
    problem: Problem | None = None


def _scan(root: Path) -> Iterator[_Entry]:
    """The manifest folders' YAML files, depth first, names sorted (files before subfolders'
    files, as `os.walk` did and `gitsource._walk_order` mirrors)."""
    try:
        real_root = Path(os.path.realpath(root, strict=True))
    except OSError:
        return
    for folder in MANIFEST_FOLDERS:
        base = root / folder
        if not os.path.lexists(base):
            continue
        target, problem = _follow(real_root, base, folder)
        if problem:
            yield _Entry(folder, base, problem)
        elif target is not None and target.is_dir():
            # The root is an ancestor too: a link to it from inside would read it again.
            ancestors = (_dir_id(real_root), _dir_id(target))
            yield from _scan_folder(real_root, target, folder, ancestors)


def _scan_folder(
    real_root: Path, folder: Path, rel: str, ancestors: tuple[tuple[int, int], ...]
) -> Iterator[_Entry]:
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        yield _Entry(rel, folder, Problem(rel, None, "", f"cannot list folder: {exc.strerror}"))
        return
    subfolders: list[tuple[str, Path]] = []
    for e in entries:
        child_rel = f"{rel}/{e.name}"
        is_yaml = e.name.endswith(YAML_SUFFIXES)
        target, problem = _follow(real_root, Path(e.path), child_rel)
        if problem:
            # Only what would be read is a problem: a stray link named README is left alone.
            if is_yaml or _points_at_folder(e):
                yield _Entry(child_rel, Path(e.path), problem)
            continue
        assert target is not None
        if target.is_dir():
            subfolders.append((child_rel, target))
        elif is_yaml:
            yield _Entry(child_rel, target)
    for child_rel, target in subfolders:
        ident = _dir_id(target)
        if ident in ancestors:
            what = "a symbolic link back to a folder above it (a loop): remove it"
            yield _Entry(child_rel, target, Problem(child_rel, None, "", what))
            continue
        if len(ancestors) > MAX_DEPTH:  # bounded recursion, whatever a commit nests
            what = f"folders nested more than {MAX_DEPTH} deep: flatten them"
            yield _Entry(child_rel, target, Problem(child_rel, None, "", what))
            continue
        yield from _scan_folder(real_root, target, child_rel, (*ancestors, ident))


def _follow(real_root: Path, path: Path, rel: str) -> tuple[Path | None, Problem | None]:
    """`path` itself, or for a symbolic link its target if that stays inside the root."""
    if not path.is_symlink():
        return path, None
    try:
        target = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        why = "a loop of links" if exc.errno == errno.ELOOP else "its target does not exist"
        return None, Problem(
            rel,
            None,
            "",
            f"cannot read file: a symbolic link that leads nowhere ({why}); remove or fix it",
        )
    if target != real_root and real_root not in target.parents:
        return None, Problem(
            rel,
            None,
            "",
            f"a symbolic link to {target}, outside the GitOps root: links are followed only "
            "inside the root; put the file itself there",
        )
    return target, None


def _points_at_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _dir_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


_KINDS = {
    stat.S_ISFIFO: "FIFO",
    stat.S_ISSOCK: "socket",
    stat.S_ISCHR: "character device",
    stat.S_ISBLK: "block device",
    stat.S_ISDIR: "folder",
}


def _not_regular(mode: int, rel: str) -> Problem:
    kind = next((name for test, name in _KINDS.items() if test(mode)), "special file")
    return Problem(rel, None, "", f"not a regular file (a {kind}): remove it; manifests are files")


def _too_large(size: int, rel: str) -> Problem:
    return Problem(
        rel,
        None,
        "",
        f"{size} bytes: a manifest may have at most {MAX_MANIFEST_BYTES} (1 MiB); split it "
        "into several files, or move data out of manifests/ and templates/",
    )


def _read_regular(rel: str, path: Path) -> tuple[bytes, Problem | None]:
    """The bytes of a regular file of at most MAX_MANIFEST_BYTES. The kind is checked before
    opening (opening a device can have effects) and again on the open descriptor (the file may
    have been swapped); O_NONBLOCK keeps a FIFO that slipped in from blocking the open."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return b"", _not_regular(st.st_mode, rel)
        if st.st_size > MAX_MANIFEST_BYTES:
            return b"", _too_large(st.st_size, rel)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return b"", Problem(rel, None, "", f"cannot read file: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", _not_regular(st.st_mode, rel)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_MANIFEST_BYTES:  # bounded even if the file grows while read
            chunk = os.read(fd, MAX_MANIFEST_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_MANIFEST_BYTES:
            return b"", _too_large(max(size, os.fstat(fd).st_size), rel)
        return b"".join(chunks), None
    except OSError as exc:
        return b"", Problem(rel, None, "", f"cannot read file: {exc.strerror}")
    finally:
        os.close(fd)


def decode(rel: str, data: bytes) -> tuple[str, Problem | None]:
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        return "", Problem(
            rel, None, "", f"not UTF-8 text (byte {exc.start}): is this really a YAML manifest?"
        )


def parse(file: SourceFile) -> tuple[list[Document], list[Problem]]:
    """Split one file into documents. An empty file is an error: a truncated manifest must
    never read as 'nothing is desired any more' (that would prune deployments)."""
    try:
        bodies = list(yaml.load_all(file.text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        return [], [Problem(file.path, line, "", f"invalid YAML: {what}")]
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, such as NUL
        line = file.text.count("\n", 0, exc.position) + 1
        what = (
            f"{exc.reason} #x{exc.character:04x}" if isinstance(exc.character, int) else exc.reason
        )
        return [], [Problem(file.path, line, "", f"invalid YAML: {what}")]
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        return [], [Problem(file.path, None, "", f"invalid YAML: {detail}")]
    docs = [Document(file, i, body) for i, body in enumerate(bodies) if body is not None]
    if not docs:
        return [], [Problem(file.path, None, "", "file holds no manifest: add one or delete it")]
    return docs, []


@functools.lru_cache(maxsize=64)
def _compose(file: SourceFile) -> list[yaml.Node | None]:
    try:
        return list(yaml.compose_all(file.text, Loader=yaml.CSafeLoader))
    except yaml.YAMLError:
        return []


def load_yaml(text: str) -> Any:
    """One YAML document with the manifest rules (no duplicate keys, dates as text)."""
    return yaml.load(text, Loader=_Loader)


def locate(file: SourceFile, index: int, pointer: str, inner_line: int | None = None) -> int | None:
    """1-based line of the node at `pointer` in document `index`, or of its nearest parent;
    with `inner_line`, the line of that line of a (block) string value."""
    nodes = _compose(file)
    if index >= len(nodes) or nodes[index] is None:
        return None
    node = nodes[index]
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == token), None)
            if child is None:  # the key itself is the problem (an unknown field)
                child = next((k for k, _ in node.value if k.value == token), None)
        elif isinstance(node, yaml.SequenceNode) and token.isdigit():
            i = int(token)
            child = node.value[i] if i < len(node.value) else None
        if child is None:
            break
        node = child
    line = node.start_mark.line + 1
    if inner_line:
        # A block scalar (| or >) starts on the line after its indicator.
        block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
        line += inner_line if block else inner_line - 1
    return line
