"""Benchmark: the reconciler's Swarm backend against `docker stack deploy` on the same 3-node
Swarm (scripts/swarm-testbed), in one run.

Both get N deployments / stack services of 2 replicas each, the same in every respect the
scheduler and the nodes see: the tiny image (reconciler-test/busybox:2, a busybox httpd standing
in for a model server) named by its id, command, environment, health check (the reconciler's
readiness probe), CPU and memory limits and reservations, restart policy, update and rollback
order, host-mode ports on a port Swarm picks, DNS round robin, the nodes' bridge network. The
compose file is written from the service spec the reconciler itself made for a warm-up
deployment, so the two cannot drift apart. Measured, each as the whole command a user runs
(interpreter start included):

1. cold converge: `reconciler reconcile` of N deployments (it returns once every replica
   passed its health check: Swarm reports a task `running` only then) against `docker stack
   deploy` plus the time until the tasks API shows all 2N tasks running (polled every 0.2 s).
   The image is on every node before either: the warm-up converge of one deployment copies it
   (the backend's save/load), so neither pays for the copy. Everything is removed between the
   two, and the stack goes first. `--parallel` passes reconcile's own option.
2. no-op: `reconciler plan` on the converged root against `docker stack deploy` of the
   unchanged compose file (median of --repeat each). `reconciler validate` of the same root is
   printed beside it: the part of a plan that needs no engine (start, load, render).
3. a rolling update of one deployment (its environment: VERSION 1 -> 2, start-first) under
   continuous load through `reconciler serve --no-auth` (Settings apiUrl): requests and
   failures while `reconcile` runs. No peer: a stack service has no stable URL on this testbed
   (the routing mesh needs IPVS).
4. a worker lost: `swarm-testbed kill-node` of the worker carrying the most replicas. From the
   same moment, three watchers: `reconciler status --json` until every deployment it carried is
   RUNNING with all its replicas ready on live nodes; the tasks API until all tasks of those
   services run on the other nodes (Swarm's own rescheduling); and what `docker service ls`
   counts meanwhile (the API's ServiceStatus: it counts every task last reported running, so
   the lost node's tasks too). Requests through the gateway to one of those deployments are
   counted meanwhile. Then `start-node` boots it again.

Targets: a no-op plan at least 4x faster than a no-op stack deploy; no request failed during
the rolling update. Nothing asserts on time: the numbers are printed, every ratio as docker
stack's time over the reconciler's.

Every reconciler command runs with Python's bytecode cached (PYTHONPYCACHEPREFIX in the run's
temporary folder, filled by the warm-up), as an installed package has it, even where the caller
sets PYTHONDONTWRITEBYTECODE: without it each command compiles the package's modules again.

The testbed is brought up by this script (after any test run that uses it has ended: only one
can exist per host) and down at the end, also on failure. It needs what the testbed needs (root,
network namespaces) and the docker CLI's `stack` command. A run takes about 1.5 minutes.

    .venv/bin/python bench/swarm_vs_stack.py [--deployments 20] [--repeat 5] [--parallel N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
TESTBED = PROJECT / "scripts" / "swarm-testbed"
TESTBED_DIR = Path(os.environ.get("SWARM_TESTBED_DIR", "/tmp/reconciler-swarm"))
TESTS_USING_TESTBED = "pytest.*test_swarm"  # pgrep -f pattern of a test run on the testbed
IMAGE = "reconciler-test/busybox:2"
STACK = "benchstack"
STACK_LABEL = f"com.docker.stack.namespace={STACK}"
REPLICAS = 2
CPUS, MEMORY = 0.05, "32Mi"  # 40 replicas reserve 2 of the testbed's 3 x 2 CPUs
TARGET_NOOP = 4.0
POLL = 0.2
DEADLINE = 180.0  # for anything to converge, be removed or recover
# The docker CLI against the testbed's manager, never a caller's DOCKER_HOST or context.
CLI_ENV = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}

TEMPLATE = """\
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: bench-serving
spec:
  scenarioId: bench
  inputs:
    parameters:
      - {name: version, default: "1"}
  container:
    image: @IMAGE@
    command: [/bin/serve]
    env: {VERSION: "{{ inputs.parameters.version }}"}
    resourcePlan: bench.plan
    replicas: @REPLICAS@
    readinessProbe: {path: /v2/health/ready, periodSeconds: @PERIOD@}
    startupTimeout: 60
    stopTimeout: 2
