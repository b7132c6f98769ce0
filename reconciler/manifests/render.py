"""Render: a Configuration and its ServingTemplate → a resolved `ContainerSpec`.

Templates are Jinja2 rendered in an immutable sandbox with `StrictUndefined`: a template can read
`inputs.parameters.NAME` and `inputs.artifacts.NAME` and nothing else; attribute access to
internals (`''.__class__`) fails with a clear error. Parameter resolution is AI Core's: the
configuration's binding wins, else the template's default (so a deployment that does not bind a
parameter follows later changes of the default). An artifact placeholder renders to the
artifact's URL.

Values never change the structure of the spec. Binding values and artifact URLs come from API
tenants, who are not trusted: a value is only ever the text of the one scalar its placeholder
stands in. The container form renders each string scalar of the parsed template on its own. AI
Core's form keeps YAML text (`spec: |`): there every placeholder's output is replaced by a
random marker while rendering, the text is parsed, and each marker is replaced by its value inside
the parsed scalar (so no quote, newline, `---` or `{{ }}` in a value is ever read as YAML or as a
template).

Rendering has hard bounds (no memory-limited subprocess: the limits are checked where values
grow): no string a template builds or writes may exceed 1 MiB, all the text one rendering builds
is counted (32 MiB), loop iterations, calls and filters are counted (100 000), and the thread's
CPU time is capped (3 s) for the work the counts cannot see (comparisons of big strings).

Templates are checked once (syntax, every placeholder declared) and compiled once; a rendering
is computed per configuration, since every deployment of a configuration runs the same spec.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import os
import re
import secrets
import time
import types
from collections import abc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    meta,
    nodes,
    pass_context,
)
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from ..errors import Problem, RenderError, did_you_mean
from . import catalog
from .kinds import Artifact, Configuration, Repository, RGKey, ServingTemplate
from .kserve import STORAGE_URI, to_draft
from .resource_plans import DEFAULT_PLAN
from .scaling import PREFIX, PolicyError
from .sources import API_FOLDER, Document
from .sources import (
    _Loader as _ManifestLoader,
)  # the manifest rules: no duplicate keys, dates as text
from .spec import (
    MODEL_MOUNT,
    PROBE_LIMITS,
    PROBE_PATH,
    ContainerSpec,
    Draft,
    EnvVar,
    Mount,
    Probe,
    is_secret_name,
)
from .store_urls import is_store_url, store_url_problem

_GROUPS = ("parameters", "artifacts")
# Argo-style names may contain '-', which Jinja would read as a minus: `{{inputs.parameters.
# model-name}}` is rewritten to `{{ inputs.parameters["model-name"] }}` before compiling.
_HYPHENATED = re.compile(
    r"\{\{\s*inputs\s*\.\s*(parameters|artifacts)\s*\.\s*([A-Za-z0-9_]*-[A-Za-z0-9_-]*)\s*\}\}"
)
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")

# -- bounds on rendering ----------------------------------------------------------------------

MAX_TEXT = 1 << 20  # characters: the largest string (or list) a template may build or write
_MAX_ESTIMATE = 4 * MAX_TEXT  # an operation whose result could be larger is refused up front
_MAX_DATA = 32 << 20  # characters one rendering may build in all
_MAX_STEPS = 100_000  # loop iterations, calls, operators and filters of one rendering
_CPU_SECONDS = 3.0  # the catch-all for work the counts cannot see
_MAX_ITEMS = 100_000  # |batch and |slice sizes
_MAX_INT_BITS = 100_000
_MAX_EXPONENT = 64
_MAX_JSON_INDENT = 16


def _too_big(what: str) -> SecurityError:
    return SecurityError(f"{what} would build a value over 1 MiB")


class _Budget:
    """What one rendering of one string may still spend; for AI Core's YAML text, also the
    values its placeholders wrote (see `_fill`)."""

    def __init__(self, capture: bool = False) -> None:
        self.steps = _MAX_STEPS
        self.data = _MAX_DATA
        self.deadline = time.thread_time() + _CPU_SECONDS
        self.values: list[str] | None = [] if capture else None
        # Unguessable, so that no value can forge one; letters and digits only, so that it is
        # plain text wherever YAML puts it.
        self.marker = f"rcnlr{secrets.token_hex(8)}"

    def spend(self, data: int, steps: int) -> None:
        self.steps -= steps
        self.data -= data
        if self.steps < 0:
            raise SecurityError(
                f"the template does too much work (over {_MAX_STEPS} loop iterations, calls "
                "and filters)"
            )
        if self.data < 0:
            raise SecurityError("the template builds too much text (over 32 MiB in all)")
        if time.thread_time() > self.deadline:
            raise SecurityError(f"the template takes too long (over {_CPU_SECONDS:g}s of CPU)")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("budget", default=None)


def _charge(data: int = 0, steps: int = 1) -> None:
    # Outside a rendering (Jinja folding constants while compiling) only the size checks apply;
    # compiling happens inside a rendering's budget too (`_render_text`).
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend(data, steps)


def _weight(value: Any, limit: int = MAX_TEXT) -> int:
    """About how many characters `str(value)` would take (counting every reference to a shared
    value again, as `str` would); stops counting once over `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v) + 1
        elif isinstance(v, bytes | bytearray):
            total += 4 * len(v) + 3
        elif isinstance(v, bool) or v is None:
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 2
        elif isinstance(v, abc.Mapping):
            total += 2 * len(v) + 2
            if total <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, abc.Collection):
            total += len(v) + 2
            if total <= limit:
                stack.extend(v)
        else:
            total += 1
    return total


def _sized(value: Any, what: str) -> int:
    weight = _weight(value)
    if weight > MAX_TEXT:
        raise _too_big(what)
    return weight


def _text(value: Any, what: str) -> str:
    """`str(value)`, refused before it is built when it would be too big."""
    if not isinstance(value, str):
        _sized(value, what)
        value = str(value)
    if len(value) > MAX_TEXT:
        raise _too_big(what)
    return value


def _produced(result: Any, what: str) -> Any:
    """Count what an operation built; refuse a result too big to keep."""
    if isinstance(result, str | bytes | bytearray | list | tuple | dict | set | frozenset):
        if len(result) > MAX_TEXT:
            raise _too_big(what)
        _charge(len(result), steps=0)
    return result


def _width(value: Any, what: str, limit: int = MAX_TEXT) -> None:
    """`what` names the operation and its argument, e.g. "str.ljust with a width of"."""
    if isinstance(value, int) and value > limit:
        raise _too_big(f"{what} {value}")


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def _check_percent(fmt: str, args: Any) -> None:
    """`fmt % args` (the % operator, |format): widths and precisions count, `*` takes them
    from the arguments."""
    widths = conversions = 0
    star = False
    for match in _PERCENT.finditer(fmt):
        if match[3] == "%":
            continue
        conversions += 1
        for number in (match[1], match[2]):
            if number == "*":
                star = True
            elif number:
                if len(number) > 7:
                    raise _too_big("formatting with %")
                widths += int(number)
    values = args.values() if isinstance(args, abc.Mapping) else args
    if star and isinstance(values, Iterable) and not isinstance(values, str):
        for v in values:
            _width(v, "formatting with % with a width of")
    if len(fmt) + widths + conversions * _sized(args, "formatting with %") > _MAX_ESTIMATE:
        raise _too_big("formatting with %")


def _check_format_spec(spec: str) -> None:
    for number in re.findall(r"\d+", spec):
        if len(number) > 7 or int(number) > MAX_TEXT:
            raise _too_big("str.format with a width or precision of " + number[:12])


class _BoundedFormatting:
    """str.format / format_map: every field's width and size counted, and the whole result."""

    built = 0  # characters of the current call's result so far

    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        _sized(value, "str.format")
        text = super().format_field(value, format_spec)  # type: ignore[misc]
        self.built += len(text)
        if self.built > MAX_TEXT:
            raise _too_big("str.format")
        _charge(len(text), steps=0)
        return text


class _BoundedFormatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


def _check_text_method(
    owner: str | bytes | bytearray, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Methods of str and bytes whose result can be far bigger than the string: refused before
    they run when it would be. `join` gets its items as a list (a generator is read once)."""
    size = len(owner)
    if name in ("center", "ljust", "rjust", "zfill"):
        _width(args[0] if args else kwargs.get("width"), f"str.{name} with a width of")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count(b"\t" if isinstance(owner, bytes | bytearray) else "\t")  # type: ignore[arg-type]
        if isinstance(tab, int) and size + max(tab, 0) * tabs > _MAX_ESTIMATE:
            raise _too_big("str.expandtabs")
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        _check_replace(owner, args[0], args[1], count, "str.replace")
    elif name == "join" and args:
        items = list(args[0])
        built = size * max(len(items) - 1, 0)
        for item in items:
            built += len(item) if isinstance(item, str | bytes | bytearray) else 0
            if built > _MAX_ESTIMATE:
                raise _too_big("str.join")
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], abc.Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str | bytes)), default=1)
        if size * max(longest, 1) > _MAX_ESTIMATE:
            raise _too_big("str.translate")
    return args


def _check_replace(text: Any, old: Any, new: Any, count: Any, what: str) -> None:
    try:
        found = len(text) + 1 if len(old) == 0 else text.count(old)
        growth = len(new) - len(old)
    except TypeError:
        return  # the call itself will say what is wrong
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    if growth > 0 and len(text) + found * growth > _MAX_ESTIMATE:
        raise _too_big(what)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox that also refuses to build huge values and counts the work."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _charge()
        if operator == "**" and isinstance(right, int):
            if abs(right) > _MAX_EXPONENT:
                raise SecurityError("exponent too large in template")
            if isinstance(left, int) and abs(left).bit_length() * right > _MAX_INT_BITS:
                raise SecurityError("number too large in template")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and isinstance(seq, str | bytes | list | tuple):
                    size = len(seq) if isinstance(seq, str | bytes) else _weight(seq)
                    if size * max(n, 0) > MAX_TEXT:
                        raise SecurityError("repeating a value that often would exhaust memory")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > _MAX_INT_BITS
            ):
                raise SecurityError("number too large in template")
        elif operator == "+" and isinstance(left, str | bytes | list | tuple):
            if isinstance(right, str | bytes | list | tuple) and len(left) + len(right) > MAX_TEXT:
                raise _too_big("the + operator")
        elif operator == "%" and isinstance(left, str):
            _check_percent(left, right)
        return _produced(super().call_binop(context, operator, left, right), operator)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            _charge(_sized(arg, "an argument"), steps=0)
        _charge()
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(obj, types.BuiltinMethodType):
            if isinstance(owner, str | bytes | bytearray):
                args = _check_text_method(owner, name, args, kwargs)
            elif isinstance(owner, int) and name == "to_bytes":
                _width(args[0] if args else kwargs.get("length"), "int.to_bytes with a length of")
        elif obj is generate_lorem_ipsum:  # the global `lipsum(n, html, min, max)`
            paragraphs = args[0] if args else kwargs.get("n", 5)
            words = args[3] if len(args) > 3 else kwargs.get("max", 100)
            if isinstance(paragraphs, int) and isinstance(words, int):
                _width(paragraphs * words, "lipsum() with a word count of", _MAX_ITEMS)
        return _produced(super().call(context, obj, *args, **kwargs), f"{name or 'a'}()")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, as Jinja's sandbox does them, with bounded fields."""
        if super().wrap_str_format(value) is None:
            return None
        f_self = value.__self__
        is_format_map = value.__name__ == "format_map"
        formatter: _BoundedFormatter | _BoundedEscapeFormatter
        if isinstance(f_self, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _BoundedFormatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            formatter.built = 0
            return type(f_self)(formatter.vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)


# -- filters: each counted, and checked where its arguments make the result grow ---------------


def _filter_join(value: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    items = list(value)
    sep = args[0] if args else kwargs.get("d", "")
    built = len(str(sep)) * max(len(items) - 1, 0)
    for item in items:
        built += _weight(item)
        if built > _MAX_ESTIMATE:
            raise _too_big("|join")
    return (items, *args)


def _filter_indent(s: Any, *args: Any, **kwargs: Any) -> None:
    width = args[0] if args else kwargs.get("width", 4)
    per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text = _text(s, "|indent")
    if len(text) + max(per_line, 0) * (text.count("\n") + 1) > _MAX_ESTIMATE:
        raise _too_big("|indent")


def _filter_wordwrap(s: Any, *args: Any, **kwargs: Any) -> None:
    wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring")
    text = _text(s, "|wordwrap")
    if len(text) + len(str(wrap or "\n")) * (len(text) + 1) > _MAX_ESTIMATE:
        raise _too_big("|wordwrap")


def _filter_replace(s: Any, *args: Any, **kwargs: Any) -> None:
    if len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        _check_replace(_text(s, "|replace"), str(args[0]), str(args[1]), count, "|replace")


def _filter_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_percent(_text(value, "|format"), kwargs or args)


def _filter_tojson(value: Any, *args: Any, **kwargs: Any) -> None:
    indent = args[0] if args else kwargs.get("indent")
    size = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if size > _MAX_JSON_INDENT:
        raise _too_big(f"|tojson with an indent of {size}")


def _filter_sum(value: Any, *args: Any, **kwargs: Any) -> None:
    start = args[1] if len(args) > 1 else kwargs.get("start", 0)
    if not isinstance(start, int | float):  # adding lists up copies them again and again
        raise SecurityError("|sum adds numbers only")


def _filter_count(what: str, position: int, keyword: str) -> Callable[..., None]:
    def check(value: Any, *args: Any, **kwargs: Any) -> None:
        _width(args[position] if len(args) > position else kwargs.get(keyword), what, _MAX_ITEMS)

    return check


_FILTER_CHECKS: dict[str, Callable[..., tuple[Any, ...] | None]] = {
    "center": lambda value, *a, **k: _width(
        a[0] if a else k.get("width"), "|center with a width of"
    ),
    "indent": _filter_indent,
    "wordwrap": _filter_wordwrap,
    "replace": _filter_replace,
    "join": _filter_join,
    "format": _filter_format,
    "tojson": _filter_tojson,
    "sum": _filter_sum,
    "batch": _filter_count("|batch with a size of", 0, "linecount"),
    "slice": _filter_count("|slice into", 0, "slices"),
}


def _guarded(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    # A filter marked pass_context (or eval_context, environment) gets that argument first.
    leading = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    check = _FILTER_CHECKS.get(name)
    what = f"|{name}"

    @functools.wraps(func)  # keeps the pass_* mark
    def guarded(*args: Any, **kwargs: Any) -> Any:
        head, rest = args[:leading], args[leading:]
        if rest:
            _charge(_sized(rest[0], what))
        else:
            _charge()
        if check is not None and rest:
            prepared = check(*rest, **kwargs)
            if prepared is not None:
                rest = prepared
        return _produced(func(*head, *rest, **kwargs), what)

    return guarded


# The three filters the compiled templates use (see `_Harden`); pass_context keeps Jinja from
# running them while compiling, so their work is always counted.


@pass_context
def _counted_iteration(context: Context, iterable: Any) -> Any:
    budget = _BUDGET.get()
    if budget is None:
        return iterable
    return _counted(iterable, budget)


def _counted(iterable: Iterable[Any], budget: _Budget) -> Iterator[Any]:
    for item in iterable:
        budget.spend(0, 1)
        yield item


@pass_context
def _bounded_concat(context: Context, items: list[Any]) -> str:
    parts = [_text(item, "the ~ operator") for item in items]
    built = sum(map(len, parts))
    if built > MAX_TEXT:
        raise _too_big("the ~ operator")
    _charge(built)
    return "".join(parts)


@pass_context
def _placeholder(context: Context, value: Any) -> Any:
    """What `{{ ... }}` writes at the top of AI Core's YAML text: a marker, its value kept."""
    budget = _BUDGET.get()
    if budget is None or budget.values is None:
        return value
    text = _text(value, "a placeholder")
    budget.spend(len(text), 1)
    budget.values.append(text)
    return f"{budget.marker}x{len(budget.values) - 1}x"


@pass_context
def _finalize(context: Context, value: Any) -> str:
    # Everything a template writes passes here, literal text too (see `_Harden`), also into
    # the buffers of macros and {% set %} blocks: all of it is counted.
    text = _text(value, "writing a value")
    _charge(len(text))
    return text


_ENV = _Sandbox(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
)
_ENV.filters.update({name: _guarded(name, f) for name, f in _ENV.filters.items()})
_ENV.filters.update(
    {
        "_rcnlr_iter": _counted_iteration,
        "_rcnlr_concat": _bounded_concat,
        "_rcnlr_value": _placeholder,
    }
)


class _Harden(NodeTransformer):
    """Rewrites a parsed template so that everything that can grow is counted:

    - `a ~ b` → a bounded concatenation (Jinja's own is a plain join);
    - a `{% for %}` iterates through a counter;
    - literal text becomes a constant written through `finalize` (counted like values);
    - `{{ ... }}` at the top level (not inside a macro or a `{% set %}` block) goes through
      `_placeholder`, which in YAML text writes a marker instead of the value;
    - `{% filter f %}...{% endfilter %}` becomes `{% set x | f %}...{% endset %}{{ x }}`,
      since Jinja writes a filter block's result without `finalize`.
    """

    def __init__(self) -> None:
        self.buffered = 0
        self.names = itertools.count()

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, "_rcnlr_concat", [], [], None, None, lineno=node.lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_rcnlr_iter", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        node = self.generic_visit(node)
        children: list[nodes.Expr] = []
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                children.append(nodes.Const(child.data, lineno=child.lineno))
            elif self.buffered:
                children.append(child)
            else:
                children.append(
                    nodes.Filter(child, "_rcnlr_value", [], [], None, None, lineno=child.lineno)
                )
        node.nodes = children
        return node

    def _buffered(self, node: nodes.Node) -> nodes.Node:
        self.buffered += 1
        try:
            return self.generic_visit(node)
        finally:
            self.buffered -= 1

    visit_Macro = _buffered
    visit_AssignBlock = _buffered

    def visit_FilterBlock(self, node: nodes.FilterBlock) -> list[nodes.Node]:
        node = self._buffered(node)
        name = f"_rcnlr_block{next(self.names)}"
        assign = nodes.AssignBlock(
            nodes.Name(name, "store", lineno=node.lineno),
            node.filter,
            node.body,
            lineno=node.lineno,
        )
        output = nodes.Output([nodes.Name(name, "load", lineno=node.lineno)], lineno=node.lineno)
        return [assign, self.visit_Output(output)]

    def visit_CallBlock(self, node: nodes.CallBlock) -> nodes.Node:
        # Jinja writes a call block's result without `finalize`; check_template reports it.
        raise TemplateSyntaxError(_CALL_BLOCK, node.lineno)


_CALL_BLOCK = "{% call %} blocks are not supported in serving templates: call the macro in {{ }}"


def _prepare(source: str) -> str:
    return _HYPHENATED.sub(r'{{ inputs.\1["\2"] }}', source)


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@functools.lru_cache(maxsize=8192)
def _compile(source: str) -> Template:
    ast = _Harden().visit(_ENV.parse(_prepare(source)))
    ast.set_environment(_ENV)
    return _ENV.from_string(ast)


# -- checking templates ---------------------------------------------------------------------


def _strings(value: Any, pointer: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield pointer, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{pointer}/{str(k).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{pointer}/{i}")


def _references(ast: nodes.Template) -> Iterator[tuple[nodes.Node, str, str | None]]:
    """(node, group, name) of every `inputs.GROUP[.NAME]` the template reads."""

    def key(node: nodes.Node) -> str | None:
        if isinstance(node, nodes.Getattr):
            return node.attr
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            return str(node.arg.value)
        return None

    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        inner = node.node  # type: ignore[attr-defined]
        if isinstance(inner, nodes.Name) and inner.name == "inputs":
            group = key(node)
            if group not in _GROUPS:
                yield node, group or "?", None
        elif (
            isinstance(inner, nodes.Getattr | nodes.Getitem)
            and isinstance(inner.node, nodes.Name)
            and inner.node.name == "inputs"
            and key(inner) in _GROUPS
        ):
            name = key(node)
            if name is not None:
                yield node, key(inner) or "", name


def check_template(template: ServingTemplate) -> list[Problem]:
    """Syntax and placeholder problems of a template, independent of any configuration."""
    doc = template.doc
    declared = {
        "parameters": [p.name for p in template.parameters],
        "artifacts": [a.name for a in template.artifacts],
    }
    problems: list[Problem] = []
    for pointer, text in _strings(template.body, template.body_pointer):
        if not _is_template(text):
            continue
        try:
            ast = _ENV.parse(_prepare(text))
        except TemplateSyntaxError as exc:
            problems.append(
                doc.problem(pointer, f"template syntax error: {exc.message}", exc.lineno)
            )
            continue
        for node in ast.find_all(nodes.CallBlock):
            problems.append(doc.problem(pointer, _CALL_BLOCK, node.lineno))
        for name in sorted(meta.find_undeclared_variables(ast) - {"inputs"}):
            problems.append(
                doc.problem(
                    pointer,
                    f"unknown variable {name!r}: templates can read inputs.parameters.NAME "
                    "and inputs.artifacts.NAME",
                )
            )
        for node, group, name in _references(ast):
            if name is None:
                problems.append(
                    doc.problem(
                        pointer,
                        f"inputs.{group} does not exist: use inputs.parameters or inputs.artifacts",
                        node.lineno,
                    )
                )
            elif name not in declared[group]:
                hint = did_you_mean(name, declared[group])
                problems.append(
                    doc.problem(
                        pointer,
                        f"inputs.{group}.{name} is not declared in spec.inputs.{group}{hint}",
                        node.lineno,
                    )
                )
    if template.form == "container":
        artifact = template.body.get("modelArtifact")
        literal = isinstance(artifact, str) and not _is_template(artifact)
        if literal and artifact not in declared["artifacts"]:
            problems.append(
                doc.problem(
                    f"{template.body_pointer}/modelArtifact",
                    f"{artifact!r} is not a declared artifact input"
                    f"{did_you_mean(artifact, declared['artifacts'])}",
                )
            )
    return problems


# -- rendering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """Resolved input values of one configuration."""

    parameters: dict[str, str]
    artifacts: dict[str, str]

    def context(self) -> dict[str, Any]:
        return {"inputs": {"parameters": self.parameters, "artifacts": self.artifacts}}


def resolve_inputs(
    repo: Repository, template: ServingTemplate, config: Configuration
) -> Inputs | None:
    """Binding wins, else the default; None when something is missing (crosscheck reports it)."""
    bound = dict(config.parameter_bindings)
    resolved = catalog.resolve(repo, template, config)
    # A catalog version's serving values sit between the binding and the template default.
    served = dict(resolved.version.parameters) if resolved else {}
    if resolved and template.parameter(catalog.MODEL_VERSION):
        served[catalog.MODEL_VERSION] = resolved.version.name  # `latest` resolved
        bound.pop(catalog.MODEL_VERSION, None)
    parameters = {}
    for p in template.parameters:
        value = bound.get(p.name, served.get(p.name, p.default))
        if value is None:
            return None
        parameters[p.name] = value
    artifact_ids = dict(config.artifact_bindings)
    artifacts = {}
    for a in template.artifacts:
        artifact = repo.artifacts.get((config.resource_group, artifact_ids.get(a.name, "")))
        if artifact is None:
            return None
        artifacts[a.name] = artifact.url
    return Inputs(parameters, artifacts)


def _render_text(text: str, pointer: str, inputs: Inputs, budget: _Budget | None = None) -> str:
    if not _is_template(text):
        return text
    token = _BUDGET.set(budget or _Budget())
    chunks: Iterator[str] | None = None
    try:
        # Compiled inside the budget too: Jinja folds constant expressions while compiling.
        chunks = _compile(text).generate(inputs.context())
        parts, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_TEXT:
                raise SecurityError("the rendered value would be over 1 MiB")
            parts.append(chunk)
        return "".join(parts)
    except SecurityError as exc:
        raise RenderError(pointer, f"unsafe template expression refused: {exc}") from None
    except UndefinedError as exc:
        raise RenderError(pointer, f"template reads an undefined value: {exc}") from None
    except TemplateError as exc:
        raise RenderError(pointer, f"template error: {exc}") from None
    except Exception as exc:  # a user's expression may raise anything, e.g. 1/0
        detail = " ".join(str(exc).split())
        raise RenderError(
            pointer, f"template expression failed: {type(exc).__name__}: {detail}"
        ) from None
    finally:
        if chunks is not None:
            chunks.close()  # type: ignore[attr-defined]
        _BUDGET.reset(token)


def _render_tree(value: Any, pointer: str, inputs: Inputs) -> Any:
    if isinstance(value, str):
        return _render_text(value, pointer, inputs)
    if isinstance(value, dict):
        return {k: _render_tree(v, f"{pointer}/{k}", inputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_tree(v, f"{pointer}/{i}", inputs) for i, v in enumerate(value)]
    return value


_MARKER = re.compile(r"(rcnlr[0-9a-f]{16})x(\d+)x")  # see _Budget.marker
_STR_TAG = "tag:yaml.org,2002:str"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "bool", "null"))


def _render_yaml(value: Any, pointer: str, inputs: Inputs) -> Any:
    """KServe's text blocks: render with markers for the placeholders' values, parse, then put
    each value into the scalar its marker stands in (never into the YAML text)."""
    if not isinstance(value, str):
        return _render_tree(value, pointer, inputs)
    budget = _Budget(capture=True)
    text = _render_text(value, pointer, inputs, budget)
    loader = _ManifestLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if budget.values:
            _fill(node, budget, loader, pointer)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise RenderError(pointer, f"the rendered text is not valid YAML: {detail}") from None
    finally:
        loader.dispose()


def _fill(node: yaml.Node, budget: _Budget, loader: Any, pointer: str) -> None:
    """Replace every marker in the parsed scalars (keys too) by its value, verbatim. A plain
    scalar takes the type YAML gives its final text (int, float, bool, null: `port: {{p}}` is a
    number, as before); it never becomes a mapping or a list."""
    values = budget.values or []

    def value_of(match: re.Match[str]) -> str:
        index = int(match[2])
        ours = match[1] == budget.marker and index < len(values)
        return values[index] if ours else match[0]

    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:  # an alias: the node it names is filled once
            continue
        seen.add(id(current))
        if isinstance(current, yaml.ScalarNode):
            if budget.marker not in current.value:
                continue
            filled = _MARKER.sub(value_of, current.value)
            if len(filled) > MAX_TEXT:
                raise RenderError(pointer, "unsafe template expression refused: a value over 1 MiB")
            plain = not current.style  # None from the Python parser, '' from libyaml's
            if plain and current.tag == _STR_TAG:
                tag = loader.resolve(yaml.ScalarNode, filled, (True, False))
                if tag in _SCALAR_TAGS:
                    current.tag = tag
            current.value = filled
        elif isinstance(current, yaml.MappingNode):
            for key, item in current.value:
                stack.extend((key, item))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _kserve_draft(template: ServingTemplate, inputs: Inputs) -> Draft:
    base = template.body_pointer
    body = template.body
    metadata = body.get("metadata") or {}
    labels = _string_map(
        _render_yaml(metadata.get("labels") or {}, f"{base}/metadata/labels", inputs)
    )
    annotations = _string_map(
        _render_yaml(metadata.get("annotations") or {}, f"{base}/metadata/annotations", inputs)
    )
    spec = _render_yaml(body["spec"], f"{base}/spec", inputs)
    try:
        return to_draft(spec, labels, annotations)
    except RenderError as exc:
        raise RenderError(f"{base}/spec", exc.message) from None


def _string_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RenderError("", "labels and annotations must be a mapping")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _int(value: Any, pointer: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RenderError(pointer, f"must be a whole number, not {value!r}") from None
    if number < minimum:
        raise RenderError(pointer, f"must be at least {minimum}, not {number}")
    return number


def _container_draft(template: ServingTemplate, inputs: Inputs) -> Draft:
    base = template.body_pointer
    c = _render_tree(template.body, base, inputs)
    raw_env = c.get("env") or {}
    if isinstance(raw_env, dict):
        env = [EnvVar(k, v, is_secret_name(k)) for k, v in raw_env.items()]
    else:
        env = [
            EnvVar(e["name"], e["value"], e.get("secret", is_secret_name(e["name"])))
            for e in raw_env
        ]
    model_uri = None
    if "modelArtifact" in c:
        name = c["modelArtifact"]
        if name not in inputs.artifacts:
            raise RenderError(f"{base}/modelArtifact", f"{name!r} is not a declared artifact input")
        model_uri = inputs.artifacts[name]
        if not any(e.name == STORAGE_URI for e in env):
            env.append(EnvVar(STORAGE_URI, model_uri))
    replicas = _int(c.get("replicas", 1), f"{base}/replicas", 0)
    return Draft(
        image=c["image"],
        command=tuple(c["command"]) if "command" in c else None,
        args=tuple(c["args"]) if "args" in c else None,
        env=tuple(env),
        port=_int(c.get("port", 8080), f"{base}/port", 1),
        readiness=_readiness(c, base),
        liveness=_probe(c["livenessProbe"], f"{base}/livenessProbe", Probe())
        if "livenessProbe" in c
        else None,
        startup_timeout=_int(
            c.get("startupTimeout", Draft.startup_timeout), f"{base}/startupTimeout", 1
        ),
        resource_plan=c.get("resourcePlan"),
        gpus=_int(c["gpus"], f"{base}/gpus", -1) if "gpus" in c else None,
        replicas=replicas,
        max_replicas=_int(c["maxReplicas"], f"{base}/maxReplicas", 1)
        if "maxReplicas" in c
        else None,
        container_concurrency=_int(
            c.get("containerConcurrency", 0), f"{base}/containerConcurrency", 0
        ),
        # The template's autoscaling annotations (metadata.annotations, as on AI Core).
        annotations=tuple((k, v) for k, v in template.annotations if k.startswith(PREFIX)),
        model_uri=model_uri,
        volumes=tuple(
            (v["source"], v["target"], v.get("readOnly", False)) for v in c.get("volumes", ())
        ),
        working_dir=c.get("workingDir"),
        restart_policy=c.get("restartPolicy", Draft.restart_policy),
        shm_size=c.get("shmSize"),
        ipc_mode=c.get("ipc"),
        stop_timeout=_int(c["stopTimeout"], f"{base}/stopTimeout", 0)
        if "stopTimeout" in c
        else None,
    )


def _readiness(c: dict[str, Any], base: str) -> Probe:
    """`readinessProbe`, or the older `readinessPath` alone (one or the other: two spellings of
    one path would leave a reader guessing which wins)."""
    if "readinessPath" in c and "path" in (c.get("readinessProbe") or {}):
        raise RenderError(
            f"{base}/readinessPath", "give the path once: readinessPath or readinessProbe.path"
        )
    default = Probe(path=_probe_path(c, "readinessPath", base, Probe.path))
    if "readinessProbe" not in c:
        return default
    return _probe(c["readinessProbe"] or {}, f"{base}/readinessProbe", default)


def _probe(raw: dict[str, Any], pointer: str, default: Probe) -> Probe:
    """A probe of the container form, rendered: numbers may have come from placeholders, so
    their ranges are checked here (the schema sees only the template)."""
    numbers = {}
    for key, (low, high) in PROBE_LIMITS.items():
        if key in raw:
            numbers[key] = _int(raw[key], f"{pointer}/{key}", low)
            if numbers[key] > high:
                raise RenderError(f"{pointer}/{key}", f"must be at most {high}, not {numbers[key]}")
    port = _int(raw["port"], f"{pointer}/port", 1) if "port" in raw else None
    if port is not None and port > 65535:
        raise RenderError(f"{pointer}/port", f"must be a port number, not {port}")
    return Probe(
        path=_probe_path(raw, "path", pointer, default.path),
        port=port,
        period_seconds=numbers.get("periodSeconds", default.period_seconds),
        timeout_seconds=numbers.get("timeoutSeconds", default.timeout_seconds),
        failure_threshold=numbers.get("failureThreshold", default.failure_threshold),
        success_threshold=numbers.get("successThreshold", default.success_threshold),
    )


def _probe_path(raw: dict[str, Any], key: str, pointer: str, default: str | None) -> str | None:
    path = raw.get(key, default)
    if path is not None and not PROBE_PATH.match(str(path)):
        raise RenderError(
            f"{pointer}/{key}",
            f"must be an absolute URL path ('/' then URL characters), not {path!r}",
        )
    return path


# -- where file: artifacts may point --------------------------------------------------------

MODEL_FOLDERS = ("models",)  # the GitOps root's model folders


def from_api(doc: Document | None) -> bool:
    """Whether a document was written by the AI API, i.e. comes from a tenant."""
    return doc is not None and doc.file.path.startswith(API_FOLDER + "/")


def artifact_places(repo: Repository, tenant: bool) -> list[str]:
    """The real folders `file:` artifacts may resolve into. Operators (git): the GitOps root,
    its model folders (which may be links the operator placed) and Settings
    `spec.artifactRoots`. Tenants (the AI API): the model folders and `artifactRoots` only."""
    root = os.path.realpath(repo.root)
    places = [] if tenant else [root]
    places += [os.path.realpath(os.path.join(root, folder)) for folder in MODEL_FOLDERS]
    places += [os.path.realpath(folder) for folder in repo.settings.artifact_roots]
    return places


def _file_path(root: Path, uri: str) -> str:
    """The path a `file:` URL names (not yet resolved); ValueError with what is wrong."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() != "file":
        raise ValueError(
            f"only file:, ai://, s3:// and https:// URLs can be mounted at {MODEL_MOUNT} "
            f"(the {parts.scheme}: scheme is not supported yet)"
        )
    if parts.netloc not in ("", "localhost"):
        raise ValueError("file URLs must be local (file:///path or file:relative/path)")
    path = unquote(parts.path)
    if "\x00" in path:
        raise ValueError("the path holds a NUL character")
    return path if path.startswith("/") else os.path.join(root, path)


def artifact_host_path(repo: Repository, uri: str, tenant: bool) -> str:
    """The real host path of a `file:` URL (symlinks followed), if it lies where artifacts may
    point; ValueError with a one-line problem otherwise."""
    real = os.path.realpath(_file_path(repo.root, uri))
    for place in artifact_places(repo, tenant):
        if os.path.commonpath((real, place)) == place:
            return real
    if tenant:
        raise ValueError(
            "points outside the folders artifacts of the AI API may use (the GitOps root's "
            f"{', '.join(f + '/' for f in MODEL_FOLDERS)} and Settings spec.artifactRoots, "
            "symlinks followed): use a path there, or ask an operator to add its folder to "
            "spec.artifactRoots"
        )
    raise ValueError(
        f"resolves to {real}, outside the GitOps root and Settings spec.artifactRoots "
        "(symlinks followed): move the files under the root's models/ folder, or add their "
        "folder to spec.artifactRoots of the Settings manifest"
    )


def artifact_url_problem(repo: Repository, url: str, tenant: bool) -> str | None:
    """What is wrong with an artifact's URL, or None. Only `file:` URLs touch the host; an
    object store's (`ai://<secret>/<path>`, `s3://<bucket>/<path>`) is checked for its form
    here, and its secret and objects when it is planned (they live outside git)."""
    try:
        if is_store_url(url):
            return store_url_problem(url)
        if urlsplit(url).scheme.lower() != "file":
            return None
        artifact_host_path(repo, url, tenant)
    except ValueError as exc:
        return str(exc)
    return None


def check_artifacts(repo: Repository) -> tuple[list[Problem], set[RGKey]]:
    """Problems of `file:` artifacts that point outside where they may, and their keys."""
    problems: list[Problem] = []
    bad: set[RGKey] = set()
    for key, artifact in repo.artifacts.items():
        problem = artifact_url_problem(repo, artifact.url, from_api(artifact.doc))
        if problem is not None:
            shown = re.sub(r"//[^/@]*@", "//***@", artifact.url)  # credentials: never echoed
            problems.append(artifact.doc.problem("/spec/url", f"{shown!r} {problem}"))
            bad.add(key)
    return problems, bad


def model_host_path(repo: Repository, uri: str, tenant: bool) -> str:
    """Host path of a `file:` model URL: `file:///abs/path`, or `file:rel/path` under the root,
    symlinks followed and checked again here (a link may have changed since validation); the
    real path is what gets mounted, so a link changed later does not move the mount."""
    try:
        return artifact_host_path(repo, uri, tenant)
    except ValueError as exc:
        raise RenderError(
            "/spec/inputArtifactBindings", f"model artifact {uri}: {exc}", blame="configuration"
        ) from None


def _bound_artifacts(repo: Repository, config: Configuration) -> list[Artifact]:
    found = (
        repo.artifacts.get((config.resource_group, aid)) for _, aid in config.artifact_bindings
    )
    return [a for a in found if a is not None]


def tenants_uri(repo: Repository, config: Configuration, uri: str) -> bool:
    """Whether a model URI comes from a tenant: a tenant's artifact's URL, or anything else a
    tenant's configuration made the template write (a parameter used as STORAGE_URI)."""
    bound = _bound_artifacts(repo, config)
    if any(a.url == uri and from_api(a.doc) for a in bound):
        return True
    if any(a.url == uri for a in bound):
        return False
    return from_api(config.doc)


