"""Reconcile against the real Docker engine: statuses, replacement, failures, pruning, safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.engine_support import (
    TEST_IMAGE,
    configuration,
    deployment,
    docs,
    http_get,
    settings,
    wait_for,
)

pytestmark = pytest.mark.engine


def test_create_becomes_running_and_serves(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    result = host.reconcile()
    assert "+ create  tiny" in result.out and "+ tiny: RUNNING" in result.out
    status = host.status()["tiny"]
    assert status["status"] == "RUNNING"
    assert status["lastOperation"] == "CREATE"
    assert status["latestRunningConfigurationId"] == "tiny-v1"
    assert status["startTime"] and status["createdAt"] and status["completionTime"] is None
    assert http_get(status["deploymentUrl"] + "/version") == (200, "1\n")
    container = host.container_of("tiny")
    labels = container["Labels"]
    assert labels["reconciler.managed"] == "true"
    assert labels["reconciler.instance"] == host.instance
    assert labels["reconciler.deployment-id"] == status["id"]
    assert labels["reconciler.replica"] == "0"
    assert len(labels["reconciler.config-hash"]) == 64
    assert container["Ports"][0]["IP"] == "127.0.0.1"


def test_second_plan_is_a_no_op_with_detailed_exit_code(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    assert host.cli("plan", "--detailed-exitcode").code == 2
    host.reconcile()
    before = (host.root / "state/snapshot.json").read_bytes()
    result = host.cli("plan", "--detailed-exitcode")
    assert result.code == 0 and "Plan: no changes." in result.out
    assert "converged: nothing to change" in host.reconcile().out
    assert (host.root / "state/snapshot.json").read_bytes() == before  # no-op writes nothing


def test_plan_json_has_a_format_version_and_causes(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    plan = host.plan()
    assert plan["formatVersion"] == 1
    (change,) = plan["changes"]
    assert change["action"] == "create" and change["symbol"] == "+"
    assert change["name"] == "tiny" and change["cause"] == "new deployment"
    assert change["deploymentId"].startswith("d")


def test_config_change_replaces_start_first_with_no_gap(host):
    """The old container serves until the new one is ready; there is never a moment with
    neither serving, and the old URL never fails before the new one answers."""
    host.write(
        docs(
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2", readyDelay="2"),
            deployment("tiny", "tiny-v1"),
        )
    )
    host.reconcile()
    old_url = host.status()["tiny"]["deploymentUrl"]
    old_id = host.container_of("tiny")["Id"]
    host.write(
        docs(
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2", readyDelay="2"),
            deployment("tiny", "tiny-v2"),
        )
    )
    plan = host.plan()
    assert plan["changes"][0]["action"] == "replace"
    assert plan["changes"][0]["cause"] == (
        "config changed: env.READY_DELAY, env.VERSION (configuration tiny-v1 → tiny-v2)"
    )
    samples: list[tuple[float, str, bool, str]] = []
    done = threading.Event()

    def hammer() -> None:
        new_url = None
        while not done.is_set():
            now = time.monotonic()
            try:
                code, body = http_get(old_url + "/version", timeout=1)
                samples.append((now, "old", code == 200, body))
            except OSError as exc:
                samples.append((now, "old", False, str(exc)))
            if new_url is None:
                fresh = [c for c in host.containers(all=False) if c["Id"] != old_id and c["Ports"]]
                if fresh:
                    new_url = f"http://127.0.0.1:{fresh[0]['Ports'][0]['PublicPort']}"
            if new_url:
                try:
                    code, body = http_get(new_url + "/version", timeout=1)
                    samples.append((now, "new", code == 200, body))
                except OSError as exc:
                    samples.append((now, "new", False, str(exc)))
            time.sleep(0.02)  # the sampling pace (nothing is waited for)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        result = host.reconcile()
    finally:
        done.set()
        thread.join()
    assert "-/+ tiny: RUNNING" in result.out
    first_new = min(t for t, who, ok, _ in samples if who == "new" and ok)
    old_before = [(ok, body) for t, who, ok, body in samples if who == "old" and t < first_new]
    # Sampled every 20 ms or so through the new container's 2 s readiness delay; how many
    # samples depends on the machine's load, a few at least.
    assert len(old_before) >= 5, "the switch window was not observed"
    assert all(ok and body == "1\n" for ok, body in old_before), old_before
    assert {body for t, who, ok, body in samples if who == "new" and ok} == {"2\n"}
    status = host.status()["tiny"]
    assert status["status"] == "RUNNING" and status["lastOperation"] == "UPDATE"
    assert status["latestRunningConfigurationId"] == "tiny-v2"
    assert http_get(status["deploymentUrl"] + "/version") == (200, "2\n")
    assert len(host.containers()) == 1


def test_failed_update_keeps_the_old_configuration_serving(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    url = host.status()["tiny"]["deploymentUrl"]
    host.write(
        docs(
            configuration("tiny-v1"),
            configuration("tiny-bad", image="reconciler-test/not-built:1"),
            deployment("tiny", "tiny-bad"),
        )
    )
    result = host.reconcile(ok=False)
    assert result.code == 1
    status = host.status()["tiny"]
    assert status["status"] == "RUNNING"
    assert status["configurationId"] == "tiny-bad"
    assert status["latestRunningConfigurationId"] == "tiny-v1"
    assert "update to configuration tiny-bad failed" in status["statusMessage"]
    assert "keeps serving" in status["statusMessage"]
    assert status["deploymentUrl"] == url and http_get(url + "/version")[0] == 200
    # The failed configuration is not retried in a loop: the next plan changes nothing.
    plan = host.plan()
    assert plan["changes"] == []
    assert any("update to configuration tiny-bad failed" in w for w in plan["warnings"])


def test_target_status_stopped_removes_the_container_and_cannot_restart(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    host.write(
        docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1", "  targetStatus: STOPPED\n"))
    )
    result = host.reconcile()
    assert "- stop    tiny" in result.out
    status = host.status()["tiny"]
    assert status["status"] == "STOPPED" and status["targetStatus"] == "STOPPED"
    assert status["completionTime"] and status["deploymentUrl"] is None
    assert host.containers() == []
    # Upstream: a STOPPED deployment cannot be restarted.
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    result = host.cli("reconcile")
    assert result.code == 1
    assert "deployment tiny is STOPPED and cannot be restarted" in result.err
    assert result.err.startswith("manifests/app.yaml:")
    assert host.containers() == []


def test_a_deployment_declared_stopped_can_be_started_later(host):
    host.write(
        docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1", "  targetStatus: STOPPED\n"))
    )
    host.reconcile()
    assert host.status()["tiny"]["status"] == "STOPPED" and host.containers() == []
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    assert host.status()["tiny"]["status"] == "RUNNING"


def test_crash_is_dead_with_the_reason_and_redacted_logs(host):
    host.write(
        docs(configuration("crash-config", crash="yes"), deployment("crash", "crash-config"))
    )
    result = host.reconcile(ok=False)
    assert result.code == 1 and "not converged" in result.err
    status = host.status()["crash"]
    assert status["status"] == "DEAD"
    # "exited with code 3 while starting", or, caught after Docker restarted it once,
    # "exited while starting and keeps restarting (1 restarts)".
    assert "container exited" in status["statusMessage"]
    assert "while starting" in status["statusMessage"]
    assert "error: no model in /mnt/models" in status["statusMessage"]
    assert status["completionTime"]
    assert host.containers() == []  # nothing left behind
    logs = host.cli("logs", "crash")
    assert logs.code == 0 and "error: no model in /mnt/models" in logs.out
    assert "tok-0123456789-secret" not in logs.out and "token is ***" in logs.out
    assert "tok-0123456789-secret" not in (host.root / "state/snapshot.json").read_text()
    # DEAD is not retried until the configuration changes...
    assert host.cli("plan", "--detailed-exitcode").code == 0
    # ...and a new configuration within 7 days brings it back.
    host.write(
        docs(
            configuration("crash-config", crash="yes"),
            configuration("tiny-v1"),
            deployment("crash", "tiny-v1"),
        )
    )
    assert "new configuration tiny-v1 for a DEAD deployment" in host.plan()["changes"][0]["cause"]
    host.reconcile()
    assert host.status()["crash"]["status"] == "RUNNING"


def test_dead_for_more_than_seven_days_cannot_take_a_new_configuration(host):
    host.write(
        docs(configuration("crash-config", crash="yes"), deployment("crash", "crash-config"))
    )
    host.reconcile(ok=False)
    eight_days_ago = (datetime.now(UTC) - timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    host.edit_record("crash", deadSince=eight_days_ago)
    host.write(
        docs(
            configuration("crash-config", crash="yes"),
            configuration("tiny-v1"),
            deployment("crash", "tiny-v1"),
        )
    )
    result = host.cli("reconcile")
    assert result.code == 1
    assert "DEAD deployment can get a new configuration within 7 days only" in result.err


def test_missing_image_is_dead_and_leaves_nothing(host):
    host.write(
        docs(configuration("gone", image="reconciler-test/not-built:3"), deployment("gone", "gone"))
    )
    host.reconcile(ok=False)
    status = host.status()["gone"]
    assert status["status"] == "DEAD"
    assert (
        "image reconciler-test/not-built:3 is not on this host and could not be pulled"
        in status["statusMessage"]
    )
    assert host.containers() == []


def test_gpu_request_on_a_host_without_gpus_is_dead_with_dockers_reason(host, docker_client):
    host.write(
        docs(
            configuration("gpu-config", plan="infer.s"),
            deployment("gpu-dep", "gpu-config"),
        )
    )
    assert host.cli("render", "gpu-dep", "--json").out.count('"gpus": 1') == 1
    host.reconcile(ok=False)
    status = host.status()["gpu-dep"]
    assert status["status"] == "DEAD"
    assert 'could not select device driver "" with capabilities: [[gpu]]' in status["statusMessage"]
    assert host.containers() == []  # the created container was removed


def test_gpu_inventory_assigns_distinct_devices(host):
    """With a declared inventory, two GPU deployments get different device ids, kept in the
    state; a third one finds no free GPU. (On this GPU-less host all end DEAD, but the
    assignment is what the plan shows and the containers would receive.)"""
    host.write(settings(host.instance, '  gpus: ["0", "1"]\n'), "manifests/settings.yaml")
    host.write(
        docs(
            configuration("gpu-config", plan="infer.s"),
            deployment("gpu-a", "gpu-config"),
            deployment("gpu-b", "gpu-config"),
            deployment("gpu-c", "gpu-config"),
        )
    )
    changes = {c["name"]: c for c in host.plan()["changes"]}
    assert changes["gpu-a"]["gpus"] == ["0"] and changes["gpu-b"]["gpus"] == ["1"]
    assert changes["gpu-c"]["failure"].startswith(
        "not enough free GPUs: needs 1, 0 of the inventory (0, 1) free"
    )
    host.reconcile(ok=False)
    assert "not enough free GPUs" in host.status()["gpu-c"]["statusMessage"]


def test_removed_manifest_is_pruned_visibly(host):
    host.write(
        docs(configuration("tiny-v1"), deployment("keep", "tiny-v1"), deployment("drop", "tiny-v1"))
    )
    host.reconcile()
    host.write(docs(configuration("tiny-v1"), deployment("keep", "tiny-v1")))
    plan = host.plan()
    assert [(c["action"], c["name"], c["cause"]) for c in plan["changes"]] == [
        ("delete", "drop", "removed from manifests")
    ]
    result = host.reconcile()
    assert "-   delete  drop" in result.out.replace("  - delete", "-   delete")
    assert [c["Labels"]["reconciler.deployment-name"] for c in host.containers()] == ["keep"]
    assert set(host.status()) == {"keep"}


def test_an_empty_desired_set_never_prunes_without_the_flag(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    host.write(configuration("tiny-v1"))
    result = host.cli("reconcile")
    assert result.code == 1 and "--allow-empty" in result.err
    assert len(host.containers()) == 1
    host.reconcile("--allow-empty")
    assert host.containers() == []


def test_broken_manifests_change_nothing(host):
    host.write(
        docs(
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2"),
            deployment("tiny", "tiny-v1"),
        )
    )
    host.reconcile()
    before_containers = [(c["Id"], c["State"]) for c in host.containers()]
    before_state = (host.root / "state/snapshot.json").read_bytes()
    host.write(
        docs(
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2"),
            deployment("tiny", "tiny-v2"),
        )
    )
    (host.root / "manifests/broken.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: [\n"
    )
    result = host.cli("reconcile")
    assert result.code == 1
    assert "manifests/broken.yaml" in result.err and "nothing was changed" in result.err
    assert [(c["Id"], c["State"]) for c in host.containers()] == before_containers
    assert (host.root / "state/snapshot.json").read_bytes() == before_state


def test_foreign_containers_survive_everything(host, docker_client):
    foreign = docker_client.create_container(TEST_IMAGE, name=f"foreign-{host.instance}")
    fake = docker_client.create_container(
        TEST_IMAGE,
        name=f"other-instance-{host.instance}",
        labels={
            "reconciler.managed": "true",
            "reconciler.instance": "someone-else",
            "reconciler.deployment-id": "d000000000000000",
        },
    )
    try:
        for c in (foreign, fake):
            docker_client.start(c["Id"])
        host.write(
            docs(
                configuration("tiny-v1"),
                configuration("tiny-v2", version="2"),
                deployment("tiny", "tiny-v1"),
            )
        )
        host.reconcile()
        host.write(
            docs(
                configuration("tiny-v1"),
                configuration("tiny-v2", version="2"),
                deployment("tiny", "tiny-v2"),
            )
        )
        host.reconcile()
        host.write(configuration("tiny-v1"))
        host.reconcile("--allow-empty")
        for c in (foreign, fake):
            assert docker_client.inspect_container(c["Id"])["State"]["Running"]
    finally:
        for c in (foreign, fake):
            docker_client.remove_container(c["Id"], force=True)


def test_two_instances_side_by_side(make_hosts):
    a, b = make_hosts("a"), make_hosts("b")
    for h in (a, b):
        h.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
        h.reconcile()
    assert a.status()["tiny"]["id"] != b.status()["tiny"]["id"]
    a.write(configuration("tiny-v1"))
    a.reconcile("--allow-empty")
    assert a.containers() == []
    assert len(b.containers()) == 1 and b.status()["tiny"]["status"] == "RUNNING"


def test_two_roots_claiming_one_instance_are_refused(make_hosts):
    a, b = make_hosts("a"), make_hosts("b")
    b.write(settings(a.instance), "manifests/settings.yaml")
    for h in (a, b):
        h.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    a.reconcile()
    result = b.cli("reconcile")
    assert result.code == 1
    assert (
        f"instance {a.instance!r} is also used by the GitOps root {a.root.resolve()}" in result.err
    )
    assert len(a.containers()) == 1


def test_drift_is_reported_and_restored(host, docker_client):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    docker_client.remove_container(host.container_of("tiny")["Id"], force=True)
    status = host.status()["tiny"]
    assert status["status"] == "PENDING"
    assert (
        status["statusMessage"]
        == "container removed outside the reconciler; the next reconcile restores it"
    )
    assert host.plan()["changes"][0]["cause"] == "container removed outside the reconciler"
    host.reconcile()
    assert host.status()["tiny"]["status"] == "RUNNING"
    docker_client.stop(host.container_of("tiny")["Id"], timeout=1)
    # A second restore so soon backs off (1 s after the first): the plan shows it when due.
    change = wait_for(lambda: host.plan()["changes"], what="the restore to be due")[0]
    assert change["action"] == "replace"
    assert (
        change["cause"].startswith("container exited with code")
        and "outside the reconciler" in change["cause"]
    )
    host.reconcile()
    assert host.status()["tiny"]["status"] == "RUNNING"
    assert len(host.containers()) == 1


def test_resources_are_updated_in_place(host, docker_client):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    before = host.container_of("tiny")["Id"]
    host.write(docs(configuration("tiny-v1", plan="tiny.plan"), deployment("tiny", "tiny-v1")))
    change = host.plan()["changes"][0]
    assert change["action"] == "update" and change["symbol"] == "~"
    assert change["cause"] == "resources changed: cpus 1.0 → 0.5, memory 3Gi → 0.5Gi"
    host.reconcile()
    assert host.container_of("tiny")["Id"] == before
    config = docker_client.inspect_container(before)["HostConfig"]
    assert config["Memory"] == 512 * 1024**2 and config["CpuQuota"] == 50_000
    assert host.cli("plan", "--detailed-exitcode").code == 0


def test_replicas_scale_up_and_down(host):
    host.write(docs(configuration("tiny-v1", replicas="2"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    assert sorted(c["Labels"]["reconciler.replica"] for c in host.containers()) == ["0", "1"]
    host.write(docs(configuration("tiny-v1", replicas="1"), deployment("tiny", "tiny-v1")))
    change = host.plan()["changes"][0]
    assert (change["action"], change["cause"]) == ("update", "replicas 2 → 1")
    host.reconcile()
    assert [c["Labels"]["reconciler.replica"] for c in host.containers()] == ["0"]


def test_ttl_expiry_stops_and_deletes(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1", "  ttl: 10m\n")))
    host.reconcile()
    eleven_minutes_ago = (datetime.now(UTC) - timedelta(minutes=11)).strftime("%Y-%m-%dT%H:%M:%SZ")
    host.edit_record("tiny", createdAt=eleven_minutes_ago)
    change = host.plan()["changes"][0]
    assert (change["action"], change["cause"]) == ("delete", "ttl 10m expired")
    host.reconcile()
    assert host.containers() == []
    status = host.status()["tiny"]
    assert status["status"] == "STOPPED" and status["lastOperation"] == "DELETE"
    assert status["statusMessage"] == "deleted: ttl 10m expired"
    plan = host.plan()
    assert plan["changes"] == [] and "deleted when its ttl (10m) expired" in plan["warnings"][0]


def test_a_new_configuration_must_keep_the_executable_and_scenario(host):
    other = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: other-serving
spec:
  scenarioId: other
  container:
    image: reconciler-test/busybox:2
"""
    (host.root / "templates/other.yaml").write_text(other)
    switch = """
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: other-config
spec:
  executableId: other-serving
  scenarioId: other
"""
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    host.write(docs(configuration("tiny-v1"), switch, deployment("tiny", "other-config")))
    result = host.cli("plan")
    assert result.code == 1
    assert "runs executable tiny-serving of scenario tiny" in result.err
    assert (
        "configuration other-config uses executable other-serving of scenario other" in result.err
    )


