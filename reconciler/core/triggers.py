"""Why the next reconcile pass runs: triggers coalesced, so any number of them is one pass.

Passes are level-triggered (each converges everything), so what matters of a burst of triggers
(file events, Docker events, API writes) is only that one more pass comes after the last of
them; the reasons are kept, counted, for the pass's log line. Shared by `reconciler watch` and
the background reconciler of `reconciler serve`.
"""

from __future__ import annotations

import threading

Reasons = dict[tuple[str, str], int]  # (kind, detail) -> how many times


class Triggers:
    """The reasons for the next pass, coalesced: any number of triggers is one pass."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reasons: Reasons = {}

    def add(self, kind: str, detail: str = "", count: int = 1) -> None:
        with self._cond:
            key = (kind, detail)
            self._reasons[key] = self._reasons.get(key, 0) + count
            self._cond.notify_all()

    def take(self, timeout: float) -> Reasons:
        """What was asked for, waiting up to `timeout` seconds for something."""
        with self._cond:
            if not self._reasons and timeout > 0:
                self._cond.wait(timeout)
            taken, self._reasons = self._reasons, {}
            return taken

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def describe(reasons: Reasons, limit: int = 6) -> list[str]:
    items = [
        f"{kind} {detail}".strip() + (f" ×{n}" if n > 1 else "")
        for (kind, detail), n in sorted(reasons.items())
    ]
    return items[:limit] + ([f"+{len(items) - limit} more"] if len(items) > limit else [])
