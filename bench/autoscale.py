"""Benchmark: the autoscaling of `reconciler serve` (Knative's KPA on one Docker host): a cold
start from zero against `docker run` of the same container, a step load against a deployment
fixed at one replica, and what idle deployments scaled to zero cost. All in one run.

Every phase has a temporary GitOps root of its own (the project's churn template, model
version 1, `models/` linked in, Settings with a unique instance name and an `apiUrl` on a free
local port, so that deployment URLs are the gateway's). Each deployment gets a variant of
templates/churn-serving.yaml (the AI Core KServe template) with the bounds and the
`autoscaling.knative.dev/*` annotations below; `reconciler reconcile` starts it, `reconciler
serve` (OAuth2 on, as in production: a client of the bench's own, `--no-auth` to run
without) serves it and runs the autoscaler. Replica counts are read from the Docker engine's
socket (running containers labelled with the instance and the deployment id).

1. Cold start from zero. One deployment, `minReplicas: 0`, `maxReplicas: 1`, annotations
   `metric: concurrency`, `target: 1`, `scale-to-zero-grace-period: 2s`, `window: 6s`.
   `reconcile` starts one container (Knative's initial scale); `serve` scales it to zero once
   it has been idle for the grace period. Each round: wait until no container of it runs, wait
   1 s more, then time one V1 predict through the deployment URL on a new connection (the
   gateway holds it, has one replica started by a reconcile pass, and relays it once the
   replica serves): the first-request latency. Should it fail, it is sent again every 50 ms
   until answered, and that time is printed too (not a target: the target needs every first
   request answered). Then 10 more predicts to the now warm deployment (and 10 before the first
   round, to the initial scale's replica): the normal request time. The peer, in the same run
   and round, while the deployment is at zero: `docker run -d` of the container the reconciler
   made (read with `docker inspect` while it ran after `reconcile`: image, environment, mounts,
   entrypoint and command, working directory, CPU and memory limits; the port published on
   127.0.0.1), timed from the `docker run` command to its readiness endpoint `/v2/health/ready`
   answering 200 (polled every 10 ms), then removed. Target: median first request <= 1.2 x
   median docker-run-to-ready + median normal request.
2. Step load. A deployment with `minReplicas: 1`, `maxReplicas: 4`, annotations `metric:
   concurrency`, `target: "4"` and `window: 6s` (Knative's default window is 60 s; 6 s, its
   shortest, keeps the bench to minutes: the autoscaler then reacts and scales down ten times
   sooner than with the default), and a second one fixed at one replica (`minReplicas: 1`,
   `maxReplicas: 1`), both through the gateway, one after the other, with the same load: 1
   client for 10 s, 32 concurrent clients for 40 s, 1 client for 30 s (V1 predict; http.client
   keep-alive connections, one thread per client). Each load starts when every deployment of
   the root runs one container and the loaded one's has passed Docker's health check (as a
   deployment that has been serving a while). Every request's start, latency and status is
   recorded; the running containers of the deployment are counted every 0.5 s, and so are the
   replicas the gateway relays to (`reconciler_deployment_replicas{kind="current"}` on serve's
   /metrics: a replica runs before it serves). Reported: p99 latency and throughput during the
   step (32 clients) and after it, the time from the step's start until the replica count
   settled (the first change after which it did not change for 10 s; the same from the step's
   end for the scale-down), the most replicas seen (target: <= 4) and failed requests (any
   answer but 2xx, or no answer; target: 0).
3. Idle cost. 10 deployments with `minReplicas: 0`, `maxReplicas: 1`, grace 2s. `reconcile`
   starts one container each (Knative's initial scale); with `serve` running, wait until the
   grace period passed and the autoscaler's passes are done (no container runs, or 90 s), then
   report the running containers (target: 0) and, over 10 s of idleness, the CPU time used by
   those containers (Docker's stats; 0 when none runs) and by the `reconciler serve` process
   (/proc/<pid>/stat utime + stime).

The progress output shows the autoscaler's decisions and serve's warnings from its log.
Everything (serve processes, the instances' containers, the peer's container, the temporary
roots) is removed at the end, also on failure. Only containers labelled with this run's
instance names are ever touched.

    scripts/build-images          # the runtime image and models/churn/1 (cached)
    .venv/bin/python bench/autoscale.py [--rounds 5] [--quick] [--no-auth]

`--quick` is a smoke run (2 cold starts unless --rounds says otherwise, step load 3 s / 15 s /
30 s, 3 idle deployments): it proves the bench works end to end; its numbers are not the
targets'. A full run takes about 7 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inference_latency import (  # noqa: E402  (the sibling bench: how serve is started)
    IMAGE,
    PROJECT,
    V1_BODY,
    V1_PATH,
    Serve,
    free_port,
    remove_containers,
    run,
    start_serve,
    stop,
)

CONTAINER_PORT = 8080
READY_PATH = "/v2/health/ready"
GRACE = "2s"
WINDOW = "6s"
COLD_TARGET_FACTOR = 1.2
WARM_REQUESTS = 10  # after each cold start: the normal request time
PEER_POLL_SECONDS = 0.01
SAMPLE_SECONDS = 0.5
SETTLED_SECONDS = 10.0  # a replica count unchanged this long has settled
STEP_CLIENTS = 32
MAX_REPLICAS = 4
IDLE_DEPLOYMENTS = 10
IDLE_MEASURE_SECONDS = 10.0
ZERO_TIMEOUT = 90.0  # for the autoscaler to take a deployment to zero
COLD_TIMEOUT = 180.0  # a held request (serve holds it for at most 120 s by default)
REQUEST_TIMEOUT = 60.0
TICK = os.sysconf("SC_CLK_TCK")

OK, NOT_OK = "OK", "NOT OK"


def verdict(good: bool) -> str:
    return OK if good else NOT_OK


# --- the Docker engine, read on its socket ---------------------------------------------------


class Engine:
    """The local Docker engine through the Docker SDK's low-level client: cheap enough to
    count containers twice a second without a `docker` process each time (the bench's own CPU
    stays low)."""

    def __init__(self) -> None:
        import docker

        self.api = docker.APIClient(version="auto")

    def running(self, *labels: str) -> list[str]:
        """Ids of the running containers that carry every label (`key=value`)."""
        return list(self.health(*labels))

    def health(self, *labels: str) -> dict[str, str]:
        """The running containers that carry every label: id → what Docker's health check
        says ("healthy", "starting", "unhealthy"; "" without one)."""
        out = {}
        for c in self.api.containers(filters={"label": list(labels), "status": "running"}):
            status = c.get("Status", "")
            words = ("healthy", "starting", "unhealthy")
            out[c["Id"]] = next((w for w in words if status.endswith(f"{w})")), "")
        return out

    def inspect(self, container_id: str) -> dict[str, Any]:
        return dict(self.api.inspect_container(container_id))

    def image(self, image: str) -> dict[str, Any]:
        return dict(self.api.inspect_image(image))

    def cpu_ns(self, container_id: str) -> int | None:
        """CPU time a container used so far (None: it is gone)."""
        import docker

        try:
            stats = self.api.stats(container_id, stream=False, one_shot=True)
        except docker.errors.NotFound:
            return None
        return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])


def deployment_labels(instance: str, deployment_id: str) -> tuple[str, str]:
    return f"reconciler.instance={instance}", f"reconciler.deployment-id={deployment_id}"


# --- GitOps roots ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One deployment with a template of its own: churn-serving with other bounds and
    annotations."""

    name: str
    min_replicas: int
    max_replicas: int
    annotations: dict[str, str]


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"templates/churn-serving.yaml changed: {old.strip()!r} not found once")
    return text.replace(old, new)


