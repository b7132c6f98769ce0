"""Where manifests come from: YAML files under `manifests/` and `templates/` of a GitOps root.

Files are parsed with libyaml's C parser. Two deliberate departures from plain `yaml.safe_load`:
duplicate mapping keys are errors (the last one silently winning hides typos), and timestamps
stay strings (a retirement date is data to check, not a `datetime` to mistype). Line numbers are
found only when a problem must be reported, by re-composing that one file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, UserError

MANIFEST_FOLDERS = ("manifests", "templates")
YAML_SUFFIXES = (".yaml", ".yml")


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
    for path in yaml_paths(root):
        rel = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(rel, None, "", f"cannot read file: {exc.strerror}"))
            continue
        text, problem = decode(rel, data)
        if problem:
            problems.append(problem)
        else:
            files.append(SourceFile(rel, text))
    return files, problems


def yaml_paths(root: Path) -> Iterator[Path]:
    """Every manifest file of the root, in a stable order (hidden files and folders skipped)."""
    for folder in MANIFEST_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith(YAML_SUFFIXES) and not name.startswith("."):
                    yield Path(dirpath) / name


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
