"""Benchmark: the churn model's prediction latency and throughput straight to the model
server's container and through the inference gateway, `reconciler serve`, in one run.

Setup: a temporary GitOps root with the project's churn template and manifests (model version
1, `models/` linked in) and a Settings manifest whose `apiUrl` is a free local port, so that the
deployment URL is the gateway's; `reconciler reconcile` starts the container, `reconciler serve`
runs as a subprocess. Everything (serve, the instance's containers) is removed at the end, also
on failure.

Three routes to the same container:

* direct: its published port, what a client calls when it calls the container itself (the
  deploymentUrl without a gateway). On Linux that is docker-proxy, Docker's relay in user space.
* container: the container's own address on its bridge network, no relay at all: the floor,
  shown for reference (left out where this host cannot reach it: Docker Desktop, rootless).
* gateway: the deploymentUrl through `reconciler serve`, with its bearer token. Where the host
  owns the bridge, the gateway relays to the container's own address (reconciler.serve.routes), so
  its path has one relay, as direct's has.

Two APIs: V1 `POST /v1/models/churn:predict` with SAP AI Core's sample flat record, and V2
`POST /v2/models/churn/infer` with a seed-style body (`content_type: "pd"`, one input per
feature); each at 1 and 32 concurrent clients.

Why the measurement is built this way: this machine's speed drifts by 10-30 % within a minute
(a shared 2-core VM), far more than the gateway costs, so runs of one route after another
cannot tell the routes apart (an A/A test, direct against direct, differed by up to 15 % per
pair of runs).

* Latency is measured interleaved: every client (asyncio, one thread) keeps a keep-alive
  connection to each route and sends its requests to them in turn, so that all routes see the
  same load at the same moments. What the gateway adds is taken per gateway request against the
  same client's direct requests just before and after it, and the median of that is the added
  p50; the mean is what the gateway adds to the mean latency.
* Throughput at 32 clients is wrk, a route at a time, `--rounds` rounds alternating which goes
  first; the share is the median of the per-round ratios (their range is printed).
* Throughput at 1 client is 1 / latency (a closed loop without think time): direct's is wrk's,
  the gateway's is that with the gateway's added mean latency. The interleaved client's own time
  (~0.2 ms) is in both latencies and cancels out of the difference, so it does not flatter the
  ratio.

Targets, gateway against direct: it adds at most 1 ms at p50, and keeps at least 90 % of the
throughput.

The load generator for throughput is wrk, the Debian package (`apt-get install -y wrk`).
Without wrk a small Python load generator (http.client keep-alive connections in threads)
stands in, and the output says so: at 32 clients it may be slower than the servers.

    scripts/build-images                 # the runtime image and models/churn/1 (cached)
    apt-get install -y wrk
    .venv/bin/python bench/inference_latency.py [--latency-seconds 12] [--duration 2]
                                                [--rounds 15] [--warmup 2] [--no-auth]

Authentication is on, as in production: the bench makes an OAuth2 client in a credentials file
of its own and sends its bearer token with every gateway request (`--no-auth` runs
`serve --no-auth` instead). `start_serve` is the one place that knows how `reconciler serve` is
started. A run takes about 4 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlencode, urlsplit

import uvloop

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
IMAGE = "reconciler/sklearn-runtime:1"
CONTAINER_PORT = 8080
TARGET_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT = 0.90
CLIENTS = (1, 32)
READY_TIMEOUT = 60.0

FEATURES = {
    "region": 3,
    "tenure": 37,
    "age": 53,
    "address": 13,
    "income": 48,
    "employ": 10,
    "gender": 0,
    "equip": 0,
}
V1_PATH = "/v1/models/churn:predict"
V1_BODY = json.dumps(FEATURES).encode()  # AI Core's sample request, unchanged
V2_PATH = "/v2/models/churn/infer"
V2_BODY = json.dumps(
    {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": name, "shape": [1], "datatype": "INT64", "data": [value]}
            for name, value in FEATURES.items()
        ],
    }
).encode()


@dataclass(frozen=True)
class Api:
    label: str
    path: str
    body: bytes


APIS = (Api("V1 :predict", V1_PATH, V1_BODY), Api("V2 infer", V2_PATH, V2_BODY))


@dataclass(frozen=True)
class Endpoint:
    route: str  # "direct", "container" or "gateway"
    base_url: str  # without trailing slash; the API path is appended
    headers: dict[str, str]


@dataclass(frozen=True)
class Result:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    errors: int
    error_text: str  # what went wrong, empty when nothing did


LoadGenerator = Callable[[str, bytes, dict[str, str], int, float], Result]


# --- the load generators ---------------------------------------------------------------------

_WRK_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.M)
_WRK_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def lua_script(body: bytes, headers: dict[str, str]) -> str:
    """A wrk script that POSTs `body` with `headers` on every request."""
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines += [f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def parse_wrk(out: str) -> Result:
    lat = {q: float(v) * _UNIT_MS[unit] for q, v, unit in _WRK_LATENCY.findall(out)}
    rps, requests = _WRK_RPS.search(out), _WRK_REQUESTS.search(out)
    if "50" not in lat or "99" not in lat or not rps or not requests:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    problems = []
    errors = 0
    if m := _WRK_SOCKET.search(out):
        counts = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
        errors += sum(counts.values())
        problems += [f"{n} socket {kind} errors" for kind, n in counts.items() if n]
    if m := _WRK_NON2XX.search(out):
        errors += int(m.group(1))
        problems.append(f"{m.group(1)} non-2xx answers")
    return Result(
        lat["50"],
        lat["99"],
        float(rps.group(1)),
        int(requests.group(1)),
        errors,
        ", ".join(problems),
    )


def wrk_load(
    url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float
) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-") as script:
        script.write(lua_script(body, headers))
        script.flush()
        cmd = ["wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{seconds:g}s"]
        cmd += ["--timeout", "10s", "--latency", "-s", script.name, url]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return parse_wrk(out.stdout)


def python_load(
    url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float
) -> Result:
    """Stand-in for wrk: one thread per client, each with one keep-alive connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    all_headers = {"Content-Type": "application/json", **headers}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    start = threading.Barrier(clients + 1)
    deadline = 0.0

    def client(mine: list[float]) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        start.wait()
        while (t0 := time.perf_counter()) < deadline:
            try:
                conn.request("POST", parts.path, body, all_headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                failures.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
                continue
            mine.append(time.perf_counter() - t0)
            if not 200 <= response.status < 300:
                failures.append(f"HTTP {response.status}")
        conn.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    for t in threads:
        t.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return summarize([x for mine in latencies for x in mine], failures, elapsed, "")


def summarize(latencies: list[float], failures: list[str], elapsed: float, what: str) -> Result:
    """p50/p99 (ms), throughput and failures of one load run's latencies (seconds)."""
    done = sorted(latencies)
    if not done:
        raise RuntimeError(f"{what}no request answered: {', '.join(sorted(set(failures)))}")

    def pct(q: float) -> float:
        return done[min(len(done) - 1, round(q * (len(done) - 1)))] * 1000

    text = ", ".join(f"{failures.count(k)} {k}" for k in sorted(set(failures)))
    return Result(pct(0.50), pct(0.99), len(done) / elapsed, len(done), len(failures), text)


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Sends `request`, reads its answer (framed by Content-Length, as the model server's
    are); returns the status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    m = _CONTENT_LENGTH.search(head)
    if m is None:
        raise RuntimeError(f"an answer without Content-Length: {head!r}")
    await reader.readexactly(int(m.group(1)))
    return int(head[9:12])


@dataclass(frozen=True)
class Interleaved:
    routes: dict[str, Result]  # by route, in the endpoints' order
    # Per gateway request: its latency less the mean of the same client's direct requests just
    # before and just after it. Their median and mean.
    added_median_ms: float
    added_mean_ms: float
    pairs: int


def interleaved_load(
    endpoints: list[Endpoint], api: Api, clients: int, seconds: float
) -> Interleaved:
    """Latency of every route under the same load at the same moments: each client keeps a
    keep-alive connection to every route and sends its requests to them in turn (client i
    starts with route i), one at a time (asyncio on uvloop, one thread: clients in threads
    would wait for each other's turn at the GIL).

    What the gateway adds is taken per gateway request, against the direct requests of the
    same client just before and after it (a few milliseconds apart): the load changes little
    in between, so the model server's queue, which dominates latency at many clients, mostly
    cancels out. The client's own time is in every latency, and cancels out too."""
    samples: dict[str, list[float]] = {ep.route: [] for ep in endpoints}
    failures: dict[str, list[str]] = {ep.route: [] for ep in endpoints}
    routes = [ep.route for ep in endpoints]

    def raw_request(ep: Endpoint) -> bytes:
        parts = urlsplit(ep.base_url + api.path)
        head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        head += "Content-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in ep.headers.items())
        return f"{head}Content-Length: {len(api.body)}\r\n\r\n".encode() + api.body

    requests = [raw_request(ep) for ep in endpoints]
    sequences: list[list[tuple[int, float]]] = []

    async def client(first: int, deadline: float) -> None:
        streams = []
        for ep in endpoints:
            parts = urlsplit(ep.base_url)
            streams.append(await asyncio.open_connection(parts.hostname, parts.port))
        mine: list[tuple[int, float]] = []
        turn = first
        try:
            while (t0 := time.perf_counter()) < deadline:
                status = await _exchange(*streams[turn], requests[turn])
                mine.append((turn, time.perf_counter() - t0))
                if not 200 <= status < 300:
                    failures[routes[turn]].append(f"HTTP {status}")
                turn = (turn + 1) % len(streams)
        finally:
            for _, writer in streams:
                writer.close()
        sequences.append(mine)

    async def main() -> float:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client(i % len(endpoints), deadline) for i in range(clients)))
        return time.perf_counter() - started

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        elapsed = runner.run(main())
    gw = routes.index("gateway") if "gateway" in routes else -1
    direct = routes.index("direct") if "direct" in routes else -1
    added: list[float] = []
    for mine in sequences:
        for turn, latency in mine:
            samples[routes[turn]].append(latency)
        directs = [k for k, (turn, _) in enumerate(mine) if turn == direct]
        for before, after in itertools.pairwise(directs):
            for turn, latency in mine[before + 1 : after]:
                if turn == gw:
                    around = (mine[before][1] + mine[after][1]) / 2
                    added.append((latency - around) * 1000)
    out = {
        route: summarize(times, failures[route], elapsed, f"{route}: ")
        for route, times in samples.items()
    }
    if not added:
        return Interleaved(out, 0.0, 0.0, 0)
    return Interleaved(out, statistics.median(added), statistics.mean(added), len(added))