---
apiVersion: reconciler/v1
kind: ResourcePlan
metadata: {name: bench.plan}
spec: {cpus: @CPUS@, memory: @MEMORY@}
"""


def configurations(roll_version: str) -> str:
    """Every deployment but the first runs bench-config; the first runs bench-roll, whose
    version the rolling update changes."""
    return "---\n".join(
        "apiVersion: reconciler/v1\nkind: Configuration\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  executableId: bench-serving\n  scenarioId: bench\n"
        f'  parameterBindings: [{{key: version, value: "{version}"}}]\n'
        for name, version in (("bench-config", "1"), ("bench-roll", roll_version))
    )


def deployment_name(i: int) -> str:
    return f"svc-{i:03d}"


# --- commands --------------------------------------------------------------------------------


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """stdout of `cmd`; raises with its whole output when it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out.stdout


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = run(cmd, env)
    return time.perf_counter() - t0, out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, deadline_s: float = DEADLINE) -> float:
    """Seconds until `check()` holds, polled every POLL seconds; fails after `deadline_s`."""
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > deadline_s:
            raise RuntimeError(f"{what}: not within {deadline_s:g} s")
        time.sleep(POLL)
    return time.perf_counter() - t0


# --- the testbed -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Testbed:
    manager: str
    nodes: list[str]
    hostnames: list[str]
    up_seconds: float  # what `up` took

    @classmethod
    def load(cls, up_seconds: float) -> Testbed:
        info = json.loads((TESTBED_DIR / "testbed.json").read_text())
        return cls(info["manager"], list(info["nodes"]), list(info["hostnames"]), up_seconds)

    def script(self, *args: str) -> float:
        t0 = time.perf_counter()
        run([str(TESTBED), *args], timeout=120)
        return time.perf_counter() - t0


def wait_for_tests(limit_s: float) -> None:
    """Until no test run uses the testbed (`up` would tear its testbed down)."""
    t0 = time.monotonic()
    while True:
        found = subprocess.run(["pgrep", "-f", TESTS_USING_TESTBED], capture_output=True, text=True)
        pids = [p for p in found.stdout.split() if int(p) != os.getpid()]
        if not pids:
            return
        if time.monotonic() - t0 > limit_s:
            sys.exit(f"a test run still uses the swarm testbed after {limit_s:g} s: pids {pids}")
        print(f"waiting for the test run using the testbed to end (pids {' '.join(pids)})")
        time.sleep(20)


