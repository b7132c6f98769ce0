"""How a template says its deployment scales: the bounds and Knative's autoscaling annotations.

AI Core's serving templates (KServe over Knative) give `minReplicas`, `maxReplicas`,
`containerConcurrency` and the annotations `autoscaling.knative.dev/metric` (concurrency or
rps), `target`, `target-utilization-percentage`, `window`, `panic-window-percentage`,
`panic-threshold-percentage`, `scale-down-delay`, `max-scale-up-rate`, `max-scale-down-rate`
and `scale-to-zero-grace-period` (a shorter name of Knative's cluster-wide setting, given per
deployment here). `policy` reads them with Knative's defaults, so that a template moved from
AI Core behaves the same; rendering calls it, so that a bad annotation is a validation error.
`reconciler.core.autoscale` decides with the result.
"""

from __future__ import annotations

import math
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
