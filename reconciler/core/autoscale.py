"""How many replicas a deployment should have for its load: Knative's autoscaler (KPA), pure.

The template's bounds and annotations are read into a `Policy` by
`reconciler.manifests.scaling`; `Autoscaler` turns samples of the load into a replica count the
way Knative's KPA does:

* the load is averaged over a stable window (60 s) and a panic window (10 % of it);
* desired = ceil(average / (target × utilization)), for each window;
* a burst (the panic window's desire at least twice what is ready) enters panic mode: the
  panic window decides, and the count never goes down until the stable window has passed
  without a burst;
* one decision moves at most max-scale-up-rate × ready up and ready / max-scale-down-rate down;
* a scale-down waits out scale-down-delay (the highest desire within it holds);
* the result stays within [minReplicas, maxReplicas]; it reaches 0 only when minReplicas is 0
  and no request came for the grace period.

Nothing here touches a clock or an engine: samples and `now` come in, a `Decision` goes out,
so that every rule is tested without waiting (tests/test_autoscale.py). The gateway feeds it,
`reconciler serve` acts on its decisions.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..manifests.scaling import Policy, PolicyError, policy

__all__ = ["Autoscaler", "Decision", "Policy", "PolicyError", "policy"]


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # one line, for the log and for status
    panic: bool = False


class Autoscaler:
    """One deployment's scaler: `record` a sample of its load (concurrent requests in flight,
    or requests per second) now and then, `decide` when asked."""

    def __init__(self, policy: Policy, now: float, replicas: int) -> None:
        self.policy = policy
        self._samples: deque[tuple[float, float]] = deque()  # (time, load)
        # A deployment just started counts as just used; one found at zero (serve restarted)
        # as long idle, so that it stays there.
        self._last_request = now if replicas else -math.inf
        self._panic_since: float | None = None
        self._desired = replicas
        self._recent: deque[tuple[float, int]] = deque()  # (time, desire): scale-down delay

    def record(self, now: float, load: float, requests: int = 0) -> None:
        """A sample of the load; `requests`: how many arrived since the last sample (any
        request keeps a scaled-to-zero candidate alive)."""
        self._samples.append((now, max(load, 0.0)))
        if requests or load > 0:
            self._last_request = now
        horizon = now - self.policy.window
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def wake(self, now: float) -> Decision:
        """A request came for a deployment with no replica: one, at once (the activator's
        cold start), whatever the windows say."""
        self._last_request = now
        self._desired = max(self._desired, 1)
        return Decision(self._desired, "a request came while scaled to zero")

    def decide(self, now: float, ready: int) -> Decision:
        p = self.policy
        if p.fixed:
            self._desired = p.min_replicas
            return Decision(self._desired, f"fixed at {p.min_replicas}")
        stable = self._average(now, p.window)
        burst = self._average(now, p.panic_window)
        base = max(ready, 1)
        want_stable = math.ceil(stable / p.per_replica) if stable > 0 else 0
        want_panic = math.ceil(burst / p.per_replica) if burst > 0 else 0
        # One decision moves only so far from what is ready.
        up = math.ceil(p.max_scale_up_rate * base)
        down = math.floor(base / p.max_scale_down_rate)
        want_stable = min(max(want_stable, down), up)
        want_panic = min(max(want_panic, down), up)
        if (want_panic / base >= p.panic_threshold and ready > 0) or (ready == 0 and want_panic):
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since > p.window:
            self._panic_since = None
        if self._panic_since is not None:
            desired = max(want_panic, self._desired)  # never down while bursting
            why = f"panic: {burst:.3g} {p.metric} over {p.panic_window:g}s"
        else:
            desired = want_stable
            why = f"{stable:.3g} {p.metric} over {p.window:g}s, {p.per_replica:.3g} per replica"
        desired = self._held_up(now, desired)
        desired = min(max(desired, p.min_replicas), p.max_replicas)
        if desired == 0 and now - self._last_request < p.grace:
            desired = 1  # the last one stays until the grace period passed without a request
            why = f"idle less than {p.grace:g}s"
        elif desired == 0:
            why = f"no request for {p.grace:g}s: scale to zero"
        self._desired = desired
        return Decision(desired, why, self._panic_since is not None)

    def _average(self, now: float, seconds: float) -> float:
        """The load's mean over the last `seconds` (samples missing count as no load: a
        gateway that saw nothing had nothing in flight)."""
        start = now - seconds
        inside = [load for at, load in self._samples if at >= start]
        if not inside:
            return 0.0
        return sum(inside) / len(inside)

    def _held_up(self, now: float, desired: int) -> int:
        """A scale-down waits out scale-down-delay: the highest desire within it holds."""
        delay = self.policy.scale_down_delay
        if delay <= 0:
            return desired
        self._recent.append((now, desired))
        while self._recent and self._recent[0][0] < now - delay:
            self._recent.popleft()
        return max(d for _, d in self._recent)