# --- setup and teardown ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return str(out.stdout)


def gitops_root(root: Path, instance: str, api_port: int) -> None:
    (root / "templates").mkdir(parents=True)
    (root / "manifests").mkdir()
    shutil.copy(PROJECT / "templates" / "churn-serving.yaml", root / "templates")
    shutil.copy(PROJECT / "manifests" / "churn.yaml", root / "manifests")
    (root / "models").symlink_to(PROJECT / "models")  # the artifact is file:models/churn/1
    (root / "manifests" / "settings.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\n"
        f"spec: {{instance: {instance}, apiUrl: 'http://127.0.0.1:{api_port}'}}\n"
    )


@dataclass(frozen=True)
class Serve:
    process: subprocess.Popen[bytes]
    headers: dict[str, str]  # what every gateway request carries: the bearer token, if any
    auth: str  # how it runs, for the output


def start_serve(exe: str, root: Path, port: int, auth: bool, log: IO[bytes]) -> Serve:
    """Start `reconciler serve`: the one place that knows how. With `auth`, the bench makes a
    client in a credentials file of its own (next to the temporary root, never ~/.config) and
    gets a token from /oauth/token; every gateway request then carries it as
    `Authorization: Bearer`. A `serve` that has no authentication yet runs as it is."""
    base = f"http://127.0.0.1:{port}"
    cmd = [exe, "serve", "--root", str(root), "--host", "127.0.0.1", "--port", str(port)]

    def spawn(*extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*cmd, *extra], stdout=log, stderr=subprocess.STDOUT)

    if "--no-auth" not in run([exe, "serve", "--help"]):
        return Serve(spawn(), {}, "none (this serve has no authentication)")
    if not auth:
        return Serve(spawn("--no-auth"), {}, "off (serve --no-auth)")
    credentials = root.parent / "clients.json"
    add = [exe, "clients", "add", "bench", "-g", "default", "--root", str(root)]
    client = json.loads(run([*add, "--credentials", str(credentials), "--json"]))
    process = spawn("--credentials", str(credentials))
    try:
        wait_for(lambda: request(base + "/healthz")[0] == 200, process, base + "/healthz")
        form = {
            "grant_type": "client_credentials",
            "client_id": client["clientId"],
            "client_secret": client["clientSecret"],
        }
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        status, body = request(base + "/oauth/token", urlencode(form).encode(), form_type)
        if status != 200:
            raise RuntimeError(f"/oauth/token answered {status}: {body!r}")
        token = json.loads(body)["access_token"]
    except BaseException:
        stop(process)
        raise
    return Serve(process, {"Authorization": f"Bearer {token}"}, "on (OAuth2 bearer token)")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def instance_containers(instance: str) -> list[str]:
    return run(["docker", "ps", "-aq", "--filter", f"label=reconciler.instance={instance}"]).split()


