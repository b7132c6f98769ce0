"""Errors a user can act on.

Every error that reaches the command line is one of these; anything else is a bug and the CLI
shows it as such. A `UserError` is one line naming the thing and what to do; a `ManifestError`
carries every problem found in the manifests so that one `validate` run reports all of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one manifest: `FILE[:LINE]: /json/pointer: message`."""

    file: str
    line: int | None
    pointer: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.pointer or '/'}: {self.message}"


class UserError(Exception):
    """A mistake or a condition the user can fix; printed as one line, never as a traceback."""


class ManifestError(UserError):
    """The manifests are invalid; nothing may change on the host until they are fixed."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(set(problems), key=_sort_key))
        super().__init__(self.summary())

    def summary(self) -> str:
        n = len(self.problems)
        return f"{n} problem{'s' if n != 1 else ''} in the manifests"

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class RenderError(Exception):
    """Rendering one configuration failed; `blame` says whose document to report it in."""

    def __init__(self, pointer: str, message: str, blame: str = "template") -> None:
        super().__init__(message)
        self.pointer = pointer  # in the manifest of `blame`
        self.message = message
        self.blame = blame


def _sort_key(p: Problem) -> tuple[str, int, str, str]:
    return (p.file, p.line or 0, p.pointer, p.message)


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