def template_text(variant: Variant) -> str:
    """templates/churn-serving.yaml with this variant's name, bounds and annotations."""
    text = (PROJECT / "templates" / "churn-serving.yaml").read_text()
    text = _replace_once(text, "\n  name: churn-serving\n", f"\n  name: {variant.name}-serving\n")
    text = _replace_once(text, "minReplicas: 1\n", f"minReplicas: {variant.min_replicas}\n")
    text = _replace_once(text, "maxReplicas: 1\n", f"maxReplicas: {variant.max_replicas}\n")
    indent = " " * 8  # the annotations' YAML text inside `annotations: |`
    lines = "".join(
        f'{indent}autoscaling.knative.dev/{k}: "{v}"\n' for k, v in variant.annotations.items()
    )
    old = (
        f"{indent}autoscaling.knative.dev/metric: concurrency\n"
        f"{indent}autoscaling.knative.dev/target: 1\n"
    )
    return _replace_once(text, old, lines)


def gitops_root(root: Path, instance: str, api_port: int, variants: list[Variant]) -> None:
    (root / "templates").mkdir(parents=True)
    (root / "manifests").mkdir()
    (root / "models").symlink_to(PROJECT / "models")  # the artifact is file:models/churn/1
    docs = [
        "apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\n"
        f"spec: {{instance: {instance}, apiUrl: 'http://127.0.0.1:{api_port}'}}\n",
        "apiVersion: reconciler/v1\nkind: Artifact\nmetadata: {name: churn-model-v1}\n"
        "spec: {kind: model, url: 'file:models/churn/1', scenarioId: churn}\n",
    ]
    for v in variants:
        (root / "templates" / f"{v.name}-serving.yaml").write_text(template_text(v))
        docs.append(
            "apiVersion: reconciler/v1\nkind: Configuration\n"
            f"metadata: {{name: {v.name}-config}}\n"
            f"spec:\n  executableId: {v.name}-serving\n  scenarioId: churn\n"
            "  inputArtifactBindings: [{key: churnmodel, artifactId: churn-model-v1}]\n"
        )
        docs.append(
            "apiVersion: reconciler/v1\nkind: Deployment\n"
            f"metadata: {{name: {v.name}}}\n"
            f"spec: {{configurationId: {v.name}-config, targetStatus: RUNNING}}\n"
        )
    (root / "manifests" / "bench.yaml").write_text("---\n".join(docs))


