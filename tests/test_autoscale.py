"""The autoscaler's decisions (Knative's KPA), daemon-free: samples and clocks made by hand."""

from __future__ import annotations

import pytest

from reconciler.core.autoscale import Autoscaler, Policy, PolicyError, policy

K = "autoscaling.knative.dev/"


def steady(scaler: Autoscaler, load: float, start: float, seconds: int) -> float:
    """One sample a second, as the gateway records them; the time after the last."""
    for t in range(seconds):
        scaler.record(start + t, load, requests=int(load > 0))
    return start + seconds - 1


def exact(min_r: int, max_r: int, **kw: float) -> Policy:
    """A concurrency policy aiming at exactly `target` per replica (utilization 100 %)."""
    return Policy(min_r, max_r, target=kw.pop("target", 4), utilization=1.0, **kw)


def test_the_annotations_are_read_with_knatives_defaults():
    p = policy(1, 5, {})
    assert (p.metric, p.target, p.utilization, p.window, p.panic_window) == (
        "concurrency", 100.0, 0.7, 60.0, 6.0
    )  # fmt: skip
    assert (p.max_scale_up_rate, p.max_scale_down_rate, p.grace) == (1000.0, 2.0, 30.0)
    p = policy(
        0,
        4,
        {
            K + "metric": "rps",
            K + "target": "50",
            K + "window": "2m",
            K + "target-utilization-percentage": "80",
            K + "scale-to-zero-grace-period": "45s",
            "unrelated/annotation": "x",
        },
    )
    assert (p.metric, p.target, p.window, p.panic_window, p.utilization, p.grace) == (
        "rps", 50.0, 120.0, 12.0, 0.8, 45.0
    )  # fmt: skip
    assert policy(1, 3, {}, container_concurrency=4).target == 4.0
    assert policy(1, 3, {K + "target": "10"}, container_concurrency=4).target == 4.0
    assert policy(2, 0, {}).max_replicas == 2  # 0: no bound in Knative; here: the minimum


@pytest.mark.parametrize(
    ("annotation", "value", "says"),
    [
        ("metric", "cpu", "is not one of concurrency, rps"),
        ("target", "many", "is not a number"),
        ("target", "0", "outside"),
        ("window", "1s", "outside 6s to 3600s"),
        ("window", "soon", "is not a duration"),
        ("panic-threshold-percentage", "50", "outside"),
    ],
)
def test_an_annotation_that_cannot_be_read_is_named(annotation: str, value: str, says: str):
    with pytest.raises(PolicyError) as caught:
        policy(1, 3, {K + annotation: value})
    assert str(caught.value).startswith(K + annotation + ": ")
    assert says in str(caught.value)


def test_a_steady_load_asks_for_load_over_target_replicas_within_the_bounds():
    scaler = Autoscaler(exact(1, 4), now=0, replicas=1)
    now = steady(scaler, 10, 0, 60)
    assert scaler.decide(now, ready=3).desired == 3  # ceil(10 / 4)
    scaler = Autoscaler(exact(1, 4), now=0, replicas=1)
    now = steady(scaler, 100, 0, 60)
    assert scaler.decide(now, ready=4).desired == 4  # not beyond maxReplicas
    scaler = Autoscaler(exact(2, 4), now=0, replicas=2)
    now = steady(scaler, 0, 0, 60)
    assert scaler.decide(now, ready=2).desired == 2  # not below minReplicas


def test_utilization_aims_below_the_target():
    scaler = Autoscaler(Policy(1, 10, target=10, utilization=0.7), now=0, replicas=1)
    now = steady(scaler, 14, 0, 60)
    assert scaler.decide(now, ready=2).desired == 2  # 14 / 7
    scaler.record(now + 1, 15)
    assert scaler.decide(now + 1, ready=2).desired == 3  # mean above 14: one more


def test_scaling_down_halves_at_most_per_decision():
    scaler = Autoscaler(exact(1, 16), now=0, replicas=16)
    now = steady(scaler, 0.5, 0, 60)
    counts = []
    ready = 16
    for step in range(5):
        ready = scaler.decide(now + step, ready=ready).desired
        counts.append(ready)
    assert counts == [8, 4, 2, 1, 1]


def test_scaling_up_is_limited_by_the_up_rate():
    scaler = Autoscaler(exact(1, 50, max_scale_up_rate=2.0), now=0, replicas=1)
    now = steady(scaler, 100, 0, 60)
    assert scaler.decide(now, ready=1).desired == 2
    assert scaler.decide(now, ready=2).desired == 4


def test_a_burst_enters_panic_which_decides_on_the_short_window_and_never_scales_down():
    scaler = Autoscaler(exact(1, 10), now=0, replicas=1)
    now = steady(scaler, 1, 0, 54)  # a quiet minute ...
    now = steady(scaler, 24, now + 1, 6)  # ... then 6 s of 24 in flight
    burst = scaler.decide(now, ready=1)
    assert burst.panic and burst.desired == 6  # the panic window's ceil(24 / 4), not the mean's
    assert "panic" in burst.reason
    # The burst is over, the short window is quiet again: still no scale-down while panicking.
    now = steady(scaler, 1, now + 1, 10)
    calm = scaler.decide(now, ready=6)
    assert calm.panic and calm.desired == 6
    # A whole stable window without a burst: panic ends, and the mean decides again.
    now = steady(scaler, 1, now + 1, 61)
    after = scaler.decide(now, ready=6)
    assert not after.panic and after.desired == 3  # halved at most, toward 1


def test_a_scale_down_waits_out_the_delay():
    scaler = Autoscaler(exact(1, 8, window=10, panic_window=1, scale_down_delay=30), 0, 1)
    now = steady(scaler, 32, 0, 10)
    assert scaler.decide(now, ready=8).desired == 8
    now = steady(scaler, 0, now + 1, 20)  # the load is gone, the window has forgotten it ...
    assert scaler.decide(now, ready=8).desired == 8  # ... but the desire of 8 s ago holds
    now = steady(scaler, 0, now + 1, 16)
    assert scaler.decide(now, ready=8).desired == 4  # 30 s on: down (halved at most)


def test_scale_to_zero_waits_for_the_grace_period_without_a_request():
    scaler = Autoscaler(exact(0, 3, grace=30), now=0, replicas=1)
    now = steady(scaler, 2, 0, 10)  # used a while
    now = steady(scaler, 0, now + 1, 70)  # then idle: the windows see nothing
    assert now - 9 > 30
    quiet = scaler.decide(now, ready=1)
    assert quiet.desired == 0 and "scale to zero" in quiet.reason
    # Idle for less than the grace period: the last replica stays.
    scaler = Autoscaler(exact(0, 3, grace=120), now=0, replicas=1)
    now = steady(scaler, 2, 0, 10)
    now = steady(scaler, 0, now + 1, 70)
    kept = scaler.decide(now, ready=1)
    assert kept.desired == 1 and "idle less than 120s" in kept.reason


def test_a_request_while_at_zero_wakes_one_replica_at_once():
    scaler = Autoscaler(exact(0, 3, grace=30), now=0, replicas=0)
    now = steady(scaler, 0, 0, 100)
    assert scaler.decide(now, ready=0).desired == 0
    woken = scaler.wake(now + 1)
    assert woken.desired == 1
    # The next decision keeps it while the request is recent, whatever the windows say.
    assert scaler.decide(now + 2, ready=0).desired == 1


def test_a_fixed_count_is_never_changed():
    scaler = Autoscaler(exact(2, 2), now=0, replicas=2)
    now = steady(scaler, 1000, 0, 60)
    assert scaler.decide(now, ready=2).desired == 2
