"""JSON Schemas (2020-12) of every manifest kind: shipped in the package, compiled once.

The schema files share definitions through `common.schema.json`. `bundle()` inlines those so each
printed schema stands alone (editors such as yaml-language-server load one URL). Validation
errors are rewritten into messages a user can act on: the unknown field by name with a "did you
mean", the missing field, the expected type with a hint to quote YAML numbers.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import marshal
import os
import sys
import types
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema

from ..errors import did_you_mean
from ..files import cache_dir, write_atomic

if TYPE_CHECKING:  # jsonschema is imported only to explain invalid documents (it is slow to load)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

API_VERSION = "reconciler/v1"
AICORE_API_VERSION = "ai.sap.com/v1alpha1"

# (apiVersion, kind) -> schema file stem. The ServingTemplate's apiVersion picks its form.
SCHEMAS: dict[tuple[str, str], str] = {
    (AICORE_API_VERSION, "ServingTemplate"): "servingtemplate-aicore",
    (API_VERSION, "ServingTemplate"): "servingtemplate",
    (API_VERSION, "Configuration"): "configuration",
    (API_VERSION, "Deployment"): "deployment",
    (API_VERSION, "Artifact"): "artifact",
    (API_VERSION, "ResourcePlan"): "resourceplan",
    (API_VERSION, "Settings"): "settings",
    (API_VERSION, "Model"): "model",
}
KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for _, kind in SCHEMAS))
_COMMON_REF = "common.schema.json#/$defs/"


def _read(stem: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(f"schemas/{stem}.schema.json").read_text()
    return json.loads(text)


@functools.cache
def bundle(stem: str) -> dict[str, Any]:
    """The schema `stem` with the shared definitions it uses copied into its own `$defs`."""
    schema = copy.deepcopy(_read(stem))
    common = _read("common")["$defs"]
    needed: dict[str, Any] = {}

    def rewrite(node: Any, in_common: bool = False) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            name = None
            if isinstance(ref, str) and ref.startswith(_COMMON_REF):
                name = ref[len(_COMMON_REF) :]
            elif in_common and isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref[len("#/$defs/") :]  # a shared definition using another one
            if name is not None:
                if name not in needed:
                    needed[name] = None  # reserve first: definitions may refer to each other
                    needed[name] = rewrite(copy.deepcopy(common[name]), in_common=True)
                return {**node, "$ref": f"#/$defs/{name}"}
            return {k: rewrite(v, in_common) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v, in_common) for v in node]
        return node

    schema = rewrite(schema)
    if needed:
        schema["$defs"] = {**schema.get("$defs", {}), **needed}
    return schema


def definition(name: str) -> dict[str, Any]:
    """The shared definition `name` of common.schema.json (a copy), e.g. `definition("name")
    ["pattern"]`: for code that must accept exactly what the manifests accept, such as the AI
    API's request models, without a second copy of the rule."""
    return copy.deepcopy(_read("common")["$defs"][name])