@dataclass
class Setup:
    exe: str
    root: Path
    instance: str
    api_port: int
    log: Path
    ids: dict[str, str]  # deployment name -> id
    urls: dict[str, str]  # deployment name -> deploymentUrl
    reconcile_seconds: float
    serve: Serve | None = None
    log_read: int = 0  # how much of the log `show_log` has read

    def show_log(self) -> None:
        """The autoscaler's decisions and serve's warnings since the last call, for the
        progress output (time of day, without the date)."""
        with self.log.open("rb") as f:
            f.seek(self.log_read)
            new = f.read()
        self.log_read += len(new)
        for line in new.decode(errors="replace").splitlines():
            if "reconciler.autoscaler" in line or " WARNING " in line or " ERROR " in line:
                print(f"    serve: {line[11:23]} {line[24:].split(' ', 2)[-1][:220]}")

    @property
    def headers(self) -> dict[str, str]:
        return self.serve.headers if self.serve else {}

    def check_serve(self) -> None:
        if self.serve is not None and self.serve.process.poll() is not None:
            raise RuntimeError(f"reconciler serve exited with {self.serve.process.returncode}")


@contextmanager
def deployed(exe: str, run_id: str, phase: str, variants: list[Variant]) -> Iterator[Setup]:
    """A root of its own (instance `<run id>-<phase>`), reconciled; its containers, its serve
    (see `serving`) and the root removed afterwards."""
    instance = f"{run_id}-{phase}"
    with tempfile.TemporaryDirectory(prefix=f"bench-autoscale-{phase}-") as tmp:
        root = Path(tmp) / "repo"
        api_port = free_port()
        gitops_root(root, instance, api_port, variants)
        setup = Setup(exe, root, instance, api_port, Path(tmp) / "serve.log", {}, {}, 0.0)
        try:
            t0 = time.perf_counter()
            run([exe, "reconcile", "--root", str(root)])
            setup.reconcile_seconds = time.perf_counter() - t0
            status = json.loads(run([exe, "status", "--root", str(root), "--json"]))
            for d in status["deployments"]:
                if d["status"] != "RUNNING":
                    raise RuntimeError(f"deployment {d['name']} is {d['status']}, not RUNNING")
                setup.ids[d["name"]] = d["id"]
                setup.urls[d["name"]] = d["deploymentUrl"].rstrip("/")
            yield setup
        except BaseException:
            if setup.log.exists() and setup.log.stat().st_size:
                text = setup.log.read_text(errors="replace")[-8000:]
                print(f"--- reconciler serve's output ({instance}):\n{text}", file=sys.stderr)
            raise
        finally:
            if setup.serve is not None:
                stop(setup.serve.process)
            remove_containers(instance)
            time.sleep(1)  # a create the engine was still doing when serve stopped
            remove_containers(instance)


@contextmanager
def serving(setup: Setup, auth: bool) -> Iterator[Setup]:
    with setup.log.open("ab") as log:
        setup.serve = start_serve(setup.exe, setup.root, setup.api_port, auth, log)
        try:
            yield setup
        finally:
            stop(setup.serve.process)


def until(
    check: Callable[[], bool], timeout: float, what: str, setup: Setup, every: float = 0.25
) -> float:
    """Seconds until `check` holds (raises after `timeout`, or when serve exited)."""
    t0 = time.perf_counter()
    while True:
        setup.check_serve()
        if check():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout:g}s")
        time.sleep(every)


# --- requests --------------------------------------------------------------------------------


def connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def predict(
    conn: http.client.HTTPConnection, url: str, headers: dict[str, str]
) -> tuple[int, bytes]:
    """One V1 predict on `conn` (kept alive); the status and the body."""
    conn.request(
        "POST",
        urlsplit(url).path + V1_PATH,
        V1_BODY,
        {"Content-Type": "application/json", **headers},
    )
    response = conn.getresponse()
    return response.status, response.read()


def timed_predict(url: str, headers: dict[str, str], timeout: float) -> tuple[float, int, bytes]:
    """Seconds, status and body of one V1 predict on a new connection."""
    conn = connection(url, timeout)
    t0 = time.perf_counter()
    try:
        status, body = predict(conn, url, headers)
    except (OSError, http.client.HTTPException) as exc:
        status, body = 0, f"{type(exc).__name__}: {exc}".encode()
    finally:
        conn.close()
    return time.perf_counter() - t0, status, body


def answer(status: int, body: bytes) -> str:
    """A failed request in words: its status and the AI API error's message (without its
    requestId, so that equal failures read equal)."""
    if not status:
        return f"no answer: {body.decode(errors='replace')[:200]}"
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace")[:200]
    return f"HTTP {status}: {message}"