def test_state_snapshot_is_deterministic_and_has_no_secret(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    text = (host.root / "state/snapshot.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert data["formatVersion"] == 1 and data["instance"] == host.instance
    assert "tok-0123456789-secret" not in text
    (entry,) = data["history"]
    assert entry["result"] == "converged" and entry["changes"] == [
        f"+ tiny ({host.status()['tiny']['id']}): new deployment"
    ]
    assert not list((host.root / "state").glob(".snapshot.json.*"))  # no temp file left


def test_git_revision_is_recorded_on_containers_and_state(host):
    subprocess.run(["git", "init", "-q", str(host.root)], check=True)
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    git = ["git", "-C", str(host.root), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "deploy tiny"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    host.reconcile()
    assert host.container_of("tiny")["Labels"]["reconciler.revision"] == head
    assert host.snapshot()["revision"] == head


def test_logs_tail_and_since(host):
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    wait_for(lambda: "serving version 1" in host.cli("logs", "tiny").out, what="log line")
    everything = host.cli("logs", "tiny").out.splitlines()
    assert everything[0] == "model server version 1 starting"
    assert host.cli("logs", "tiny", "--tail", "1").out.splitlines() == everything[-1:]
    assert host.cli("logs", "tiny", "--since", "1h").out.splitlines() == everything
    stamped = host.cli("logs", "tiny", "--timestamps").out.splitlines()
    assert stamped[0].endswith("model server version 1 starting") and stamped[0][:4].isdigit()
    bad = host.cli("logs", "tiny", "--since", "yesterday")
    assert bad.code == 1 and "--since 'yesterday'" in bad.err


def test_a_second_reconcile_waits_then_fails_clearly(host):
    from reconciler.core.record import instance_lock

    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    with instance_lock(host.root):
        started = time.monotonic()
        result = host.cli("reconcile", "--lock-timeout", "1")
        waited = time.monotonic() - started
    assert result.code == 1 and waited >= 1
    assert "another reconcile is running on" in result.err and f"pid {os.getpid()}" in result.err
    assert host.containers() == []


def test_kill_9_mid_apply_then_a_second_run_converges(host):
    """A reconcile killed while waiting for readiness leaves containers and a PENDING record;
    the next run finishes the job with no duplicate and no orphan."""
    names = [f"tiny-{i}" for i in range(4)]
    host.write(docs(configuration("slow", readyDelay="3"), *(deployment(n, "slow") for n in names)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "reconcile", "--root", str(host.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(host.containers()) >= 2, what="containers being created")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {s["status"] for s in host.status().values()} & {"PENDING", "UNKNOWN"}
    host.reconcile()
    containers = host.containers()
    by_name = sorted(c["Labels"]["reconciler.deployment-name"] for c in containers)
    assert by_name == names  # exactly one container each: no duplicate, no orphan
    assert all(c["State"] == "running" for c in containers)
    assert {s["status"] for s in host.status().values()} == {"RUNNING"}
    assert host.cli("plan", "--detailed-exitcode").code == 0


def test_kill_9_during_a_replacement_then_a_second_run_converges(host):
    host.write(
        docs(
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2", readyDelay="3"),
            deployment("tiny", "tiny-v1"),
        )
    )
    host.reconcile()
    host.write(
        docs(
            configuration("tiny-v1"),
            configuration("tiny-v2", version="2", readyDelay="3"),
            deployment("tiny", "tiny-v2"),
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "reconcile", "--root", str(host.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(host.containers()) == 2, what="the new container")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    host.reconcile()
    (container,) = host.containers()
    assert container["Labels"]["reconciler.configuration-id"] == "tiny-v2"
    status = host.status()["tiny"]
    assert status["status"] == "RUNNING" and status["latestRunningConfigurationId"] == "tiny-v2"
    assert http_get(status["deploymentUrl"] + "/version") == (200, "2\n")