@contextmanager
def testbed(wait_s: float) -> Iterator[Testbed]:
    """The testbed up; down afterwards, whatever happened."""
    wait_for_tests(wait_s)
    check = subprocess.run([str(TESTBED), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(check.stdout.strip() or check.stderr.strip())
    try:
        t0 = time.perf_counter()
        run([str(TESTBED), "up"], timeout=300)
        yield Testbed.load(time.perf_counter() - t0)
    finally:
        down = subprocess.run([str(TESTBED), "down"], capture_output=True, text=True, timeout=300)
        if down.returncode != 0:
            print(f"swarm-testbed down failed:\n{down.stdout}{down.stderr}", file=sys.stderr)


# --- the two sides ---------------------------------------------------------------------------


@dataclass
class Reconciler:
    exe: str
    root: Path
    instance: str
    api_port: int
    testbed: Testbed
    env: dict[str, str]  # of every reconciler command: with its bytecode cache (see `measure_all`)

    @property
    def label(self) -> str:
        return f"reconciler.instance={self.instance}"

    def write(self, names: list[str], roll_version: str = "1") -> None:
        """The GitOps root with deployments `names` (the first on bench-roll)."""
        (self.root / "manifests" / "bench.yaml").write_text(configurations(roll_version))
        docs = [
            "apiVersion: reconciler/v1\nkind: Deployment\n"
            f"metadata: {{name: {name}}}\n"
            f"spec: {{configurationId: {'bench-roll' if i == 0 else 'bench-config'}}}\n"
            for i, name in enumerate(names)
        ]
        path = self.root / "manifests" / "deployments.yaml"
        if docs:
            path.write_text("---\n".join(docs))
        else:
            path.unlink(missing_ok=True)

    def setup(self, period: int) -> None:
        (self.root / "templates").mkdir(parents=True)
        (self.root / "manifests").mkdir()
        template = TEMPLATE
        for key, value in {
            "IMAGE": IMAGE,
            "REPLICAS": REPLICAS,
            "PERIOD": period,
            "CPUS": CPUS,
            "MEMORY": MEMORY,
        }.items():
            template = template.replace(f"@{key}@", str(value))
        (self.root / "templates" / "bench.yaml").write_text(template)
        nodes = "".join(f"\n      - {n}" for n in self.testbed.nodes)
        (self.root / "manifests" / "settings.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\nspec:\n"
            f"  instance: {self.instance}\n"
            f"  apiUrl: http://127.0.0.1:{self.api_port}\n"
            f"  engine:\n    kind: swarm\n    host: {self.testbed.manager}\n    nodes:{nodes}\n"
        )

    def cli(self, *args: str) -> list[str]:
        return [self.exe, *args, "--root", str(self.root)]

    def reconcile(self, *args: str) -> float:
        return self.timed("reconcile", *args)[0]

    def timed(self, *args: str) -> tuple[float, str]:
        return timed(self.cli(*args), self.env)

    def status(self) -> dict[str, dict[str, Any]]:
        out = run(self.cli("status", "--json"), self.env)
        return {d["name"]: d for d in json.loads(out)["deployments"]}


def all_running(status: dict[str, dict[str, Any]], names: list[str], lost: str = "") -> bool:
    """Every one of `names` RUNNING with all its replicas ready, none on node `lost`."""
    for name in names:
        d = status.get(name) or {}
        replicas = (d.get("details") or {}).get("replicas") or []
        ready = [r for r in replicas if r.get("ready") and r.get("node") != lost]
        if d.get("status") != "RUNNING" or len(ready) < REPLICAS:
            return False
    return True


def duration(ns: int) -> str:
    """Go's duration syntax, what compose files take."""
    return f"{ns // 1_000_000_000}s" if ns % 1_000_000_000 == 0 else f"{ns // 1_000_000}ms"


def escape(value: Any) -> Any:
    """Compose interpolates `$`: every string written as it is meant."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [escape(v) for v in value]
    if isinstance(value, dict):
        return {k: escape(v) for k, v in value.items()}
    return value


def update_config(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "parallelism": config.get("Parallelism", 1),
        "delay": duration(config.get("Delay", 0)),
        "failure_action": config.get("FailureAction", "pause"),
        "monitor": duration(config.get("Monitor", 0)),
        "max_failure_ratio": config.get("MaxFailureRatio", 0),
        "order": config.get("Order", "stop-first"),
    }


def resources(spec: dict[str, Any]) -> dict[str, str]:
    return {"cpus": f"{spec['NanoCPUs'] / 1e9:g}", "memory": str(spec["MemoryBytes"])}


def compose_service(spec: dict[str, Any]) -> dict[str, Any]:
    """The stack service equivalent to a service spec the reconciler made (its `Spec`)."""
    task = spec["TaskTemplate"]
    container, check = task["ContainerSpec"], task["ContainerSpec"]["Healthcheck"]
    if container.get("Mounts"):
        raise RuntimeError("the bench's template has no mounts: compose_service writes none")
    restart, res = task["RestartPolicy"], task["Resources"]
    service: dict[str, Any] = {
        "image": container["Image"],  # sha256:..., as the reconciler names it
        # Swarm's Command replaces the image's entrypoint; Args its CMD.
        "entrypoint": container["Command"],
        "environment": dict(e.split("=", 1) for e in container.get("Env") or ()),
        "healthcheck": {
            "test": check["Test"],
            "interval": duration(check["Interval"]),
            "timeout": duration(check["Timeout"]),
            "retries": check["Retries"],
            "start_period": duration(check["StartPeriod"]),
        },
        "stop_grace_period": duration(container["StopGracePeriod"]),
        "ports": [
            {"target": p["TargetPort"], "protocol": p["Protocol"], "mode": p["PublishMode"]}
            for p in spec["EndpointSpec"]["Ports"]
        ],
        "networks": ["nodebridge"],
        "deploy": {
            "mode": "replicated",
            "replicas": spec["Mode"]["Replicated"]["Replicas"],
            "endpoint_mode": spec["EndpointSpec"]["Mode"],
            "resources": {
                "limits": resources(res["Limits"]),
                "reservations": resources(res["Reservations"]),
            },
            "restart_policy": {
                "condition": restart["Condition"],
                "delay": duration(restart.get("Delay", 0)),
                "max_attempts": restart["MaxAttempts"],
            },
            "update_config": update_config(spec["UpdateConfig"]),
            "rollback_config": update_config(spec["RollbackConfig"]),
        },
    }
    if container.get("Args"):
        service["command"] = container["Args"]
    return escape(service)


def compose_file(path: Path, service: dict[str, Any], n: int) -> None:
    # JSON is YAML. A service with no network is on its node's bridge, as the reconciler's are;
    # a stack service would get an overlay network of the stack's own: name the bridge.
    path.write_text(
        json.dumps(
            {
                "version": "3.8",
                "services": {deployment_name(i): service for i in range(n)},
                "networks": {"nodebridge": {"external": True, "name": "bridge"}},
            },
            indent=1,
        )
    )


@dataclass
class Swarm:
    """The testbed's manager (Engine API) and nodes, for what neither CLI tells."""

    testbed: Testbed
    api: docker.APIClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = docker.APIClient(base_url=self.testbed.manager, timeout=30)

    def services(self, label: str) -> list[dict[str, Any]]:
        return list(self.api.services(filters={"label": label}))

    def running(self, service_ids: list[str], exclude_node: str = "") -> Counter[str]:
        """Running tasks (healthy: Swarm reports `running` only then) per service."""
        if not service_ids:
            return Counter()
        tasks = self.api.tasks(filters={"service": service_ids, "desired-state": "running"})
        return Counter(
            t["ServiceID"]
            for t in tasks
            if t["Status"]["State"] == "running" and t.get("NodeID") != exclude_node
        )

    def all_running(self, service_ids: list[str], exclude_node: str = "") -> bool:
        """Every one of these services has all its replicas running (none on `exclude_node`)."""
        per = self.running(service_ids, exclude_node)
        return all(per[i] >= REPLICAS for i in service_ids)

    def converged(self, label: str, n: int) -> bool:
        found = [s["ID"] for s in self.services(label)]
        return len(found) == n and self.all_running(found)

    def node_containers(self, label: str, healthy: bool = False) -> int:
        count = 0
        for host in self.testbed.nodes:
            node = docker.APIClient(base_url=host, timeout=30)
            filters: dict[str, Any] = {"label": label, **({"health": "healthy"} if healthy else {})}
            try:
                count += len(node.containers(all=not healthy, filters=filters))
            finally:
                node.close()
        return count

    def gone(self, label: str) -> bool:
        return not self.services(label) and self.node_containers(label) == 0

    def nodes_with_image(self, image_id: str) -> int:
        count = 0
        for host in self.testbed.nodes:
            node = docker.APIClient(base_url=host, timeout=30)
            try:
                node.inspect_image(image_id)
                count += 1
            except docker.errors.ImageNotFound:
                pass
            finally:
                node.close()
        return count

    def node_ids(self) -> dict[str, str]:
        return {n["Description"]["Hostname"]: n["ID"] for n in self.api.nodes()}

    def node_states(self) -> dict[str, str]:
        return {n["Description"]["Hostname"]: n["Status"]["State"] for n in self.api.nodes()}

    def stack(self, *args: str) -> list[str]:
        return ["docker", "-H", self.testbed.manager, "stack", *args]


# --- load through the gateway ----------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    """GET on a new connection: the status (0: no answer) and the body, stripped."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc)
    finally:
        conn.close()


@dataclass
class Load:
    """GETs of `url` back to back by a few clients, a new connection each (as the tests' load),
    counted; the answers (the model server's VERSION) tallied."""

    url: str
    clients: int = 2
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        wait_until(lambda: self.ok >= 5, "the first answers under load", 30)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            code, body = get(self.url)
            with self._lock:
                if code == 200:
                    self.ok += 1
                    self.answers[body] += 1
                else:
                    self.failures.append(f"{code} {body[:160]}")

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, len(self.failures)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@contextmanager
def serve(rec: Reconciler, log_path: Path) -> Iterator[None]:
    cmd = rec.cli("serve", "--no-auth", "--host", "127.0.0.1", "--port", str(rec.api_port))
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=rec.env)
    try:
        url = f"http://127.0.0.1:{rec.api_port}/healthz"

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"reconciler serve exited with {process.returncode}")
            return get(url)[0] == 200

        wait_until(answers, "reconciler serve's /healthz", 30)
        yield
    except BaseException:
        print(f"--- reconciler serve's output:\n{log_path.read_text()}", file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the measurements ------------------------------------------------------------------------


@dataclass
class Results:
    n: int = 0
    cold: dict[str, float] = field(default_factory=dict)  # "reconciler" / "stack": seconds
    noop: dict[str, list[float]] = field(default_factory=dict)
    validate: float = 0.0  # median seconds of `reconciler validate` on the same root
    roll: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)