# --- 1. cold start from zero -----------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """`docker run -d` of the container the reconciler made, less its name and port."""

    options: tuple[str, ...]  # environment, mounts, limits, working directory, entrypoint
    image_and_command: tuple[str, ...]
    label: str  # reconciler.instance=<run id>-peer: this run's, and no root's instance

    def command(self, name: str, port: int) -> list[str]:
        head = ["docker", "run", "-d", "--name", name, "--label", self.label]
        publish = ["-p", f"127.0.0.1:{port}:{CONTAINER_PORT}"]
        return [*head, *publish, *self.options, *self.image_and_command]


def peer_of(engine: Engine, container_id: str, label: str) -> Peer:
    """The container the reconciler made, read while it runs: its image, environment, mounts,
    entrypoint and command, working directory, CPU and memory limits. Not its labels (it must
    not look like a replica of the deployment), not its health check."""
    info = engine.inspect(container_id)
    config, host = info["Config"], info["HostConfig"]
    args: list[str] = []
    for env in config.get("Env") or ():
        args += ["-e", env]
    for m in host.get("Mounts") or ():
        spec = f"type={m['Type']},source={m['Source']},target={m['Target']}"
        args += ["--mount", spec + (",readonly" if m.get("ReadOnly") else "")]
    for bind in host.get("Binds") or ():
        args += ["-v", bind]
    if host.get("CpuQuota"):
        args += ["--cpu-quota", str(host["CpuQuota"]), "--cpu-period", str(host["CpuPeriod"])]
    if host.get("NanoCpus"):
        args += ["--cpus", f"{host['NanoCpus'] / 1e9:g}"]
    if host.get("Memory"):
        args += ["--memory", str(host["Memory"])]
        if host.get("MemorySwap"):
            args += ["--memory-swap", str(host["MemorySwap"])]
    if config.get("WorkingDir"):
        args += ["--workdir", config["WorkingDir"]]
    entrypoint = list(config.get("Entrypoint") or ())
    command = list(config.get("Cmd") or ())
    image_entrypoint = list(engine.image(config["Image"])["Config"].get("Entrypoint") or ())
    if entrypoint != image_entrypoint:
        args += ["--entrypoint", entrypoint[0] if entrypoint else ""]
        command = entrypoint[1:] + command
    return Peer(tuple(args), (config["Image"], *command), label)