def remove_containers(instance: str) -> None:
    if ids := instance_containers(instance):
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET, or POST `body` (JSON unless `headers` say otherwise); the status and the body."""
    all_headers = {"Content-Type": "application/json", **(headers or {})} if body else {}
    req = urllib.request.Request(url, body, all_headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_for(check: Callable[[], bool], serve: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise RuntimeError(f"reconciler serve exited with {serve.returncode}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"reconciler serve did not answer {what} within {READY_TIMEOUT:g}s")


@contextmanager
def churn_deployment(exe: str, auth: bool) -> Iterator[tuple[list[Endpoint], dict[str, str]]]:
    """Deploys churn v1 and starts the gateway; yields the endpoints (direct, container when
    this host reaches it, gateway) and a few facts about the setup. Removes everything
    afterwards."""
    instance = f"bench-{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    facts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        root = Path(tmp) / "repo"
        gitops_root(root, instance, api_port)
        log_path = Path(tmp) / "serve.log"
        serve: subprocess.Popen[bytes] | None = None
        try:
            t0 = time.perf_counter()
            run([exe, "reconcile", "--root", str(root)])
            facts["reconcile"] = f"{time.perf_counter() - t0:.1f} s"
            status = json.loads(run([exe, "status", "--root", str(root), "--json"]))
            dep = next(d for d in status["deployments"] if d["name"] == "churn")
            if dep["status"] != "RUNNING":
                raise RuntimeError(f"deployment churn is {dep['status']}, not RUNNING")
            ids = instance_containers(instance)
            if len(ids) != 1:
                raise RuntimeError(f"expected one container of {instance}, found {len(ids)}")
            published = run(["docker", "port", ids[0], f"{CONTAINER_PORT}/tcp"]).split()[0]
            limits = "{{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}}"
            quota, period = run(["docker", "inspect", "-f", limits, ids[0]]).split()
            cpus = int(quota) / (int(period) or 100_000) if int(quota) > 0 else os.cpu_count()
            facts["container cpus"] = f"{cpus:g}"
            endpoints = [Endpoint("direct", f"http://{published}", {})]
            own = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
            address = (run(["docker", "inspect", "-f", own, ids[0]]).split() or [""])[0]
            container = Endpoint("container", f"http://{address}:{CONTAINER_PORT}", {})
            if address and request(container.base_url + V1_PATH, V1_BODY)[0] == 200:
                endpoints.append(container)
            with log_path.open("wb") as log:
                started = start_serve(exe, root, api_port, auth, log)
                serve = started.process
                facts["auth"] = started.auth
                gateway = Endpoint("gateway", dep["deploymentUrl"].rstrip("/"), started.headers)
                url = gateway.base_url + V1_PATH
                wait_for(lambda: request(url, V1_BODY, gateway.headers)[0] == 200, serve, url)
                yield [*endpoints, gateway], facts
        except Exception:
            if log_path.exists() and log_path.stat().st_size:
                print(f"--- reconciler serve's output:\n{log_path.read_text()}", file=sys.stderr)
            raise
        finally:
            if serve is not None:
                stop(serve)
            remove_containers(instance)


def check_answers(endpoints: list[Endpoint]) -> None:
    """Every route gives the same, successful answer (V2 answers carry a fresh id each)."""
    for api in APIS:
        answers = []
        for ep in endpoints:
            status, body = request(ep.base_url + api.path, api.body, ep.headers)
            if status != 200:
                raise RuntimeError(f"{ep.route} {api.label}: HTTP {status}: {body!r}")
            answer = json.loads(body)
            answer.pop("id", None)
            answers.append(answer)
        if any(a != answers[0] for a in answers):
            raise RuntimeError(f"{api.label}: the routes' answers differ: {answers}")


# --- measuring and reporting -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    api: Api
    clients: int


def measure_latency(
    endpoints: list[Endpoint], cases: list[Case], warmup: float, seconds: float
) -> dict[Case, Interleaved]:
    results = {}
    for case in cases:
        interleaved_load(endpoints, case.api, case.clients, warmup)
        results[case] = res = interleaved_load(endpoints, case.api, case.clients, seconds)
        cells = [
            f"{route} p50 {r.p50_ms:6.2f} p99 {r.p99_ms:6.2f} ms ({r.requests})"
            + (f" ! {r.error_text}" if r.errors else "")
            for route, r in res.routes.items()
        ]
        print(f"  {case.api.label:<11} c{case.clients:<3} " + " | ".join(cells), flush=True)
    return results


Rounds = dict[str, list[Result]]  # route -> one result per round, in round order


def measure_throughput(
    load: LoadGenerator,
    endpoints: list[Endpoint],
    cases: list[Case],
    rounds: int,
    warmup: float,
    seconds: float,
) -> dict[Case, Rounds]:
    """Per case: a warm-up run per route, then `rounds` rounds of one run per route, the
    order alternating, so that no route always runs first."""
    results: dict[Case, Rounds] = {}
    for case in cases:
        for ep in endpoints:
            load(ep.base_url + case.api.path, case.api.body, ep.headers, case.clients, warmup)
        mine: Rounds = results.setdefault(case, {ep.route: [] for ep in endpoints})
        for r in range(rounds):
            for ep in endpoints if r % 2 == 0 else endpoints[::-1]:
                url = ep.base_url + case.api.path
                mine[ep.route].append(load(url, case.api.body, ep.headers, case.clients, seconds))
        cells = []
        for ep in endpoints:
            rps = [f"{res.rps:.0f}" for res in mine[ep.route]]
            bad = sum(res.errors for res in mine[ep.route])
            cells.append(f"{ep.route} {' '.join(rps)} req/s" + (f" ! {bad} errors" if bad else ""))
        print(f"  {case.api.label:<11} c{case.clients:<3} " + " | ".join(cells), flush=True)
    return results


def paired_shares(mine: list[Result], base: list[Result]) -> list[float]:
    """Each round's throughput against the other route's in the same round."""
    return [m.rps / b.rps for m, b in zip(mine, base, strict=True)]


def ok(good: bool) -> str:
    return "OK" if good else "MISSED"


def report(
    cases: list[Case],
    latency: dict[Case, Interleaved],
    throughput: dict[Case, Rounds],
    rounds: int,
) -> None:
    routes = list(latency[cases[0]].routes)
    print()
    print("Latency, interleaved (each client sends to the routes in turn: same load, same moments)")
    print(
        f"{'API':<11} {'c':>3} | "
        + " | ".join(f"{route + ' p50/p99 ms':>22}" for route in routes)
        + f" | {'gateway adds, p50':>17} | target <= {TARGET_ADDED_P50_MS:g} ms"
    )
    all_ok = True
    for case in cases:
        res = latency[case]
        good = res.added_median_ms <= TARGET_ADDED_P50_MS
        all_ok = all_ok and good
        print(
            f"{case.api.label:<11} {case.clients:>3} | "
            + " | ".join(f"{r.p50_ms:13.2f} {r.p99_ms:8.2f}" for r in res.routes.values())
            + f" | {res.added_median_ms:+14.2f} ms | {ok(good)}"
            + (" !" if any(r.errors for r in res.routes.values()) else "")
        )
    print()
    print(
        f"Throughput (wrk, a route at a time, {rounds} rounds alternating; with 1 client the "
        "gateway's is direct's with the mean latency the gateway adds, from the interleaved run)"
    )
    print(
        f"{'API':<11} {'c':>3} | {'direct req/s':>12} | {'gateway req/s':>13} | "
        f"{'gateway/direct':>14} {'(rounds min-max)':>17} | target >= {TARGET_THROUGHPUT:.0%}"
    )
    for case in cases:
        runs = throughput[case]
        d = statistics.median(r.rps for r in runs["direct"])
        if case.clients == 1:  # closed loop, one client: throughput is 1 / latency
            g = 1 / (1 / d + latency[case].added_mean_ms / 1000)
            share, spread = g / d, "(derived)"
        else:
            g = statistics.median(r.rps for r in runs["gateway"])
            shares = paired_shares(runs["gateway"], runs["direct"])
            share = statistics.median(shares)
            spread = f"{min(shares):.0%}-{max(shares):.0%}"
        good = share >= TARGET_THROUGHPUT
        all_ok = all_ok and good
        print(
            f"{case.api.label:<11} {case.clients:>3} | {d:12.0f} | {g:13.0f} | "
            f"{share:14.1%} {spread:>17} | {ok(good)}"
        )
    print()
    print(
        f"targets: gateway adds <= {TARGET_ADDED_P50_MS:g} ms at p50 and keeps >= "
        f"{TARGET_THROUGHPUT:.0%} of direct's throughput: {ok(all_ok)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--latency-seconds", type=int, default=12, help="seconds of each interleaved run"
    )
    parser.add_argument("--duration", type=int, default=2, help="seconds per throughput run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run kind")
    parser.add_argument(
        "--rounds", type=int, default=15, help=f"throughput runs per route at {max(CLIENTS)}"
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="run serve with --no-auth (no bearer token)"
    )
    parser.add_argument(
        "--python-load", action="store_true", help="the Python load generator even with wrk"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    run([str(PROJECT / "scripts" / "build-images")])
    exe = str(Path(sys.executable).parent / "reconciler")
    if not Path(exe).exists():
        exe = shutil.which("reconciler") or sys.exit("reconciler is not installed: make venv")
    load: LoadGenerator
    if shutil.which("wrk") and not args.python_load:
        load = wrk_load
        version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        generator = f"wrk {version.split()[1]} (-t 1..2, keep-alive)"
    else:
        load = python_load
        why = "--python-load" if args.python_load else "wrk not found: apt-get install -y wrk"
        generator = (
            f"Python http.client threads, keep-alive ({why}); "
            "the client, not the server, may limit throughput"
        )
    cases = [Case(api, c) for api in APIS for c in CLIENTS]

    with churn_deployment(exe, not args.no_auth) as (endpoints, facts):
        check_answers(endpoints)
        print(
            f"churn model v1 on {IMAGE} ({facts['container cpus']} CPU), host: {os.cpu_count()} "
            f"cores; reconcile took {facts['reconcile']}"
        )
        for ep in endpoints:
            auth = f"  (auth: {facts['auth']})" if ep.route == "gateway" else ""
            print(f"{ep.route + ':':<10} {ep.base_url}{auth}")
        print(
            f"latency: Python asyncio clients (uvloop), keep-alive, interleaved; "
            f"{args.warmup:g} s warm-up, then {args.latency_seconds:g} s per case"
        )
        latency = measure_latency(endpoints, cases, args.warmup, args.latency_seconds)
        print(
            f"throughput: {generator}; {args.warmup:g} s warm-up per route, then {args.rounds} "
            f"rounds of {args.duration:g} s per route ({max(CLIENTS)} clients; 1 client: direct)"
        )
        pair = [ep for ep in endpoints if ep.route in ("direct", "gateway")]
        throughput = {}
        for case in cases:
            measured = pair if case.clients > 1 else pair[:1]
            rounds = args.rounds if case.clients > 1 else max(3, args.rounds // 3)
            throughput |= measure_throughput(
                load, measured, [case], rounds, args.warmup, args.duration
            )
    report(cases, latency, throughput, args.rounds)
    print(f"(whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