def field(stem: str, *path: str) -> dict[str, Any]:
    """The schema (a copy) of one field of the shipped schema `stem`, by property names from
    the document's top: `field("deployment", "spec", "ttl")`. Arrays are stepped into (their
    items), and shared definitions are resolved, so the answer holds the field's own rules."""
    schema = bundle(stem)

    def resolved(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return {**resolved(schema["$defs"][ref[len("#/$defs/") :]]), **node}
        return node

    node = schema
    for key in path:
        node = resolved(node)
        if node.get("type") == "array":
            node = resolved(node["items"])
        node = node["properties"][key]
    found = resolved(node)
    found.pop("$ref", None)
    return copy.deepcopy(found)


def kind_schema(kind: str) -> dict[str, Any]:
    """The schema printed by `reconciler schema KIND` (both forms for ServingTemplate)."""
    forms = [(key, stem) for key, stem in SCHEMAS.items() if key[1] == kind]
    if len(forms) == 1:
        return bundle(forms[0][1])
    return _choice(forms, f"{kind} (either form, chosen by apiVersion)")


def combined_schema() -> dict[str, Any]:
    """One schema for any manifest document, for an editor's modeline."""
    return _choice(list(SCHEMAS.items()), "Any reconciler manifest")


def _choice(forms: list[tuple[tuple[str, str], str]], title: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    branches = []
    for (api, kind), stem in forms:
        sub = copy.deepcopy(bundle(stem))
        defs.update(sub.pop("$defs", {}))
        sub.pop("$schema", None)
        sub.pop("$id", None)  # keep refs resolving against the combined document
        defs[stem] = sub
        cond = {"apiVersion": {"const": api}, "kind": {"const": kind}}
        branches.append(
            {
                "if": {"properties": cond, "required": list(cond)},
                "then": {"$ref": f"#/$defs/{stem}"},
            }
        )
    apis = sorted({api for api, _ in SCHEMAS})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "required": ["apiVersion", "kind"],
        "properties": {"apiVersion": {"enum": apis}, "kind": {"enum": list(KINDS)}},
        "allOf": branches,
        "$defs": defs,
    }


def _dereference(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every local `$ref` replaced by its target. Our schemas are not
    recursive, and resolving references at validation time dominated the cost of a
    1000-deployment validation."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = walk(defs[ref[len("#/$defs/") :]])
                rest = {k: walk(v) for k, v in node.items() if k != "$ref"}
                return {**target, **rest}
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


@functools.cache
def _validator(stem: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    schema = bundle(stem)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(_dereference(schema))


@functools.cache
def _fast_check(stem: str) -> Callable[[Any], Any]:
    """The schema compiled to Python code: a quick yes/no for the common, valid case. The
    dereferenced schemas use only keywords whose meaning is the same in draft-07."""
    schema = {k: v for k, v in _dereference(bundle(stem)).items() if k != "$schema"}
    from fastjsonschema.ref_resolver import RefResolver

    namespace: dict[str, Any] = {}
    exec(_validator_code(schema), namespace)  # code made from our own schema
    # The entry point is named after the schema's $id, as fastjsonschema.compile finds it.
    return namespace[RefResolver.from_schema(schema, store={}).get_scope_name()]


# Bump when what the cache holds changes meaning.
_CODE_FORMAT = "1"


def _validator_code(schema: dict[str, Any]) -> types.CodeType:
    """The validator's compiled code. Making it (generating Python, then compiling it) costs
    most of a no-op `plan`, 100-400 ms for the kinds of a repository, so it is kept in the user's
    cache folder, keyed by the schema, Python's and fastjsonschema's versions: what a cached
    entry holds is exactly what would be made again. Only an entry in a folder and file that
    only this user can write is trusted (it is code); anything amiss is made anew."""
    text = json.dumps(schema, sort_keys=True)
    stamp = f"{_CODE_FORMAT}\0{sys.version}\0{fastjsonschema.VERSION}\0{text}"
    path = cache_dir() / "schemas" / f"{hashlib.sha256(stamp.encode()).hexdigest()[:32]}.code"
    code = _cached_code(path)
    if code is None:
        source = fastjsonschema.compile_to_code(schema)
        code = compile(source, f"<schema validator {path.stem}>", "exec")
        with contextlib.suppress(OSError):  # a read-only home: made again next time
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _private(path.parent):
                write_atomic(path, marshal.dumps(code), mode=0o600)
    return code


def _cached_code(path: Path) -> types.CodeType | None:
    try:
        if not (_private(path.parent) and _private(path)):
            return None
        code = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return code if isinstance(code, types.CodeType) else None


def _private(path: Path) -> bool:
    """Owned by this user, and nobody else may write it."""
    st = path.stat()
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def check(body: Any) -> list[tuple[str, str]]:
    """Problems of one manifest document as (JSON pointer, message); empty when valid."""
    if not isinstance(body, dict):
        return [("", f"a manifest must be a mapping with apiVersion and kind, not {_type(body)}")]
    kind, api = body.get("kind"), body.get("apiVersion")
    if kind not in KINDS:
        hint = did_you_mean(kind, KINDS) if isinstance(kind, str) else ""
        return [("/kind", f"unknown kind {kind!r}{hint}; known kinds: {', '.join(KINDS)}")]
    stem = SCHEMAS.get((api, kind))
    if stem is None:
        allowed = [a for (a, k) in SCHEMAS if k == kind]
        return [("/apiVersion", f"{kind} needs apiVersion {' or '.join(allowed)}, not {api!r}")]
    return problems_for(stem, body)


def problems_for(stem: str, body: Any) -> list[tuple[str, str]]:
    """Problems of `body` against the shipped schema `stem` (also used for internal shapes)."""
    try:
        _fast_check(stem)(body)
        return []
    except fastjsonschema.JsonSchemaValueException as fast_error:
        # Invalid: let jsonschema explain every problem with its path.
        found = [p for error in _validator(stem).iter_errors(body) for p in _describe(error)]
        return found or [("/" + "/".join(fast_error.path[1:]), fast_error.message)]


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _describe(error: ValidationError) -> Iterator[tuple[str, str]]:
    where = _pointer(error.absolute_path)
    schema, value, kind = error.schema, error.instance, error.validator
    if isinstance(schema, bool):  # `false` schema: a forbidden value
        yield where, "this field is not allowed here"
    elif kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        for key in value:
            if key not in known:
                hint = did_you_mean(key, known)
                allowed = f" (allowed: {', '.join(known)})" if known and not hint else ""
                yield f"{where}/{key}", f"unknown field {key!r}{hint}{allowed}"
    elif kind == "required":
        present = set(value) if isinstance(value, dict) else set()
        for key in error.validator_value:
            if key not in present:
                yield where, f"missing required field {key!r}"
    elif kind == "type":
        expected = error.validator_value
        names = expected if isinstance(expected, list) else [expected]
        msg = f"must be {' or '.join(_article(n) for n in names)}, not {_type(value)} {value!r}"
        if "string" in names and isinstance(value, int | float | bool):
            msg += " (quote the value in YAML to keep it as text)"
        yield where, msg
    elif kind in ("enum", "const"):
        choices = error.validator_value if kind == "enum" else [error.validator_value]
        yield where, f"must be one of {', '.join(map(str, choices))}, not {value!r}"
    elif kind == "pattern" and "description" in schema:
        yield where, f"{value!r} is not valid: {schema['description']}"
    elif kind in ("oneOf", "anyOf"):
        if "description" in schema:
            yield where, f"not valid: {schema['description']}"
        else:
            from jsonschema.exceptions import best_match

            best = best_match(error.context or [])
            yield from _describe(best) if best is not None else [(where, error.message)]
    else:
        yield where, error.message


def _type(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "empty",
    }.get(type(value), type(value).__name__)


def _article(json_type: str) -> str:
    return {"object": "a mapping", "array": "a list", "integer": "an integer"}.get(
        json_type, f"a {json_type}"
    )