def ready(base_url: str) -> bool:
    conn = connection(base_url, 1.0)
    try:
        conn.request("GET", READY_PATH)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def docker_run_to_ready(peer: Peer, name: str) -> float:
    """Seconds from `docker run` to its readiness endpoint answering 200 (polled every
    10 ms); the container is removed afterwards."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        run(peer.command(name, port))
        while not ready(base_url):
            if time.perf_counter() - t0 > COLD_TIMEOUT:
                raise RuntimeError(f"docker run: not ready within {COLD_TIMEOUT:g}s")
            time.sleep(PEER_POLL_SECONDS)
        return time.perf_counter() - t0
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@dataclass
class ColdResult:
    first: list[float] = field(default_factory=list)  # seconds of each first request
    status: list[int] = field(default_factory=list)  # its HTTP status (0: no answer)
    peer: list[float] = field(default_factory=list)  # docker run to ready
    normal: list[float] = field(default_factory=list)  # requests to the warm deployment (200)
    to_zero: list[float] = field(default_factory=list)  # waits for zero
    # After a first request that failed: seconds until a request (sent again every 50 ms)
    # was answered 200, from the first request's start.
    first_ok: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def bound(self) -> float:
        """The target for the median first request (nan without a normal request)."""
        normal = statistics.median(self.normal) if self.normal else math.nan
        return COLD_TARGET_FACTOR * statistics.median(self.peer) + normal

    def line(self, r: int) -> str:
        """Round `r` (from 0), for the progress output."""
        return (
            f"at zero after {self.to_zero[r]:.1f} s; docker run to ready {self.peer[r]:.2f} s; "
            f"first request {self.first[r]:.2f} s, HTTP {self.status[r] or 'none'}"
            + (
                f" (sent again: 200 after {self.first_ok[-1]:.2f} s)"
                if self.status[r] != 200
                else ""
            )
        )


COLD_ANNOTATIONS = {
    "metric": "concurrency",
    "target": "1",
    "scale-to-zero-grace-period": GRACE,
    "window": WINDOW,
}


def cold_start(exe: str, run_id: str, rounds: int, auth: bool, engine: Engine) -> ColdResult:
    result = ColdResult()
    peer_instance = f"{run_id}-peer"
    with deployed(exe, run_id, "cold", [Variant("cold", 0, 1, COLD_ANNOTATIONS)]) as setup:
        labels = deployment_labels(setup.instance, setup.ids["cold"])
        ids = engine.running(*labels)
        if len(ids) != 1:
            raise RuntimeError(f"expected 1 container after reconcile (initial scale): {ids}")
        peer = peer_of(engine, ids[0], f"reconciler.instance={peer_instance}")
        url = setup.urls["cold"]
        print(f"  {url} (reconcile {setup.reconcile_seconds:.1f} s)", flush=True)
        try:
            with serving(setup, auth):
                warm_requests(setup, result, "before round 1")  # the initial scale's replica
                for r in range(rounds):
                    cold_round(setup, engine, labels, peer, f"{peer_instance}-{r}", result)
                    print(f"  round {r + 1}: {result.line(r)}", flush=True)
                    setup.show_log()
        finally:
            remove_containers(peer_instance)
    return result


def cold_round(
    setup: Setup,
    engine: Engine,
    labels: tuple[str, str],
    peer: Peer,
    peer_name: str,
    result: ColdResult,
) -> None:
    """Wait for zero; the peer's docker run to ready (the deployment is at zero meanwhile);
    1 s; the first request; the normal ones."""
    r = len(result.first) + 1
    waited = until(lambda: not engine.running(*labels), ZERO_TIMEOUT, "scale to zero", setup)
    result.to_zero.append(waited)
    result.peer.append(docker_run_to_ready(peer, peer_name))
    time.sleep(1.0)
    t0 = time.perf_counter()
    seconds, status, body = timed_predict(setup.urls["cold"], setup.headers, COLD_TIMEOUT)
    result.first.append(seconds)
    result.status.append(status)
    if status != 200:
        result.failures.append(f"round {r}: first request {answer(status, body)}")
        # For the record: when a client that tries again (every 50 ms) gets its answer.
        while status != 200 and time.perf_counter() - t0 < COLD_TIMEOUT:
            time.sleep(0.05)
            _, status, body = timed_predict(setup.urls["cold"], setup.headers, COLD_TIMEOUT)
        result.first_ok.append(time.perf_counter() - t0)
    warm_requests(setup, result, f"round {r}")


def warm_requests(setup: Setup, result: ColdResult, when: str) -> None:
    """WARM_REQUESTS predicts on one keep-alive connection: the normal request time."""
    url = setup.urls["cold"]
    conn = connection(url, REQUEST_TIMEOUT)
    failed: list[str] = []
    try:
        for _ in range(WARM_REQUESTS):
            t0 = time.perf_counter()
            try:
                status, body = predict(conn, url, setup.headers)
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, str(exc).encode()
                conn.close()
            if status == 200:
                result.normal.append(time.perf_counter() - t0)
            else:
                failed.append(answer(status, body))
    finally:
        conn.close()
    if failed:
        kinds = "; ".join(f"{failed.count(k)} x {k}" for k in sorted(set(failed)))
        result.failures.append(f"{when}: normal requests failed: {kinds}")


# --- 2. step load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    clients: int
    seconds: float


@dataclass
class LoadRun:
    phases: tuple[Phase, ...]
    # Every request: its start (seconds from the load's start), latency (s), status (0: none).
    requests: list[tuple[float, float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what failed, in words
    replicas: list[tuple[float, int]] = field(default_factory=list)  # (s from start, running)
    # (s from start, replicas the gateway relays to: reconciler_deployment_replicas "current")
    serving: list[tuple[float, int]] = field(default_factory=list)
    started_at: float = 0.0  # time.time() at the load's start

    @property
    def step(self) -> tuple[float, float]:
        """When the step (the most clients) began and ended, from the load's start."""
        k = max(range(len(self.phases)), key=lambda i: self.phases[i].clients)
        begin = sum(p.seconds for p in self.phases[:k])
        return begin, begin + self.phases[k].seconds

    @property
    def failed(self) -> int:
        return sum(1 for _, _, status in self.requests if not 200 <= status < 300)


