"""Benchmark: `reconciler` against docker compose on the same N containers, in one run.

Both tools get the same N services: the same tiny image (a busybox httpd standing in for a model
server), command, environment, CPU/memory limits, restart policy and a port published on
127.0.0.1. Measured, each as the whole command a user runs (interpreter start included):

* cold apply: `reconciler reconcile` (creates, starts *and* waits for every readiness check)
  vs `docker-compose up -d` (creates and starts);
* no-op: `reconciler plan` vs `docker-compose up -d` with nothing to change (median of 5).

Targets (issue 3): no-op plan at least 4x faster than compose; cold apply no slower.
The peer is Debian's `docker-compose` (v1) or, if present, the `docker compose` plugin.

    python bench/reconcile_vs_compose.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
IMAGE = "reconciler-test/busybox:2"
CPUS, MEMORY = 0.5, "256Mi"
REPEAT = 5

TEMPLATE = f"""\
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: bench-serving
spec:
  scenarioId: bench
  container:
    image: {IMAGE}
    command: [/bin/serve]
    env: {{VERSION: "1"}}
    resourcePlan: bench.plan
    restartPolicy: unless-stopped
    stopTimeout: 2
---
apiVersion: reconciler/v1
kind: ResourcePlan
metadata:
  name: bench.plan
spec: {{cpus: {CPUS}, memory: {MEMORY}}}
---
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: bench-config
spec:
  executableId: bench-serving
  scenarioId: bench
"""


def gitops_root(root: Path, instance: str, n: int) -> None:
    (root / "templates").mkdir(parents=True)
    (root / "manifests").mkdir()
    (root / "templates" / "bench.yaml").write_text(TEMPLATE)
    docs = [
        "apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\n"
        f"spec: {{instance: {instance}}}\n"
    ]
    docs += [
        "apiVersion: reconciler/v1\nkind: Deployment\n"
        f"metadata: {{name: svc-{i:03d}}}\nspec: {{configurationId: bench-config}}\n"
        for i in range(n)
    ]
    (root / "manifests" / "deployments.yaml").write_text("---\n".join(docs))


def compose_file(path: Path, n: int) -> None:
    # JSON is YAML: no extra dependency to write the compose file.
    service = {
        "image": IMAGE,
        "command": ["/bin/serve"],
        "environment": {"VERSION": "1"},
        "ports": ["127.0.0.1::8080"],
        "cpus": CPUS,
        "mem_limit": "256m",
        "memswap_limit": "256m",
        "restart": "unless-stopped",
        "stop_grace_period": "2s",
    }
    services = {f"svc-{i:03d}": service for i in range(n)}
    path.write_text(json.dumps({"version": "2.4", "services": services}, indent=1))


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    sys.exit("no docker compose found: apt-get install docker-compose (the peer of this bench)")


def timed(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return seconds


def remove_label(label: str) -> None:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)


def count_running(label: str) -> int:
    out = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label={label}", "--filter", "status=running"],
        capture_output=True,
        text=True,
    )
    return len(out.stdout.split())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    subprocess.run([PROJECT / "scripts/build-test-image", IMAGE], check=True)
    exe = shutil.which("reconciler") or str(Path(sys.executable).parent / "reconciler")
    compose = compose_command()
    instance = f"bench{uuid.uuid4().hex[:8]}"
    project = f"benchcompose{uuid.uuid4().hex[:8]}"
    ours_label = f"reconciler.instance={instance}"
    theirs_label = f"com.docker.compose.project={project}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        gitops_root(root, instance, n)
        compose_dir = Path(tmp) / "compose"
        compose_dir.mkdir()
        compose_file(compose_dir / "docker-compose.yml", n)
        up = [*compose, "-p", project, "up", "-d"]
        # compose v1 nests its parallel work under one global limit (64 by default) and
        # deadlocks when there are more services than that: give it room.
        compose_env = {**os.environ, "COMPOSE_PARALLEL_LIMIT": str(4 * n + 64)}
        try:
            ours_cold = timed([exe, "reconcile", "--root", str(root), "--lock-timeout", "0"])
            assert count_running(ours_label) == n, "reconcile did not start every container"
            ours_noop = [timed([exe, "plan", "--root", str(root)]) for _ in range(REPEAT)]
            remove_label(ours_label)

            theirs_cold = timed(up, cwd=compose_dir, env=compose_env)
            assert count_running(theirs_label) == n, "compose did not start every container"
            theirs_noop = [timed(up, cwd=compose_dir, env=compose_env) for _ in range(REPEAT)]
        finally:
            remove_label(ours_label)
            subprocess.run(
                [*compose, "-p", project, "down", "-t", "1"], cwd=compose_dir, capture_output=True
            )
    version = subprocess.run([*compose, "version", "--short"], capture_output=True, text=True)
    noop_ours, noop_theirs = statistics.median(ours_noop), statistics.median(theirs_noop)
    noop_ratio = noop_theirs / noop_ours
    cold_ratio = theirs_cold / ours_cold
    print(
        f"{n} deployments vs {n} compose services (peer: {' '.join(compose)} "
        f"{version.stdout.strip()})"
    )
    print(
        f"  no-op:  reconciler plan {noop_ours * 1000:7.0f} ms   compose up -d "
        f"{noop_theirs * 1000:7.0f} ms   compose/reconciler {noop_ratio:5.1f}x   "
        f"target >= 4x: {'OK' if noop_ratio >= 4 else 'MISSED'}"
    )
    print(
        f"  cold:   reconcile       {ours_cold * 1000:7.0f} ms   compose up -d "
        f"{theirs_cold * 1000:7.0f} ms   compose/reconciler {cold_ratio:5.2f}x   "
        f"target >= 1x: {'OK' if cold_ratio >= 1 else 'MISSED'}"
    )
    print("  (reconcile also waits until every container answers its readiness check)")


if __name__ == "__main__":
    main()
