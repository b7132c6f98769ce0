"""The Docker backend's reading of Docker's JSON, and its choice of endpoints: no engine.

The shapes are Docker's own (a container summary from /containers/json, an event from
/events, an inspect document), trimmed to what the backend reads.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.backends.docker.backend import DockerBackend
from reconciler.backends.docker.engine import Engine
from reconciler.backends.docker.parse import (
    NO_PROBE_TOOL,
    image_ids,
    parse_event,
    parse_health,
    parse_inspect,
    parse_summary,
    since_argument,
    uptime_seconds,
)

SUMMARY = {
    "Id": "c" * 64,
    "Names": ["/inst_default_tiny_0_0123abcd"],
    "Image": "reconciler-test/busybox:2",
    "Created": 1_700_000_000,
    "State": "exited",
    "Status": "Exited (3) 5 seconds ago",
    "Labels": {
        "reconciler.managed": "true",
        "reconciler.instance": "inst",
        "reconciler.deployment-id": "d0123456789abcde",
        "reconciler.deployment-name": "tiny",
        "reconciler.resource-group": "default",
        "reconciler.configuration-id": "tiny-v1",
        "reconciler.replica": "1",
        "reconciler.config-hash": "0123abcd" * 8,
        "reconciler.hash-version": "2",
        "reconciler.fields": '{"image":"abc"}',
        "reconciler.resources": "not json",
        "reconciler.gpus": "0,1",
        "reconciler.port": "9000",
    },
    "Ports": [
        {"PrivatePort": 9000, "Type": "tcp"},
        {"IP": "127.0.0.1", "PrivatePort": 9000, "PublicPort": 32768, "Type": "tcp"},
    ],
    "NetworkSettings": {
        "Networks": {"bridge": {"IPAddress": "172.17.0.5", "Gateway": "172.17.0.1"}}
    },
}


def test_a_summary_becomes_a_neutral_replica() -> None:
    r = parse_summary(SUMMARY)
    assert (r.name, r.deployment_name, r.replica, r.configuration_id) == (
        "inst_default_tiny_0_0123abcd",
        "tiny",
        1,
        "tiny-v1",
    )
    assert r.state == "exited" and r.exit_code == 3 and r.describe_state() == "exited with code 3"
    assert (r.host_ip, r.host_port, r.container_port) == ("127.0.0.1", 32768, 9000)
    assert (r.container_ip, r.network_gateway) == ("172.17.0.5", "172.17.0.1")
    assert r.gpus == ("0", "1") and dict(r.fields) == {"image": "abc"}
    assert dict(r.resources) == {}  # unreadable label: nothing, not a crash
    assert r.image == "reconciler-test/busybox:2" and r.node == ""


def test_a_restarting_container_reads_its_last_exit_code() -> None:
    r = parse_summary({**SUMMARY, "State": "restarting", "Status": "Restarting (137) 1 second ago"})
    assert r.state == "restarting" and r.exit_code == 137
    up = parse_summary({**SUMMARY, "State": "running", "Status": "Up 3 minutes"})
    assert up.exit_code is None and up.running


def test_images_are_known_by_normalized_tag_and_digest() -> None:
    ids = image_ids(
        [
            {"Id": "sha256:1", "RepoTags": ["busybox:latest"], "RepoDigests": ["busybox@sha256:9"]},
            {"Id": "sha256:2", "RepoTags": ["<none>:<none>"], "RepoDigests": None},
        ]
    )
    assert ids == {"busybox:latest": "sha256:1", "busybox@sha256:9": "sha256:1"}


def test_an_event_says_whose_replica_and_whether_the_backend_caused_it() -> None:
    raw = {
        "Action": "die",
        "Actor": {
            "ID": "c" * 64,
            "Attributes": {"reconciler.instance": "inst", "reconciler.deployment-name": "tiny"},
        },
        "timeNano": 1_700_000_000_123_456_789,
    }
    event = parse_event(raw, caused=lambda cid: False)
    assert (event.action, event.instance, event.name, event.own) == ("die", "inst", "tiny", False)
    assert event.time_ns == 1_700_000_000_123_456_789
    assert parse_event(raw, caused=lambda cid: cid == "c" * 64).own
    assert since_argument(1_700_000_000_000_000_001) == "1700000000.000000001"


def test_inspect_tells_a_probe_what_it_needs() -> None:
    info = {
        "State": {"Status": "running", "Restarting": False, "OOMKilled": False, "ExitCode": 0},
        "RestartCount": 0,
        "NetworkSettings": {
            "IPAddress": "172.17.0.5",
            "Ports": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32769"}]},
        },
    }
    seen = parse_inspect(info, 8080)
    assert seen.status == "running" and seen.published == ("127.0.0.1", 32769)
    assert seen.address == "172.17.0.5" and not seen.oom_killed
    assert parse_inspect(info, 9000).published is None


def test_endpoints_are_published_ports_on_a_remote_engine() -> None:
    remote = DockerBackend(Engine("tcp://203.0.113.7:2376", {}, 1.0))
    r = replace(parse_summary(SUMMARY), state="running", host_ip="0.0.0.0")
    stopped = replace(r, id="d" * 64, state="exited")
    assert remote.endpoints([r, stopped], "127.0.0.1") == {r.id: "127.0.0.1:32768"}


def test_the_status_texts_health_verdict_becomes_the_replicas_health() -> None:
    running = {**SUMMARY, "State": "running"}
    seen = {
        text: parse_summary({**running, "Status": text}).health
        for text in (
            "Up 5 minutes (healthy)",
            "Up 1 minute (unhealthy)",
            "Up 2 seconds (health: starting)",
            "Up 5 minutes",
        )
    }
    assert list(seen.values()) == ["ready", "unready", "starting", ""]


def test_an_unhealthy_replica_carries_its_last_checks_output() -> None:
    r = parse_summary({**SUMMARY, "State": "running", "Status": "Up 1 minute (unhealthy)"})

    def health(output: str) -> dict[str, object]:
        log = [{"ExitCode": 1, "Output": "old"}, {"ExitCode": 1, "Output": output}]
        return {"State": {"Health": {"Status": "unhealthy", "Log": log}}}

    failed = parse_health(health("wget: download timed out\n"), r)
    assert (failed.health, failed.health_detail) == ("unready", "wget: download timed out")
    # A check that cannot probe at all is no check: the model server is not known unready.
    no_tool = parse_health(health(f"{NO_PROBE_TOOL} (curl, wget, python3 or nc) in the image"), r)
    assert no_tool.health == "" and NO_PROBE_TOOL in no_tool.health_detail
    shell = 'OCI runtime exec failed: exec: "/bin/sh": stat /bin/sh: no such file or directory'
    assert parse_health(health(shell), r).health == ""
    assert parse_health({}, r).health_detail == "the health check failed"


def _check(start: str, end: str, code: int) -> dict[str, object]:
    return {"Start": start, "End": end, "ExitCode": code, "Output": "" if code == 0 else "down"}


def test_an_unhealthy_replica_carries_how_long_its_checks_have_failed() -> None:
    r = parse_summary({**SUMMARY, "State": "running", "Status": "Up 1 minute (unhealthy)"})
    log = [
        _check("2030-01-01T12:00:00.1Z", "2030-01-01T12:00:00.2Z", 0),
        # The streak starts here; times as Docker writes them (nanoseconds, an offset).
        _check("2030-01-01T13:00:10.500000000+01:00", "2030-01-01T12:00:11.6Z", 1),
        _check("2030-01-01T12:00:21.5Z", "2030-01-01T12:00:22.6Z", -1),
        _check("2030-01-01T12:00:32.5Z", "2030-01-01T12:00:33.750000001Z", 1),
    ]
    interval = {"Config": {"Healthcheck": {"Interval": 10 * 10**9}}}
    health = {"Status": "unhealthy", "FailingStreak": 3, "Log": log}
    # From the start of the streak's first check to the end of its last: 23.25 s (> 2 × 10 s).
    seen = parse_health({"State": {"Health": health}, **interval}, r)
    assert seen.unready_seconds == pytest.approx(23.25)
    # Docker keeps five checks: a longer streak lasted at least its length in intervals.
    long = {**health, "FailingStreak": 40, "Log": log[1:]}
    assert parse_health({"State": {"Health": long}, **interval}, r).unready_seconds == 390
    # Nothing to count from: unknown, not zero.
    assert (
        parse_health({"State": {"Health": {"Log": [{"Output": "x"}]}}}, r).unready_seconds is None
    )


@pytest.mark.parametrize(
    ("status", "seconds"),
    [
        ("Up 5 seconds (health: starting)", 5.0),
        ("Up Less than a second", 0.0),
        ("Up 1 second", 1.0),
        ("Up About a minute (healthy)", 60.0),
        ("Up 3 minutes (unhealthy)", 180.0),
        ("Up About an hour", 3600.0),
        ("Up 2 days (Paused)", 172800.0),
        ("Exited (1) 2 seconds ago", None),
        ("Restarting (137) 1 second ago", None),
        ("Created", None),
    ],
)
def test_how_long_a_container_is_up_comes_from_dockers_words(status, seconds):
    assert uptime_seconds(status) == seconds
    summary = {"Id": "c1", "Names": ["/c1"], "State": "running", "Status": status}
    started = parse_summary(summary, now=1_000_000.0).started
    assert started == (None if seconds is None else 1_000_000.0 - seconds)