def step_load(
    url: str,
    headers: dict[str, str],
    phases: tuple[Phase, ...],
    count: Callable[[], int],
    serving: Callable[[], int | None],
) -> LoadRun:
    """The phases' load (client i sends while the phase has more than i clients, one request
    at a time on a keep-alive connection), every request recorded; `count` (the running
    replicas) and `serving` (those the gateway relays to) sampled every SAMPLE_SECONDS
    meanwhile."""
    result = LoadRun(phases)
    ends = [sum(p.seconds for p in phases[: k + 1]) for k in range(len(phases))]
    total = ends[-1]
    per_client: list[list[tuple[float, float, int]]] = [
        [] for _ in range(max(p.clients for p in phases))
    ]
    start = threading.Barrier(len(per_client) + 2)
    t0 = 0.0

    def phase_at(t: float) -> int:
        return next((k for k, end in enumerate(ends) if t < end), len(ends) - 1)

    def client(i: int, mine: list[tuple[float, float, int]]) -> None:
        conn: http.client.HTTPConnection | None = None
        start.wait()
        while (t := time.perf_counter() - t0) < total:
            k = phase_at(t)
            if phases[k].clients <= i:  # not in this phase: its connection closed meanwhile
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(max(0.001, min(ends[k], total) - t))
                continue
            conn = conn or connection(url, REQUEST_TIMEOUT)
            began = time.perf_counter()
            try:
                status, body = predict(conn, url, headers)
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, b""
                result.errors.append(f"no answer: {type(exc).__name__}")
                conn.close()
                conn = None
            else:
                if not 200 <= status < 300:
                    result.errors.append(answer(status, body))
            mine.append((began - t0, time.perf_counter() - began, status))
        if conn is not None:
            conn.close()

    def sampler() -> None:
        start.wait()
        tick = 0
        while (t := time.perf_counter() - t0) < total:
            result.replicas.append((t, count()))
            if (n := serving()) is not None:
                result.serving.append((t, n))
            tick += 1
            time.sleep(max(0.0, tick * SAMPLE_SECONDS - (time.perf_counter() - t0)))

    threads = [threading.Thread(target=client, args=(i, m)) for i, m in enumerate(per_client)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    result.started_at = time.time()
    start.wait()
    for t in threads:
        t.join()
    result.requests = sorted(r for mine in per_client for r in mine)
    return result


@dataclass(frozen=True)
class Window:
    p99_ms: float
    rps: float  # answered with 2xx per second
    requests: int


def window(run: LoadRun, begin: float, end: float) -> Window:
    """Requests that started in [begin, end)."""
    inside = [(lat, status) for t, lat, status in run.requests if begin <= t < end]
    ok = sorted(lat for lat, status in inside if 200 <= status < 300)
    p99 = ok[min(len(ok) - 1, round(0.99 * (len(ok) - 1)))] * 1000 if ok else float("nan")
    return Window(p99, len(ok) / (end - begin), len(inside))


def settled(
    samples: list[tuple[float, int]], since: float, until: float
) -> tuple[float, int] | str:
    """Seconds from `since` until the replica count settled, and that count: the first change
    in [since, until) after which the count did not change for SETTLED_SECONDS (the samples
    after `until` count for that). "no change" when it did not change in [since, until);
    "not settled" when no change was followed by SETTLED_SECONDS without one."""
    after = [(t, n) for t, n in samples if t >= since]
    changes = [i for i in range(1, len(after)) if after[i][1] != after[i - 1][1]]
    inside = [i for i in changes if after[i][0] < until]
    if not inside:
        return "no change"
    for i in inside:
        later = [j for j in changes if j > i]
        quiet_until = after[later[0]][0] if later else after[-1][0]
        if quiet_until - after[i][0] >= SETTLED_SECONDS - SAMPLE_SECONDS:
            return after[i][0] - since, after[i][1]
    return "not settled"


STEP_ANNOTATIONS = {"metric": "concurrency", "target": "4", "window": WINDOW}
FIXED_ANNOTATIONS = {"metric": "concurrency", "target": "1"}  # (as the project's template)


def step_bench(
    exe: str, run_id: str, phases: tuple[Phase, ...], auth: bool, engine: Engine
) -> dict[str, LoadRun]:
    variants = [
        Variant("autoscaled", 1, MAX_REPLICAS, STEP_ANNOTATIONS),
        Variant("fixed", 1, 1, FIXED_ANNOTATIONS),
    ]
    runs: dict[str, LoadRun] = {}
    with deployed(exe, run_id, "step", variants) as setup, serving(setup, auth):
        for name in ("autoscaled", "fixed"):
            runs[name] = res = step_run(setup, name, phases, engine)
            begin, end = res.step
            during = window(res, begin, end)
            every = max(1, round(2 / SAMPLE_SECONDS))
            at = time.strftime("%H:%M:%S", time.localtime(res.started_at + begin))
            print(
                f"  {name}: {len(res.requests)} requests, {res.failed} failed; during the step "
                f"(from {at}) p99 {during.p99_ms:.0f} ms, {during.rps:.0f} req/s\n"
                "    every 2 s, running containers: "
                + " ".join(str(n) for _, n in res.replicas[::every])
                + "\n    every 2 s, replicas the gateway relays to: "
                + " ".join(str(n) for _, n in res.serving[::every]),
                flush=True,
            )
            setup.show_log()
    return runs


def step_run(setup: Setup, name: str, phases: tuple[Phase, ...], engine: Engine) -> LoadRun:
    """One deployment's load, from one replica that Docker's health check has passed (as a
    deployment that has been serving a while), once every deployment of the root runs one
    replica (or ZERO_TIMEOUT passed: said, and the load runs anyway)."""
    url = setup.urls[name]
    labels = deployment_labels(setup.instance, setup.ids[name])

    def replicas() -> int:
        return len(engine.running(*labels))

    def serving() -> int | None:
        return gateway_replicas(setup, setup.ids[name])

    def health() -> list[list[str]]:
        return [
            list(engine.health(*deployment_labels(setup.instance, d)).values())
            for d in setup.ids.values()
        ]

    def steady() -> bool:
        mine = list(engine.health(*labels).values())
        return mine == ["healthy"] and all(len(h) == 1 for h in health())

    try:
        until(steady, ZERO_TIMEOUT, "one replica each, healthy", setup)
    except RuntimeError:
        setup.check_serve()
        print(f"  ! before {name}'s load: running containers' health per deployment {health()}")
    for _ in range(5):  # warm-up, and a check that it answers
        _, status, body = timed_predict(url, setup.headers, REQUEST_TIMEOUT)
        if status != 200:
            raise RuntimeError(f"{name}: {answer(status, body)}")
    return step_load(url, setup.headers, phases, replicas, serving)


def gateway_replicas(setup: Setup, deployment_id: str) -> int | None:
    """The replicas the gateway relays a deployment's requests to now (its /metrics)."""
    conn = connection(f"http://127.0.0.1:{setup.api_port}", 5.0)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    key = f'reconciler_deployment_replicas{{deployment="{deployment_id}",kind="current"}} '
    line = next((x for x in text.splitlines() if x.startswith(key)), None)
    return int(float(line[len(key) :])) if line else None


# --- 3. idle cost ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleResult:
    deployments: int
    started: int  # containers after reconcile (initial scale)
    zero_after: float | None  # seconds from serve's start until none ran (None: not seen)
    running: int  # containers running at the end of the idle measurement
    containers_cpu: float  # CPU seconds the running containers used in `seconds`
    serve_cpu: float  # CPU seconds `reconciler serve` used in `seconds`
    seconds: float


def process_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


IDLE_ANNOTATIONS = {
    "metric": "concurrency",
    "target": "1",
    "scale-to-zero-grace-period": GRACE,
}


def idle_bench(exe: str, run_id: str, count: int, auth: bool, engine: Engine) -> IdleResult:
    variants = [Variant(f"idle{i:02d}", 0, 1, IDLE_ANNOTATIONS) for i in range(count)]
    with deployed(exe, run_id, "idle", variants) as setup:
        label = f"reconciler.instance={setup.instance}"
        started = len(engine.running(label))
        print(f"  reconcile of {count} took {setup.reconcile_seconds:.1f} s", flush=True)
        with serving(setup, auth):
            assert setup.serve is not None
            t0 = time.perf_counter()
            zero_after: float | None = None
            while time.perf_counter() - t0 < ZERO_TIMEOUT:
                setup.check_serve()
                if not engine.running(label):
                    zero_after = time.perf_counter() - t0
                    break
                time.sleep(0.25)
            ids = engine.running(label)
            before = {c: engine.cpu_ns(c) for c in ids}
            serve_before = process_cpu(setup.serve.process.pid)
            m0 = time.perf_counter()
            time.sleep(IDLE_MEASURE_SECONDS)
            seconds = time.perf_counter() - m0
            serve_cpu = process_cpu(setup.serve.process.pid) - serve_before
            after = {c: engine.cpu_ns(c) for c in ids}
            running = len(engine.running(label))
    used = sum(
        end - begin
        for c in ids
        if (begin := before[c]) is not None and (end := after[c]) is not None
    )
    return IdleResult(count, started, zero_after, running, used / 1e9, serve_cpu, seconds)


# --- report ----------------------------------------------------------------------------------


def report_cold(cold: ColdResult) -> list[bool]:
    first, peer = statistics.median(cold.first), statistics.median(cold.peer)
    normal = statistics.median(cold.normal) if cold.normal else math.nan
    answered = sum(1 for status in cold.status if status == 200)
    good = answered == len(cold.first) and first <= cold.bound
    print(f"\n1. Cold start from zero (medians of {len(cold.first)} rounds; min-max)")
    print(f"   first request through the gateway  {first:6.2f} s   ({span(cold.first)})")
    print(f"   ... answered 200                   {answered} of {len(cold.first)}")
    print(f"   docker run to ready (peer)         {peer:6.2f} s   ({span(cold.peer)})")
    print(f"   normal request (warm deployment)   {normal * 1000:6.1f} ms  ({len(cold.normal)})")
    print(f"   first request / docker run to ready: {first / peer:.2f}x")
    print(
        f"   target: first <= {COLD_TARGET_FACTOR:g} x {peer:.2f} + {normal:.3f} = "
        f"{cold.bound:.2f} s (first / that {first / cold.bound:.2f}), every first request "
        f"answered 200: {verdict(good)}"
    )
    if cold.first_ok:
        print(
            f"   after a failed first request, sent again every 50 ms: 200 after "
            f"{statistics.median(cold.first_ok):.2f} s (median of {len(cold.first_ok)}; "
            f"{span(cold.first_ok)})"
        )
    print(f"   waits for zero (from the previous request on): {span(cold.to_zero)}")
    for failure in cold.failures:
        print(f"   ! {failure}")
    return [good]


def span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} s" if values else "-"