def warm_up(rec: Reconciler, swarm: Swarm) -> dict[str, Any]:
    """One deployment converged and removed again: the image is then on every node. Returns
    its service's spec, the model for the stack's services."""
    image_id = run(["docker", "image", "inspect", "-f", "{{.Id}}", IMAGE]).strip()
    before = swarm.nodes_with_image(image_id)
    rec.write(["warmup"])
    seconds = rec.reconcile()
    (service,) = swarm.services(rec.label)
    spec = swarm.api.inspect_service(service["ID"])["Spec"]
    after = swarm.nodes_with_image(image_id)
    if after != len(swarm.testbed.nodes):
        raise RuntimeError(f"the image is on {after} of {len(swarm.testbed.nodes)} nodes")
    rec.write([])
    rec.reconcile("--allow-empty")
    wait_until(lambda: swarm.gone(rec.label), "the warm-up deployment's removal")
    print(
        f"warm-up: reconcile of 1 deployment ({seconds:.1f} s) copied {IMAGE} "
        f"({image_id[:19]}) to the nodes: on {before} of {after} nodes before, on all {after} "
        "after; both cold runs below start with the image on every node",
        flush=True,
    )
    return spec


def measure_stack(swarm: Swarm, compose: Path, n: int, repeat: int, results: Results) -> None:
    deploy = swarm.stack("deploy", "--resolve-image", "never", "-c", str(compose), STACK)
    t0 = time.perf_counter()
    command, _ = timed(deploy, CLI_ENV)
    wait_until(lambda: swarm.converged(STACK_LABEL, n), "the stack's tasks running")
    results.cold["stack"] = time.perf_counter() - t0
    healthy = swarm.node_containers(STACK_LABEL, healthy=True)
    own = [net["Name"] for net in swarm.api.networks() if net["Name"].startswith(STACK)]
    print(
        f"stack cold: {results.cold['stack']:.1f} s (`docker stack deploy` itself "
        f"{command:.1f} s, then until {n * REPLICAS} tasks run; {healthy} containers "
        f"healthy on the nodes; networks of its own: {', '.join(own) or 'none'})",
        flush=True,
    )
    ids = [s["ID"] for s in swarm.services(STACK_LABEL)]
    before = swarm.api.tasks(filters={"service": ids, "desired-state": "running"})
    results.noop["stack"] = [timed(deploy, CLI_ENV)[0] for _ in range(repeat)]
    after = swarm.api.tasks(filters={"service": ids, "desired-state": "running"})
    replaced = len({t["ID"] for t in before} - {t["ID"] for t in after})
    print(
        f"stack no-op: {' '.join(f'{s:.2f}' for s in results.noop['stack'])} s "
        f"({replaced} tasks replaced by them)",
        flush=True,
    )
    run(swarm.stack("rm", STACK), CLI_ENV)
    removed = wait_until(lambda: swarm.gone(STACK_LABEL), "the stack's removal")
    print(f"stack removed: no service, no container left after {removed:.1f} s", flush=True)