def _mounts(
    root: Path, volumes: tuple[tuple[str, str, bool], ...], pointer: str
) -> tuple[Mount, ...]:
    mounts = []
    for i, (source, target, read_only) in enumerate(volumes):
        if source.startswith("/"):
            host = os.path.normpath(source)
        elif "/" in source or source.startswith("."):
            host = os.path.normpath(os.path.join(root, source))
        elif _VOLUME_NAME.match(source):
            host = source  # a named Docker volume
        else:
            raise RenderError(
                f"{pointer}/{i}/source", f"{source!r} is neither a path nor a volume name"
            )
        mounts.append(Mount(host, target, read_only))
    return tuple(mounts)


def _finish(
    repo: Repository, template: ServingTemplate, config: Configuration, draft: Draft
) -> ContainerSpec:
    plan_name = draft.resource_plan or DEFAULT_PLAN
    plan = repo.plans.get(plan_name)
    if plan is None:
        where = (
            "/spec/template/metadata/labels"
            if template.form == "kserve"
            else f"{template.body_pointer}/resourcePlan"
        )
        raise RenderError(
            where,
            f"resource plan {plan_name!r} not found{did_you_mean(plan_name, repo.plans)} "
            f"(known: {', '.join(sorted(repo.plans))})",
        )
    spec = ContainerSpec(
        image=draft.image,
        command=draft.command,
        args=draft.args,
        env=draft.env,
        port=draft.port,
        model_uri=draft.model_uri,
        # An object store's model is mounted from the host's cache once a plan has read the
        # store (reconciler.core.models): no host path here.
        model_path=model_host_path(
            repo, draft.model_uri, tenants_uri(repo, config, draft.model_uri)
        )
        if draft.model_uri and not is_store_url(draft.model_uri)
        else None,
        volumes=_mounts(repo.root, draft.volumes, f"{template.body_pointer}/volumes"),
        gpus=plan.gpus if draft.gpus is None else draft.gpus,
        shm_size=draft.shm_size,
        ipc_mode=draft.ipc_mode,
        working_dir=draft.working_dir,
        stop_timeout=draft.stop_timeout,
        resource_plan=plan.name,
        cpus=plan.cpus,
        memory=plan.memory,
        restart_policy=draft.restart_policy,
        readiness=draft.readiness,
        liveness=draft.liveness,
        startup_timeout=draft.startup_timeout,
        replicas=draft.replicas,
        # At least one: minReplicas 0 alone means "scale to zero, up to one when used".
        max_replicas=max(draft.replicas, draft.max_replicas or draft.replicas, 1),
        container_concurrency=draft.container_concurrency,
        labels=draft.labels,
        annotations=draft.annotations,
        # The Settings' placement first, then the plan's: both are what the replicas are made
        # with, so that a change of either is a change the plan shows.
        constraints=tuple(dict.fromkeys((*repo.settings.engine.constraints, *plan.constraints))),
    )
    try:
        spec.scaling()  # the autoscaling annotations, read now so that a bad one is an error
    except PolicyError as exc:
        where = (
            "/spec/template/metadata/annotations"
            if template.form == "kserve"
            else f"{template.body_pointer}/annotations"
        )
        raise RenderError(where, str(exc)) from None
    return spec