def report_step(runs: dict[str, LoadRun]) -> list[bool]:
    any_run = next(iter(runs.values()))
    begin, end = any_run.step
    shape = " → ".join(f"{p.clients} x {p.seconds:g} s" for p in any_run.phases)
    print(f"\n2. Step load, V1 predict through the gateway ({shape} clients)")
    print(
        "   replica counts settle when unchanged for 10 s: running containers (relayed to: "
        "the replicas the gateway sends requests to, its /metrics)"
    )
    print(
        f"   {'deployment':<10} | {'step p99':>8} {'req/s':>6} | {'after p99':>9} {'req/s':>6} | "
        f"{'settled after the step began':>29} | {'after it ended':>14} | {'max':>3} | "
        f"{'failed':>6}"
    )
    goods = []
    for name, res in runs.items():
        during, after = window(res, begin, end), window(res, end, end + res.phases[-1].seconds)
        total = end + res.phases[-1].seconds
        relayed = settle_text(settled(res.serving, begin, end))
        up = f"{settle_text(settled(res.replicas, begin, end))} ({relayed})"
        down = settle_text(settled(res.replicas, end, total))
        top = max((n for _, n in res.replicas), default=0)
        good_max, good_failed = top <= MAX_REPLICAS, res.failed == 0
        goods += [good_max, good_failed]
        print(
            f"   {name:<10} | {during.p99_ms:6.0f}ms {during.rps:6.0f} | {after.p99_ms:7.0f}ms "
            f"{after.rps:6.0f} | {up:>29} | {down:>14} | {top:>3} | {res.failed:>6}"
        )
    auto, fixed = runs.get("autoscaled"), runs.get("fixed")
    if auto and fixed:
        ratio = window(auto, begin, end).rps / window(fixed, begin, end).rps
        print(f"   autoscaled / fixed throughput during the step: {ratio:.2f}x")
    print(f"   targets: max replicas <= {MAX_REPLICAS}, 0 failed requests: {verdict(all(goods))}")
    for name, res in runs.items():
        kinds = sorted(set(res.errors))
        if kinds:
            print(f"   ! {name}: " + "; ".join(f"{res.errors.count(k)} x {k}" for k in kinds))
    return goods