def measure_reconciler(rec: Reconciler, swarm: Swarm, args: argparse.Namespace, r: Results) -> None:
    names = [deployment_name(i) for i in range(args.deployments)]
    rec.write(names)
    parallel = ["--parallel", str(args.parallel)] if args.parallel else []
    r.cold["reconciler"] = rec.reconcile(*parallel)
    status = rec.status()
    if not all_running(status, names):
        bad = {k: v["status"] for k, v in status.items() if v["status"] != "RUNNING"}
        raise RuntimeError(f"after reconcile, not every deployment is RUNNING: {bad}")
    healthy = swarm.node_containers(rec.label, healthy=True)
    print(
        f"reconciler cold: {r.cold['reconciler']:.1f} s (reconcile "
        f"{' '.join(parallel) or 'with its default --parallel'}; every "
        f"deployment RUNNING with {REPLICAS} ready replicas; {healthy} containers healthy)",
        flush=True,
    )
    plans = []
    for _ in range(args.repeat):
        seconds, out = rec.timed("plan")
        plans.append(seconds)
        if "no changes" not in out:
            print(f"  ! plan on the converged root is not empty:\n{out}", flush=True)
    r.noop["reconciler"] = plans
    # The part of a plan that needs no engine: start, load, schema checks, render.
    r.validate = statistics.median(rec.timed("validate")[0] for _ in range(args.repeat))
    print(
        f"reconciler no-op plan: {' '.join(f'{s:.2f}' for s in plans)} s (`reconciler "
        f"validate` of the same root, no engine: {r.validate:.2f} s)",
        flush=True,
    )


