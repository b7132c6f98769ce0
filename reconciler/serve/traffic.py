"""What the gateway relayed, per deployment, over the last minutes, for the dashboard's charts:
requests per second, p50 and p99 latency and errors, in buckets of BUCKET_SECONDS.

Fed by the gateway's observations (the same as /metrics'), bounded in memory whatever the load:
BUCKETS buckets per deployment, and at most SAMPLES latencies per bucket (a uniform reservoir
sample, so the percentiles stay honest under any rate)."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

BUCKET_SECONDS = 5
BUCKETS = 120  # ten minutes
SAMPLES = 512


@dataclass
class _Bucket:
    start: int  # unix time, a multiple of BUCKET_SECONDS
    count: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, seconds: float, error: bool, rng: random.Random) -> None:
        self.count += 1
        self.errors += error
        if len(self.latencies) < SAMPLES:
            self.latencies.append(seconds)
        else:
            at = rng.randrange(self.count)
            if at < SAMPLES:
                self.latencies[at] = seconds


@dataclass(frozen=True)
class Point:
    start: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


class Traffic:
    def __init__(self, clock: type[time.time] | None = None) -> None:  # type: ignore[valid-type]
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._by: dict[str, deque[_Bucket]] = {}
        self._rng = random.Random(0)

    def observe(self, deployment: str, seconds: float, code: int, upstream_ok: bool) -> None:
        start = int(self._clock()) // BUCKET_SECONDS * BUCKET_SECONDS
        with self._lock:
            buckets = self._by.setdefault(deployment, deque(maxlen=BUCKETS))
            if not buckets or buckets[-1].start != start:
                buckets.append(_Bucket(start))
            buckets[-1].add(seconds, code >= 500 or not upstream_ok, self._rng)

    def series(self, deployment: str, buckets: int = 60) -> list[Point]:
        """The last `buckets` buckets up to now, oldest first, quiet ones as zeros."""
        now = int(self._clock()) // BUCKET_SECONDS * BUCKET_SECONDS
        with self._lock:
            kept = {b.start: b for b in self._by.get(deployment, ())}
            out = []
            for i in range(buckets - 1, -1, -1):
                start = now - i * BUCKET_SECONDS
                b = kept.get(start)
                if b is None:
                    out.append(Point(start, 0.0, 0.0, 0.0, 0))
                    continue
                lat = sorted(b.latencies)
                out.append(
                    Point(
                        start,
                        b.count / BUCKET_SECONDS,
                        _quantile(lat, 0.5) * 1000,
                        _quantile(lat, 0.99) * 1000,
                        b.errors,
                    )
                )
        return out


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
