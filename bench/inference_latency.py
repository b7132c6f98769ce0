"""Benchmark: the churn model's prediction latency and throughput, straight to the model
server's container ("direct") and through the inference gateway, `reconciler serve`
("gateway"), in one run.

Setup: a temporary GitOps root with the project's churn template and manifests (model version
1, `models/` linked in) and a Settings manifest whose `apiUrl` is a free local port, so that the
deployment URL is the gateway's; `reconciler reconcile` starts the container, `reconciler serve`
runs as a subprocess. Everything (serve, the instance's containers) is removed at the end, also
on failure.

Measured with wrk (closed loop, keep-alive connections), each at 1 and 32 concurrent clients:

* V1: `POST /v1/models/churn:predict` with SAP AI Core's sample flat record;
* V2: `POST /v2/models/churn/infer` with a seed-style body (`content_type: "pd"`, one input
  per feature).

Every measurement follows a warm-up run. Direct and gateway runs alternate (direct first in
odd rounds, gateway first in even ones) and every pair runs twice (`--rounds`); the table shows
the median of the rounds. A run with non-2xx answers or socket errors is flagged with `!`.

Targets: the gateway adds at most 1 ms at p50, and keeps at least 90 % of the direct
throughput.

The load generator is wrk, the Debian package (`apt-get install -y wrk`). Without wrk a
small Python load generator (http.client keep-alive connections in threads) stands in, and
the output says so: at 32 clients it may be slower than the servers, so its numbers there can be
client-bound.

    scripts/build-images                 # the runtime image and models/churn/1 (cached)
    apt-get install -y wrk
    .venv/bin/python bench/inference_latency.py [--duration 8] [--warmup 2] [--rounds 2]
                                                [--no-auth]

Authentication is on, as in production: the bench makes an OAuth2 client in a credentials file
of its own and sends its bearer token with every gateway request (`--no-auth` runs
`serve --no-auth` instead). `start_serve` is the one place that knows how `reconciler serve` is
started. A run takes about 3 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import http.client
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
    route: str  # "direct" or "gateway"
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
    done = sorted(x for mine in latencies for x in mine)
    if not done:
        raise RuntimeError(f"no request answered: {', '.join(sorted(set(failures)))}")

    def pct(q: float) -> float:
        return done[min(len(done) - 1, round(q * (len(done) - 1)))] * 1000

    kinds = sorted(set(failures))
    text = ", ".join(f"{failures.count(k)} {k}" for k in kinds)
    return Result(pct(0.50), pct(0.99), len(done) / elapsed, len(done), len(failures), text)


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
def churn_deployment(exe: str, auth: bool) -> Iterator[tuple[Endpoint, Endpoint, dict[str, str]]]:
    """Deploys churn v1 and starts the gateway; yields the direct and gateway endpoints and
    a few facts about the setup. Removes everything afterwards."""
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
            direct = Endpoint("direct", f"http://{published}", {})
            with log_path.open("wb") as log:
                started = start_serve(exe, root, api_port, auth, log)
                serve = started.process
                facts["auth"] = started.auth
                gateway = Endpoint("gateway", dep["deploymentUrl"].rstrip("/"), started.headers)
                url = gateway.base_url + V1_PATH
                wait_for(lambda: request(url, V1_BODY, gateway.headers)[0] == 200, serve, url)
                yield direct, gateway, facts
        except Exception:
            if log_path.exists() and log_path.stat().st_size:
                print(f"--- reconciler serve's output:\n{log_path.read_text()}", file=sys.stderr)
            raise
        finally:
            if serve is not None:
                stop(serve)
            remove_containers(instance)


def check_answers(direct: Endpoint, gateway: Endpoint) -> None:
    """Both routes give the same, successful answer (V2 answers carry a fresh id each)."""
    for api in APIS:
        answers = []
        for ep in (direct, gateway):
            status, body = request(ep.base_url + api.path, api.body, ep.headers)
            if status != 200:
                raise RuntimeError(f"{ep.route} {api.label}: HTTP {status}: {body!r}")
            answer = json.loads(body)
            answer.pop("id", None)
            answers.append(answer)
        if answers[0] != answers[1]:
            raise RuntimeError(f"{api.label}: direct and gateway differ: {answers}")


# --- measuring and reporting -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    api: Api
    clients: int


def measure(
    load: LoadGenerator,
    cases: list[Case],
    endpoints: tuple[Endpoint, Endpoint],
    rounds: int,
    warmup: float,
    duration: float,
) -> dict[tuple[Case, str], list[Result]]:
    results: dict[tuple[Case, str], list[Result]] = {}
    for r in range(rounds):
        for case in cases:
            order = endpoints if r % 2 == 0 else endpoints[::-1]
            for ep in order:
                url = ep.base_url + case.api.path
                load(url, case.api.body, ep.headers, case.clients, warmup)
                res = load(url, case.api.body, ep.headers, case.clients, duration)
                results.setdefault((case, ep.route), []).append(res)
                flag = f"  ! {res.error_text}" if res.errors else ""
                print(
                    f"  round {r + 1}  {case.api.label:<11} c{case.clients:<3} {ep.route:<8}"
                    f"p50 {res.p50_ms:7.2f} ms  p99 {res.p99_ms:7.2f} ms  "
                    f"{res.rps:8.0f} req/s{flag}",
                    flush=True,
                )
    return results


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(r.rps for r in results),
        sum(r.requests for r in results),
        sum(r.errors for r in results),
        "; ".join(r.error_text for r in results if r.errors),
    )


def ok(good: bool) -> str:
    return "OK" if good else "MISSED"


def report(cases: list[Case], results: dict[tuple[Case, str], list[Result]]) -> None:
    print()
    print(f"{'':<11} {'':>3} | {'direct':^26} | {'gateway':^26} | {'gateway - direct':^30}")
    print(
        f"{'API':<11} {'c':>3} | {'p50 ms':>7} {'p99 ms':>7} {'req/s':>8}  "
        f"| {'p50 ms':>7} {'p99 ms':>7} {'req/s':>8}  "
        f"| {'+p50 ms':>7} {'+p99 ms':>7} {'thr %':>6}  | targets"
    )
    all_ok = True
    errors = []
    for case in cases:
        d, g = median(results[case, "direct"]), median(results[case, "gateway"])
        added50, added99 = g.p50_ms - d.p50_ms, g.p99_ms - d.p99_ms
        share = g.rps / d.rps
        lat_ok, thr_ok = added50 <= TARGET_ADDED_P50_MS, share >= TARGET_THROUGHPUT
        all_ok = all_ok and lat_ok and thr_ok
        flag = " !" if d.errors or g.errors else ""
        print(
            f"{case.api.label:<11} {case.clients:>3} "
            f"| {d.p50_ms:7.2f} {d.p99_ms:7.2f} {d.rps:8.0f}  "
            f"| {g.p50_ms:7.2f} {g.p99_ms:7.2f} {g.rps:8.0f}  "
            f"| {added50:+7.2f} {added99:+7.2f} {share:6.1%}  "
            f"| p50 {ok(lat_ok)}, thr {ok(thr_ok)}{flag}"
        )
        for route, res in (("direct", d), ("gateway", g)):
            if res.errors:
                errors.append(f"{case.api.label} c{case.clients} {route}: {res.error_text}")
    print(
        f"targets: gateway adds <= {TARGET_ADDED_P50_MS:g} ms at p50; gateway throughput >= "
        f"{TARGET_THROUGHPUT:.0%} of direct: {ok(all_ok)}"
    )
    one = next((c for c in cases if c.clients == 1), None)
    if one:
        d = median(results[one, "direct"])
        allowed = d.p50_ms * (1 / TARGET_THROUGHPUT - 1)
        print(
            f"note: with 1 client throughput is 1/latency: keeping {TARGET_THROUGHPUT:.0%} of it "
            f"at {d.p50_ms:.2f} ms ({one.api.label}) allows only {allowed:+.2f} ms"
        )
    if errors:
        print("! runs with errors (their numbers are not comparable):")
        for line in errors:
            print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--rounds", type=int, default=2, help="direct/gateway pairs per case")
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
        generator = f"wrk {version.split()[1]} (-t 1..2, keep-alive, --latency)"
    else:
        load = python_load
        why = "--python-load" if args.python_load else "wrk not found: apt-get install -y wrk"
        generator = (
            f"Python http.client threads, keep-alive ({why}); "
            "at 32 clients the client, not the server, may limit throughput"
        )
    cases = [Case(api, c) for api in APIS for c in CLIENTS]

    with churn_deployment(exe, not args.no_auth) as (direct, gateway, facts):
        check_answers(direct, gateway)
        print(
            f"churn model v1 on {IMAGE} ({facts['container cpus']} CPU), host: {os.cpu_count()} "
            f"cores; reconcile took {facts['reconcile']}"
        )
        print(f"direct:  {direct.base_url}")
        print(f"gateway: {gateway.base_url}  (auth: {facts['auth']})")
        print(f"load generator: {generator}")
        print(
            f"each: {args.warmup:g} s warm-up, then {args.duration:g} s measured; "
            f"{args.rounds} rounds, direct/gateway order alternating"
        )
        results = measure(load, cases, (direct, gateway), args.rounds, args.warmup, args.duration)
    report(cases, results)
    print(f"(medians of {args.rounds} rounds; whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