def settle_text(result: tuple[float, int] | str) -> str:
    if isinstance(result, str):
        return result
    seconds, count = result
    return f"{seconds:.1f} s at {count}"


def report_idle(idle: IdleResult) -> list[bool]:
    good_count = idle.running == 0
    good_cpu = idle.containers_cpu == 0
    zero = (
        f"{idle.zero_after:.1f} s after serve started" if idle.zero_after is not None else "never"
    )
    print(f"\n3. Idle cost: {idle.deployments} deployments, minReplicas 0, grace {GRACE}")
    print(f"   containers after reconcile: {idle.started}; none running: {zero}")
    print(f"   running containers: {idle.running}  (target 0: {verdict(good_count)})")
    print(
        f"   CPU over {idle.seconds:.0f} s idle: containers {idle.containers_cpu:.3f} s "
        f"(target 0: {verdict(good_cpu)}); reconciler serve {idle.serve_cpu:.2f} s "
        f"({idle.serve_cpu / idle.seconds:.1%} of a core)"
    )
    return [good_count, good_cpu]


# --- main ------------------------------------------------------------------------------------


def preflight() -> str:
    exe = str(Path(sys.executable).parent / "reconciler")
    if not Path(exe).exists():
        exe = shutil.which("reconciler") or sys.exit("reconciler is not installed: make venv")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        sys.exit(f"image {IMAGE} not found: scripts/build-images")
    if not (PROJECT / "models" / "churn" / "1").is_dir():
        sys.exit("models/churn/1 not found: scripts/build-images")
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="cold starts (default 5; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--no-auth", action="store_true", help="run serve with --no-auth")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    if args.quick:
        phases = (Phase(1, 3), Phase(STEP_CLIENTS, 15), Phase(1, 30))
        idle_count = 3
    else:
        phases = (Phase(1, 10), Phase(STEP_CLIENTS, 40), Phase(1, 30))
        idle_count = IDLE_DEPLOYMENTS
    auth = not args.no_auth
    # SIGTERM cleans up as Ctrl-C does (the finally blocks remove what the run made).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    exe = preflight()
    engine = Engine()
    run_id = f"bench-as-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    print(
        f"churn model v1 on {IMAGE}; host: {os.cpu_count()} cores; run {run_id}; "
        f"serve auth {'on' if auth else 'off (--no-auth)'}" + ("; --quick" if args.quick else "")
    )
    print(f"\n1. cold start from zero: {rounds} rounds", flush=True)
    cold = cold_start(exe, run_id, rounds, auth, engine)
    print("\n2. step load: autoscaled (1..4 replicas) then fixed (1 replica)", flush=True)
    runs = step_bench(exe, run_id, phases, auth, engine)
    print(f"\n3. idle cost: {idle_count} deployments scaled to zero", flush=True)
    idle = idle_bench(exe, run_id, idle_count, auth, engine)

    goods = report_cold(cold) + report_step(runs) + report_idle(idle)
    print(f"\nall targets: {verdict(all(goods))}")
    print(f"(whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