def rolling_update(rec: Reconciler, n: int, clients: int, r: Results) -> None:
    name = deployment_name(0)
    url = rec.status()[name]["deploymentUrl"] + "/version"
    with Load(url, clients) as load:
        ok0, failed0 = load.counts()
        rec.write([deployment_name(i) for i in range(n)], roll_version="2")
        seconds = rec.reconcile()
        ok1, failed1 = load.counts()
        wait_until(lambda: load.answers["2"] > 0, "answers of VERSION 2", 30)
    d = rec.status()[name]
    r.roll = {
        "seconds": seconds,
        "requests": ok1 - ok0 + failed1 - failed0,
        "failed": failed1 - failed0,
        "all_failures": load.failures,
        "answers": dict(load.answers),
        "status": d["status"],
    }
    print(
        f"rolling update of {name} (VERSION 1 -> 2, {REPLICAS} replicas, start-first) under "
        f"load ({clients} clients through the gateway, a new connection per request): reconcile "
        f"{seconds:.1f} s, {r.roll['requests']} requests meanwhile, {r.roll['failed']} failed; "
        f"answers in all {dict(load.answers)}; {name} is {d['status']}",
        flush=True,
    )
    for failure in load.failures[:3]:
        print(f"  ! {failure}", flush=True)


class Watcher(threading.Thread):
    """Polls `check` from `t0` until it holds (`seconds` then) or `stop` is set."""

    def __init__(self, check: Callable[[], bool], t0: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.check, self.t0, self.stop = check, t0, stop
        self.seconds: float | None = None
        self.error = ""

    def run(self) -> None:
        while not self.stop.is_set() and time.perf_counter() - self.t0 < DEADLINE:
            try:
                if self.check():
                    self.seconds = time.perf_counter() - self.t0
                    return
            except Exception as exc:  # the manager may answer slowly meanwhile: poll again
                self.error = repr(exc)[:200]
            time.sleep(POLL)


@dataclass
class ServiceLs:
    """What `docker service ls` shows of some services (the API's ServiceStatus), polled until
    stopped: the fewest and most replicas it counted running, of how many desired."""

    swarm: Swarm
    ids: list[str]
    low: int | None = None
    high: int = 0
    desired: int = 0

    def check(self) -> bool:
        found = [s for s in self.swarm.api.services(status=True) if s["ID"] in self.ids]
        running = sum(s["ServiceStatus"]["RunningTasks"] for s in found)
        self.desired = sum(s["ServiceStatus"]["DesiredTasks"] for s in found)
        self.low = running if self.low is None else min(self.low, running)
        self.high = max(self.high, running)
        return False  # never done by itself: it watches as long as the others do


@dataclass(frozen=True)
class Loss:
    worker: int  # the node's number in the testbed
    hostname: str
    node_id: str
    replicas: int  # the ready replicas it carried
    affected: list[str]  # deployments with a replica on it
    service_ids: list[str]


def worker_to_lose(rec: Reconciler, swarm: Swarm, status: dict[str, dict[str, Any]]) -> Loss:
    """The worker (not the manager, node 1) carrying the most replicas."""
    hostnames = swarm.testbed.hostnames
    on: dict[str, set[str]] = {}  # node -> deployments
    carried: Counter[str] = Counter()
    for name, d in status.items():
        for replica in (d.get("details") or {}).get("replicas") or []:
            if replica.get("ready"):
                carried[replica["node"]] += 1
                on.setdefault(replica["node"], set()).add(name)
    worker = max(range(2, len(hostnames) + 1), key=lambda i: (carried[hostnames[i - 1]], -i))
    lost = hostnames[worker - 1]
    affected = sorted(on.get(lost, ()))
    names = {f"{rec.instance}_{status[a]['id']}" for a in affected}
    ids = [s["ID"] for s in swarm.services(rec.label) if s["Spec"]["Name"] in names]
    return Loss(worker, lost, swarm.node_ids()[lost], carried[lost], affected, ids)


def lose_worker(rec: Reconciler, swarm: Swarm, clients: int, r: Results) -> None:
    status = rec.status()
    loss = worker_to_lose(rec, swarm, status)
    service_ls = ServiceLs(swarm, loss.service_ids)
    stop = threading.Event()
    with Load(status[loss.affected[0]]["deploymentUrl"] + "/version", clients) as load:
        t0 = time.perf_counter()
        watchers = {
            "reconciler": Watcher(
                lambda: all_running(rec.status(), loss.affected, loss.hostname), t0, stop
            ),
            "tasks": Watcher(lambda: swarm.all_running(loss.service_ids, loss.node_id), t0, stop),
            "down": Watcher(lambda: swarm.node_states().get(loss.hostname) == "down", t0, stop),
        }
        ls_watcher = Watcher(service_ls.check, t0, stop)
        swarm.testbed.script("kill-node", str(loss.worker))
        for watcher in [*watchers.values(), ls_watcher]:
            watcher.start()
        for watcher in watchers.values():
            watcher.join()
        stop.set()
        ls_watcher.join()
    back = swarm.testbed.script("start-node", str(loss.worker))
    back += wait_until(
        lambda: all(s == "ready" for s in swarm.node_states().values()), "every node ready"
    )
    r.loss = {
        "node": loss.hostname,
        "replicas": loss.replicas,
        "affected": len(loss.affected),
        **{key: w.seconds for key, w in watchers.items()},
        "load": (load.ok + len(load.failures), len(load.failures)),
    }
    print(
        f"worker lost: {loss.hostname} (carried {loss.replicas} replicas of "
        f"{len(loss.affected)} deployments), killed at t=0: Down at {fmt(r.loss['down'])}; every "
        f"deployment it carried RUNNING with {REPLICAS} ready replicas on live nodes (reconciler "
        f"status) at {fmt(r.loss['reconciler'])}; all their tasks running on the other nodes "
        f"(Swarm's tasks API) at {fmt(r.loss['tasks'])}",
        flush=True,
    )
    print(
        f"  docker service ls meanwhile: {service_ls.low}..{service_ls.high} of "
        f"{service_ls.desired} replicas running"
        + (
            " (never one missing: it counts every task last reported running, the lost node's "
            "among them)"
            if (service_ls.low or 0) >= service_ls.desired
            else ""
        ),
        flush=True,
    )
    print(
        f"  through the gateway to {loss.affected[0]} meanwhile: {r.loss['load'][0]} requests, "
        f"{r.loss['load'][1]} failed; {loss.hostname} back (start-node, every node ready) after "
        f"{back:.1f} s",
        flush=True,
    )
    for failure in load.failures[:3]:
        print(f"  ! {failure}", flush=True)
    for key, watcher in [*watchers.items(), ("service ls", ls_watcher)]:
        if watcher.error:
            print(f"  ({key} watcher saw errors while polling, last: {watcher.error})", flush=True)


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


# --- report ----------------------------------------------------------------------------------


def ok(good: bool) -> str:
    return "OK" if good else "MISSED"


def report(r: Results, repeat: int) -> None:
    """The table: every ratio is docker stack's time over the reconciler's (> 1: the
    reconciler is faster)."""
    noop_ours = statistics.median(r.noop["reconciler"])
    noop_ratio = statistics.median(r.noop["stack"]) / noop_ours
    loss = r.loss
    rows = [
        (
            f"cold converge, {r.n} x {REPLICAS} replicas",
            f"{r.cold['reconciler']:.1f} s",
            f"{r.cold['stack']:.1f} s",
            f"{r.cold['stack'] / r.cold['reconciler']:.2f}x",
            "",
        ),
        (
            f"no-op (median of {repeat})",
            f"{noop_ours:.2f} s",
            f"{statistics.median(r.noop['stack']):.2f} s",
            f"{noop_ratio:.2f}x",
            f">= {TARGET_NOOP:g}x: {ok(noop_ratio >= TARGET_NOOP)}",
        ),
        (
            f"rolling update, 1 of {r.n}, under load",
            f"{r.roll['seconds']:.1f} s",
            "-",
            "-",
            f"{r.roll['failed']} of {r.roll['requests']} requests failed: "
            + ok(r.roll["failed"] == 0),
        ),
        (
            f"worker lost ({loss['replicas']} replicas)",
            fmt(loss.get("reconciler")),
            fmt(loss.get("tasks")),
            f"{loss['tasks'] / loss['reconciler']:.2f}x"
            if loss.get("tasks") and loss.get("reconciler")
            else "-",
            f"gateway: {loss['load'][1]} of {loss['load'][0]} failed",
        ),
    ]
    head = ("", "reconciler", "docker stack", "stack/rec", "target")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(4)]
    print()
    for row in [head, *rows]:
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in (1, 2, 3)]
        print(" | ".join([*cells, row[4]]).rstrip())
    print(
        "(worker lost: reconciler = `reconciler status` shows every deployment the node carried "
        "RUNNING with all replicas ready on live nodes; docker stack = Swarm's own rescheduling, "
        "their tasks running on the other nodes; one event, one t=0; the node read Down after "
        f"{fmt(loss.get('down'))})"
    )


