"""How many replicas a deployment should have for its load: Knative's autoscaler (KPA), pure.

The template says how a deployment scales, as on AI Core (KServe over Knative): `minReplicas`
and `maxReplicas` (minReplicas 0: scale to zero), `containerConcurrency`, and the annotations
`autoscaling.knative.dev/metric` (concurrency or rps), `target`, `target-utilization-percentage`,
`window`, `panic-window-percentage`, `panic-threshold-percentage`, `scale-down-delay`,
`max-scale-up-rate`, `max-scale-down-rate` and `scale-to-zero-grace-period` (a shorter name of
Knative's cluster-wide setting, given per deployment here). `policy` reads them with Knative's
defaults; `Autoscaler` turns samples of the load into a replica count the way Knative's KPA
does:

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
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "autoscaling.knative.dev/"
METRICS = ("concurrency", "rps")
# Knative's defaults (config-autoscaler), so a template moved from AI Core behaves the same.
DEFAULT_TARGET = {"concurrency": 100.0, "rps": 200.0}
DEFAULT_UTILIZATION = 70.0  # percent of the target aimed at
DEFAULT_WINDOW = 60.0  # seconds
DEFAULT_PANIC_WINDOW_PERCENT = 10.0
DEFAULT_PANIC_THRESHOLD_PERCENT = 200.0
DEFAULT_MAX_SCALE_UP_RATE = 1000.0
DEFAULT_MAX_SCALE_DOWN_RATE = 2.0
DEFAULT_SCALE_DOWN_DELAY = 0.0
DEFAULT_GRACE = 30.0  # seconds without a request before the last replica goes
# Knative's limits on what the annotations may say.
WINDOW_LIMITS = (6.0, 3600.0)
PANIC_WINDOW_PERCENT_LIMITS = (1.0, 100.0)
PANIC_THRESHOLD_PERCENT_LIMITS = (110.0, 1000.0)


class PolicyError(ValueError):
    """An annotation that cannot be read: names it and says what it takes."""


@dataclass(frozen=True)
class Policy:
    """How one deployment scales, as its template says."""

    min_replicas: int
    max_replicas: int
    metric: str = "concurrency"
    target: float = DEFAULT_TARGET["concurrency"]  # per replica
    utilization: float = DEFAULT_UTILIZATION / 100
    window: float = DEFAULT_WINDOW
    panic_window: float = DEFAULT_WINDOW * DEFAULT_PANIC_WINDOW_PERCENT / 100
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD_PERCENT / 100
    max_scale_up_rate: float = DEFAULT_MAX_SCALE_UP_RATE
    max_scale_down_rate: float = DEFAULT_MAX_SCALE_DOWN_RATE
    scale_down_delay: float = DEFAULT_SCALE_DOWN_DELAY
    grace: float = DEFAULT_GRACE

    @property
    def fixed(self) -> bool:
        """Nothing to decide: exactly one count is allowed."""
        return self.min_replicas == self.max_replicas

    @property
    def per_replica(self) -> float:
        """The load one replica is meant to carry."""
        return self.target * self.utilization


def policy(
    min_replicas: int,
    max_replicas: int,
    annotations: Mapping[str, str],
    container_concurrency: int = 0,
) -> Policy:
    """The policy a template declares. `maxReplicas` 0 means no upper bound in Knative; here
    the bound is the larger of the two when 0 (a host has no infinite capacity). A
    `containerConcurrency` caps the concurrency target (Knative's default target then)."""
    a = {k[len(PREFIX) :]: v.strip() for k, v in annotations.items() if k.startswith(PREFIX)}
    metric = a.get("metric", "concurrency")
    if metric not in METRICS:
        raise PolicyError(f"{PREFIX}metric: {metric!r} is not one of {', '.join(METRICS)}")
    target = _number(a, "target", DEFAULT_TARGET[metric], low=0.01)
    if metric == "concurrency" and container_concurrency > 0:
        target = (
            min(target, float(container_concurrency))
            if "target" in a
            else float(container_concurrency)
        )
    window = _seconds(a, "window", DEFAULT_WINDOW, *WINDOW_LIMITS)
    panic_percent = _number(
        a, "panic-window-percentage", DEFAULT_PANIC_WINDOW_PERCENT, *PANIC_WINDOW_PERCENT_LIMITS
    )
    upper = max(min_replicas, max_replicas) if max_replicas > 0 else max(min_replicas, 1)
    return Policy(
        min_replicas=min_replicas,
        max_replicas=upper,
        metric=metric,
        target=target,
        utilization=_number(a, "target-utilization-percentage", DEFAULT_UTILIZATION, 1, 100) / 100,
        window=window,
        panic_window=max(window * panic_percent / 100, 1.0),
        panic_threshold=_number(
            a,
            "panic-threshold-percentage",
            DEFAULT_PANIC_THRESHOLD_PERCENT,
            *PANIC_THRESHOLD_PERCENT_LIMITS,
        )
        / 100,
        max_scale_up_rate=_number(a, "max-scale-up-rate", DEFAULT_MAX_SCALE_UP_RATE, low=1.01),
        max_scale_down_rate=_number(
            a, "max-scale-down-rate", DEFAULT_MAX_SCALE_DOWN_RATE, low=1.01
        ),
        scale_down_delay=_seconds(a, "scale-down-delay", DEFAULT_SCALE_DOWN_DELAY, 0, 3600),
        grace=_seconds(a, "scale-to-zero-grace-period", DEFAULT_GRACE, 0, 3600),
    )


def _number(
    a: Mapping[str, str], name: str, default: float, low: float = 0.0, high: float = math.inf
) -> float:
    if name not in a:
        return default
    try:
        value = float(a[name])
    except ValueError:
        raise PolicyError(f"{PREFIX}{name}: {a[name]!r} is not a number") from None
    if not low <= value <= high or math.isnan(value):
        raise PolicyError(f"{PREFIX}{name}: {a[name]} is outside {low:g} to {high:g}")
    return value


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(a: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """A duration as Knative writes it: "60s", "2m", "1h" (or a bare number of seconds)."""
    if name not in a:
        return default
    text = a[name]
    unit = _UNITS.get(text[-1:])
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise PolicyError(f"{PREFIX}{name}: {text!r} is not a duration (60s, 2m, 1h)") from None
    if not low <= value <= high:
        raise PolicyError(f"{PREFIX}{name}: {text} is outside {low:g}s to {high:g}s")
    return value


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
        self._last_request = now  # a deployment just started counts as just used
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