def render_configuration(
    repo: Repository, template: ServingTemplate, config: Configuration, inputs: Inputs
) -> ContainerSpec:
    if template.form == "kserve":
        draft = _kserve_draft(template, inputs)
    else:
        draft = _container_draft(template, inputs)
    return _finish(repo, template, config, draft)


def render_all(repo: Repository) -> tuple[dict[RGKey, ContainerSpec], list[Problem]]:
    """Render every configuration whose references are sound; problems of the others are
    already reported by the cross-checks and are not repeated here."""
    problems: list[Problem] = []
    sound: dict[str, ServingTemplate] = {}
    for template in repo.templates.values():
        template_problems = check_template(template)
        problems += template_problems
        if not template_problems:
            sound[template.name] = template
    artifact_problems, bad_artifacts = check_artifacts(repo)
    problems += artifact_problems
    specs: dict[RGKey, ContainerSpec] = {}
    for key, config in repo.configurations.items():
        template = sound.get(config.executable_id)
        if template is None or template.scenario_id != config.scenario_id:
            continue
        if any(
            (config.resource_group, aid) in bad_artifacts for _, aid in config.artifact_bindings
        ):
            continue  # reported at the artifact
        inputs = resolve_inputs(repo, template, config)
        if inputs is None:
            continue
        try:
            specs[key] = render_configuration(repo, template, config, inputs)
        except RenderError as exc:
            if exc.blame == "configuration":
                problems.append(config.doc.problem(exc.pointer, exc.message))
            else:
                problems.append(
                    template.doc.problem(
                        exc.pointer, f"{exc.message} (rendering configuration {config.name})"
                    )
                )
    return specs, problems