def measure_all(bed: Testbed, tmp: Path, args: argparse.Namespace, results: Results) -> None:
    swarm = Swarm(bed)
    try:
        exe = str(Path(sys.executable).parent / "reconciler")
        instance = f"bench{uuid.uuid4().hex[:8]}"
        # As an installed package has it: Python's bytecode cached (here, outside the source
        # tree), whatever PYTHONDONTWRITEBYTECODE the caller has; the warm-up fills it.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        rec = Reconciler(exe, tmp / "repo", instance, free_port(), bed, env)
        print(f"reconciler: {exe}, bytecode cached in the run's temporary folder", flush=True)
        rec.setup(args.probe_period)
        spec = warm_up(rec, swarm)
        compose = tmp / "stack.yml"
        compose_file(compose, compose_service(spec), args.deployments)
        measure_stack(swarm, compose, args.deployments, args.repeat, results)
        measure_reconciler(rec, swarm, args, results)
        with serve(rec, tmp / "serve.log"):
            rolling_update(rec, args.deployments, args.clients, results)
            lose_worker(rec, swarm, args.clients, results)
    finally:
        swarm.api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=20, help="deployments (services)")
    parser.add_argument("--repeat", type=int, default=5, help="no-op runs per side")
    parser.add_argument(
        "--probe-period", type=int, default=2, help="readiness probe (health check) period, s"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=0,
        help="reconcile --parallel for the cold run (0: its default)",
    )
    parser.add_argument("--clients", type=int, default=2, help="load clients via the gateway")
    parser.add_argument(
        "--wait-for-tests", type=float, default=900, help="seconds to wait for a test run"
    )
    args = parser.parse_args()
    # `kill` (SIGTERM) as Ctrl-C: the testbed goes down either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    run([str(PROJECT / "scripts" / "build-test-image"), IMAGE])
    version = run(["docker", "version", "-f", "{{.Client.Version}}"], CLI_ENV).strip()
    results = Results(n=args.deployments)
    with (
        tempfile.TemporaryDirectory(prefix="bench-swarm-") as tmp,
        testbed(args.wait_for_tests) as bed,
    ):
        engine = run(["docker", "-H", bed.manager, "version", "-f", "{{.Server.Version}}"])
        print(
            f"testbed up in {bed.up_seconds:.1f} s: {len(bed.nodes)} nodes "
            f"({', '.join(bed.hostnames)}), "
            f"Docker {engine.strip()}, docker CLI {version}; {args.deployments} deployments "
            f"x {REPLICAS} replicas of {IMAGE}, {CPUS:g} CPU / {MEMORY} each, health check "
            f"every {args.probe_period} s; host: {os.cpu_count()} cores",
            flush=True,
        )
        measure_all(bed, Path(tmp), args, results)
    report(results, args.repeat)
    print(f"(whole run {time.perf_counter() - started:.0f} s; testbed down)")


if __name__ == "__main__":
    main()
