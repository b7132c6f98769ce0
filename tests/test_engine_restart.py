"""An engine restart, on a private `dockerd` of this test (never the host's): the containers
come back `health: starting`; `status` must not call the deployment RUNNING until the restarted
replica's health check passes, and must call it RUNNING by itself (no reconcile) once it does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import (
    TEST_IMAGE,
    TINY_TEMPLATE,
    configuration,
    deployment,
    docs,
    make_root,
)

pytestmark = pytest.mark.engine

PROBE = "    readinessProbe: {periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2}\n"
READY_DELAY = 4  # seconds the restarted "model server" takes before it answers


class PrivateEngine:
    """A dockerd with its own socket, data, exec root, containerd and bridge."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rtest-", dir="/tmp"))
        self.sock = self.dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.bridge = f"br-rt{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "dockerd.log"
        # The host's /etc/docker/daemon.json sets data-root and storage-driver: a config file of
        # our own, or dockerd refuses the flags.
        (self.dir / "daemon.json").write_text("{}")
        self.bridge_made = False

    def make_bridge(self) -> None:
        # A bridge of our own: docker0 belongs to the host's engine.
        net = f"172.31.{250 + int(self.bridge[-2:], 16) % 5}.1/24"
        for cmd in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", net, "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
            self.bridge_made = True

    def docker(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.host, *args], capture_output=True, text=True, **kw
        )

    def start(self) -> None:
        args = [
            "dockerd",
            "--config-file", str(self.dir / "daemon.json"),
            "--host", self.host,
            "--data-root", str(self.dir / "data"),
            "--exec-root", str(self.dir / "exec"),
            "--pidfile", str(self.dir / "docker.pid"),
            "--storage-driver", "vfs",
            "--bridge", self.bridge,
            "--iptables=false",
            "--ip6tables=false",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while self.docker("info").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"private dockerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=60)
        self.stop()
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.dir))
        ]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        if self.bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def engine():
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.skip("dockerd (and the docker CLI) are not installed: no private engine")
    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root")
    e = PrivateEngine()
    try:
        e.make_bridge()
        e.start()
        yield e
    finally:
        e.close()


def reconciler(root: Path, engine: PrivateEngine, *args: str, timeout: float = 90) -> Any:
    env = {**os.environ, "DOCKER_HOST": engine.host}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def status(root: Path, engine: PrivateEngine) -> dict[str, Any]:
    proc = reconciler(root, engine, "status", "--json", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (dep,) = json.loads(proc.stdout)["deployments"]
    return dep


def test_status_is_truthful_after_an_engine_restart(engine: PrivateEngine, tmp_path: Path):
    load = subprocess.run(
        f"docker save {TEST_IMAGE} | docker -H {engine.host} load",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert load.returncode == 0, load.stderr

    root, _instance = make_root(tmp_path)
    template = TINY_TEMPLATE.replace("    startupTimeout: 30\n", "    startupTimeout: 30\n" + PROBE)
    assert PROBE in template
    (root / "templates/tiny.yaml").write_text(template)
    (root / "manifests/app.yaml").write_text(
        docs(configuration("tiny-v1", readyDelay=str(READY_DELAY)), deployment("tiny", "tiny-v1"))
    )
    done = reconciler(root, engine, "reconcile")
    assert done.returncode == 0, done.stdout + done.stderr
    before = status(root, engine)
    assert before["status"] == "RUNNING", before
    (cid,) = engine.docker("ps", "-q").stdout.split()
    policy = engine.docker("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", cid).stdout
    assert policy.strip() in ("always", "unless-stopped"), policy

    engine.stop()
    down = reconciler(root, engine, "status", "--json", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    (dep,) = json.loads(down.stdout)["deployments"]
    assert dep["status"] == "UNKNOWN", dep
    assert "engine unreachable" in dep["statusMessage"], dep

    engine.start()
    back = time.monotonic()
    seen: list[tuple[float, str, str, str]] = []
    deadline = back + 60
    while time.monotonic() < deadline:
        health = engine.docker(
            "inspect", "-f", "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}",
            cid,
        ).stdout.strip()  # fmt: skip
        dep = status(root, engine)
        health_after = engine.docker(
            "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", cid
        ).stdout.strip()
        seen.append(
            (
                round(time.monotonic() - back, 1),
                health,
                dep["status"],
                dep.get("statusMessage") or "",
            )
        )
        # Never RUNNING while the container is not healthy (before and after the status call).
        if not (health.endswith("/healthy") or health_after == "healthy"):
            assert dep["status"] != "RUNNING", seen
        if dep["status"] == "RUNNING":
            break
        time.sleep(0.3)
    print("after engine restart:", *seen, sep="\n  ")
    assert seen[-1][2] == "RUNNING", seen
    # Before the container answered, the status said so.
    pending = [s for s in seen if s[2] != "RUNNING"]
    assert pending, f"no poll caught the restarted replica unready: {seen}"
    for _t, _h, st, msg in pending:
        assert st == "PENDING" and msg.startswith("no replica ready:"), seen
    assert seen[-1][0] < READY_DELAY + 20, seen
