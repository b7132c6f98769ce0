"""Benchmark: the dashboard's deployments page (/ui/ of `reconciler serve`) with N deployments
(issue 19: with 200, it "renders server-side in under 100 ms and is usable in the browser in
under 1 s"). All in one run:

A temporary GitOps root (a git repository) with N deployments of one configuration in one
resource group: the tiny busybox image of the engine tests (/bin/serve, a busybox httpd
standing in for a model server, 0.05 CPU and 24 MiB each), with an environment value that is
secret by its name, so that every page's redaction runs too. `reconciler reconcile --parallel
32` starts them (real containers; about a minute for 200 on a 2-core machine); `reconciler
serve` serves them, OAuth2 on as in production (a client of the bench's own, in a credentials
file next to the root).

1. Server side. GET /ui/ (signed in through /ui/login, as a browser is: the session cookie),
   the whole answer read, over loopback: the median and p90 of `--requests` (after 3 to warm
   up). The peer, interleaved request by request: GET /v2/lm/deployments, the AI API's list of
   the same N statuses as JSON (same server, same client, bearer token): what the page costs
   beyond the statuses it shows. Target: median page < 100 ms.
2. Where the time goes. The page's steps, in this process on the same root and engine (the
   code the route runs, timed apart; median of `--requests`): the statuses (the engine's
   containers, the recorded snapshot, the desired state: `ApiContext.statuses`), the rows
   (`pages.deployment_rows`), the filtering and sorting (`pages.listing`), and the template.
   Here the statuses list the containers themselves (serve takes its routing table's list
   while under a second old, `serve/routes.py` RECENT_SECONDS): what one list costs.
   The host's load average is printed beside: 200 containers' health checks (one exec each
   every 10 s) keep a 2-core host busy, and every number here moves with it.
3. In the browser. A headless Chromium (scripts/ensure-chromium; Selenium) signs in through
   the form, then loads /ui/ `--loads` times (the first with an empty cache). Each load's
   navigation timing (performance.getEntriesByType("navigation")): the first byte, the DOM
   content loaded (the page usable: its table there, its script run) and the load event (its
   stylesheet applied), in ms from the navigation's start. Target: median load event < 1 s.

Everything (serve, the containers of this run's instance, the temporary root) is removed at
the end, also on failure. Only containers labelled with this run's instance are touched.

    scripts/build-test-image; scripts/ensure-chromium   # (the image and the browser)
    .venv/bin/python bench/dashboard.py [N] [--requests 30] [--loads 10] [--no-browser]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inference_latency import free_port, remove_containers, run, stop  # noqa: E402

PROJECT = HERE.parent
IMAGE = "reconciler-test/busybox:2"
PAGE_TARGET_MS = 100.0
BROWSER_TARGET_MS = 1000.0
WARM_UP = 3
GROUP = "default"

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
    env: {{VERSION: "1", API_TOKEN: "bench-secret-value"}}
    resourcePlan: bench.plan
    startupTimeout: 120
    stopTimeout: 1
---
apiVersion: reconciler/v1
kind: ResourcePlan
metadata:
  name: bench.plan
spec: {{cpus: 0.05, memory: 24Mi}}
---
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: bench-config
spec:
  executableId: bench-serving
  scenarioId: bench
"""

OK, NOT_OK = "OK", "NOT OK"


def verdict(good: bool) -> str:
    return OK if good else NOT_OK


def gitops_root(root: Path, instance: str, n: int) -> None:
    (root / "templates").mkdir(parents=True)
    (root / "manifests").mkdir()
    (root / "templates" / "bench.yaml").write_text(TEMPLATE)
    docs = ["apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\n"]
    docs[0] += f"spec: {{instance: {instance}}}\n"
    docs += [
        "apiVersion: reconciler/v1\nkind: Deployment\n"
        f"metadata: {{name: model-{i:03d}, resourceGroup: {GROUP}}}\n"
        "spec: {configurationId: bench-config}\n"
        for i in range(n)
    ]
    (root / "manifests" / "deployments.yaml").write_text("---\n".join(docs))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        git = ["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=b@b"]
        subprocess.run([*git, *args], check=True, capture_output=True)


# --- HTTP ------------------------------------------------------------------------------------


class Client:
    """One keep-alive connection to serve (as a browser keeps one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()  # (an idle keep-alive closed by the server: once more)
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def timed(self, path: str, headers: dict[str, str]) -> tuple[float, int, bytes]:
        t0 = time.perf_counter()
        status, _, body = self.call("GET", path, headers=headers)
        return (time.perf_counter() - t0) * 1000, status, body


def cookie_of(headers: http.client.HTTPMessage, name: str) -> str:
    for line in headers.get_all("Set-Cookie") or ():
        key, _, rest = line.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    raise RuntimeError(f"no cookie {name} in {headers}")


def sign_in(client: Client, client_id: str, secret: str) -> str:
    """The session cookie, through the sign-in form (as a browser gets it)."""
    _, headers, page = client.call("GET", "/ui/login")
    nonce = cookie_of(headers, "reconciler_ui_login")
    assert f'value="{nonce}"' in page.decode(), "the sign-in form has no nonce"
    form = urlencode(
        {"nonce": nonce, "next": "/ui/", "client_id": client_id, "client_secret": secret}
    )
    status, headers, body = client.call(
        "POST",
        "/ui/login",
        form.encode(),
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"reconciler_ui_login={nonce}",
        },
    )
    if status != 303:
        raise RuntimeError(f"/ui/login answered {status}: {body[:300]!r}")
    return cookie_of(headers, "reconciler_ui")


def bearer(client: Client, client_id: str, secret: str) -> str:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    status, _, body = client.call(
        "POST",
        "/oauth/token",
        urlencode(form).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    if status != 200:
        raise RuntimeError(f"/oauth/token answered {status}: {body[:300]!r}")
    return str(json.loads(body)["access_token"])


# --- the measurements ------------------------------------------------------------------------


def server_side(
    client: Client, cookie: str, token: str, n: int, requests: int
) -> dict[str, list[float]]:
    """GET /ui/ and GET /v2/lm/deployments, interleaved; each answer checked."""
    page_headers = {"Cookie": f"reconciler_ui={cookie}"}
    api_headers = {"Authorization": f"Bearer {token}", "AI-Resource-Group": GROUP}
    out: dict[str, list[float]] = {"page": [], "api": []}
    size = {"page": 0, "api": 0}
    for i in range(WARM_UP + requests):
        ms, status, body = client.timed("/ui/", page_headers)
        text = body.decode()
        if status != 200 or f"{n} deployments:" not in text or text.count('<tr id="d-') != n:
            raise RuntimeError(f"/ui/ answered {status} without the {n} deployments")
        if "bench-secret-value" in text:
            raise RuntimeError("/ui/ shows the secret value")
        size["page"] = len(body)
        if i >= WARM_UP:
            out["page"].append(ms)
        ms, status, body = client.timed("/v2/lm/deployments", api_headers)
        if status != 200 or json.loads(body)["count"] != n:
            raise RuntimeError(f"/v2/lm/deployments answered {status}: {body[:300]!r}")
        size["api"] = len(body)
        if i >= WARM_UP:
            out["api"].append(ms)
    print(f"  answers: /ui/ {size['page'] / 1024:.0f} KiB, /v2/lm/deployments "
          f"{size['api'] / 1024:.0f} KiB")  # fmt: skip
    return out


def breakdown(root: Path, requests: int) -> dict[str, list[float]]:
    """The route's steps (reconciler.dashboard.routes.deployments_page), timed apart."""
    from datetime import UTC, datetime

    from reconciler.api.auth import Identity
    from reconciler.api.context import ApiContext
    from reconciler.backends import connect
    from reconciler.dashboard import pages
    from reconciler.dashboard.routes import Dashboard
    from reconciler.dashboard.session import CSRF_FIELD, Viewer
    from reconciler.manifests.desired import desired_state

    settings = desired_state(root).repo.settings
    ctx = ApiContext(root, connect(settings), None, lambda reason: None)
    dashboard = Dashboard(ctx)
    viewer = Viewer(Identity("bench", "bench", (GROUP,)), "0" * 40)
    template = dashboard.templates.get_template("deployments.html")
    steps: dict[str, list[float]] = {"statuses": [], "rows": [], "listing": [], "template": []}
    for i in range(WARM_UP + requests):
        times = []
        t0 = time.perf_counter()
        state = ctx.state()
        snapshot = ctx.snapshot(state)
        statuses = ctx.statuses(state, "http://127.0.0.1")
        times.append(time.perf_counter())
        rows = pages.deployment_rows(statuses, state, snapshot, viewer, datetime.now(UTC))
        times.append(time.perf_counter())
        listing = pages.listing(rows, "", "", "name", False)
        times.append(time.perf_counter())
        template.render(
            viewer=viewer,
            csrf_field=CSRF_FIELD,
            path="/ui/",
            auth=True,
            listing=listing,
            statuses=pages.STATUSES,
            query="",
            problems=(),
            notice="",
        )
        times.append(time.perf_counter())
        if i >= WARM_UP:
            for name, start, end in zip(steps, [t0, *times], times, strict=False):
                steps[name].append((end - start) * 1000)
    return steps


NAVIGATION = """
const e = performance.getEntriesByType("navigation")[0];
return {ttfb: e.responseStart, response: e.responseEnd, interactive: e.domInteractive,
        dcl: e.domContentLoadedEventEnd, load: e.loadEventEnd, size: e.transferSize};
"""


def in_browser(base: str, client_id: str, secret: str, n: int, loads: int) -> list[dict[str, Any]]:
    """Navigation timings of `loads` loads of /ui/ in headless Chromium, signed in."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    found = subprocess.run(
        [PROJECT / "scripts/ensure-chromium"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        raise RuntimeError(f"no headless Chromium: {found.stderr.strip()}")
    browser, driver_path = found.stdout.strip().splitlines()[-2:]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_page_load_timeout(30)
        driver.get(base + "/ui/login")
        driver.find_element(By.ID, "client_id").send_keys(client_id)
        driver.find_element(By.ID, "client_secret").send_keys(secret)
        driver.find_element(By.CSS_SELECTOR, "form[action='/ui/login'] button").click()
        deadline = time.monotonic() + 30
        while (
            "/ui/login" in driver.current_url
            or driver.execute_script("return document.readyState") != "complete"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"signing in did not reach /ui/: {driver.current_url}")
            time.sleep(0.05)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})  # the first load: cold
        timings = []
        for _ in range(loads):
            driver.get(base + "/ui/")  # (returns once the load event has fired)
            rows = driver.execute_script("return document.querySelectorAll('tr[id^=d-]').length")
            if rows != n:
                raise RuntimeError(f"the browser shows {rows} deployments, not {n}")
            timings.append(driver.execute_script(NAVIGATION))
        return timings
    finally:
        driver.quit()


# --- the run ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def p90(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.9 * len(values)) - 1)]


def wait_for(check: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer")
        time.sleep(0.1)


def healthy(port: int) -> bool:
    try:
        return Client(port).call("GET", "/healthz")[0] == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=200, help="deployments (200)")
    parser.add_argument("--requests", type=int, default=30, help="timed GETs of each (30)")
    parser.add_argument("--loads", type=int, default=10, help="browser loads of /ui/ (10)")
    parser.add_argument("--no-browser", action="store_true", help="skip the browser part")
    args = parser.parse_args()
    n = args.n
    subprocess.run([PROJECT / "scripts/build-test-image", IMAGE], check=True)
    exe = shutil.which("reconciler") or str(Path(sys.executable).parent / "reconciler")
    instance = f"bench{uuid.uuid4().hex[:8]}"
    serve: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        gitops_root(root, instance, n)
        try:
            print(f"reconcile: starting {n} containers ...", flush=True)
            t0 = time.perf_counter()
            run([exe, "reconcile", "--root", str(root), "--parallel", "32", "--lock-timeout", "0"])
            print(f"  {n} running after {time.perf_counter() - t0:.0f} s", flush=True)
            credentials = Path(tmp) / "clients.json"
            added = run(
                [exe, "clients", "add", "bench", "-g", GROUP, "--root", str(root),
                 "--credentials", str(credentials), "--json"]
            )  # fmt: skip
            client_id, secret = (json.loads(added)[k] for k in ("clientId", "clientSecret"))
            port = free_port()
            log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115  (closed with the dir)
            serve = subprocess.Popen(
                [exe, "serve", "--root", str(root), "--port", str(port),
                 "--credentials", str(credentials)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            wait_for(lambda: healthy(port), serve, "reconciler serve")
            client = Client(port)
            cookie = sign_in(client, client_id, secret)
            token = bearer(client, client_id, secret)
            print("server side: GET /ui/ and its peer GET /v2/lm/deployments ...", flush=True)
            served = server_side(client, cookie, token, n, args.requests)
            print("where the time goes (in process) ...", flush=True)
            steps = breakdown(root, args.requests)
            timings: list[dict[str, Any]] = []
            if not args.no_browser:
                print(f"in the browser: {args.loads} loads of /ui/ ...", flush=True)
                timings = in_browser(f"http://127.0.0.1:{port}", client_id, secret, n, args.loads)
        finally:
            if serve is not None:
                stop(serve)
            remove_containers(instance)
    report(n, args.requests, served, steps, timings)


def report(
    n: int,
    requests: int,
    served: dict[str, list[float]],
    steps: dict[str, list[float]],
    timings: list[dict[str, Any]],
) -> None:
    page, api = median(served["page"]), median(served["api"])
    print()
    print(f"The deployments page with {n} deployments (median of {requests}; ms)")
    print(f"  {'':34} {'median':>8} {'p90':>8}")
    print(f"  {'GET /ui/ (HTML page)':34} {page:8.1f} {p90(served['page']):8.1f}")
    print(f"  {'GET /v2/lm/deployments (peer)':34} {api:8.1f} {p90(served['api']):8.1f}")
    print(f"  load average over the last minute at the end: {os.getloadavg()[0]:.1f}")
    print(f"  page / peer: {page / api:.2f}x; beyond the statuses the page costs "
          f"{page - api:.1f} ms")  # fmt: skip
    print("  the route's steps, in process (the statuses with a container list of their own;")
    print("  serve takes its routing table's list while under a second old):")
    total = 0.0
    for name, values in steps.items():
        total += median(values)
        print(f"    {name:32} {median(values):8.1f} {p90(values):8.1f}")
    share = median(steps["statuses"]) / total if total else 0.0
    print(f"    {'sum':32} {total:8.1f}   (statuses {share:.0%} of it)")
    print(f"  target: GET /ui/ median < {PAGE_TARGET_MS:.0f} ms: {verdict(page < PAGE_TARGET_MS)}")
    if not timings:
        print("  (browser part skipped)")
        return
    print(f"In headless Chromium ({len(timings)} loads of /ui/, the first with an empty cache; ms "
          "from the navigation's start)")  # fmt: skip
    print(f"  {'':34} {'first':>8} {'median':>8} {'max':>8}")
    for key, label in (
        ("ttfb", "first byte"),
        ("response", "whole answer"),
        ("interactive", "DOM interactive"),
        ("dcl", "DOMContentLoaded (usable)"),
        ("load", "load event"),
    ):
        values = [float(t[key]) for t in timings]
        print(f"  {label:34} {values[0]:8.1f} {median(values):8.1f} {max(values):8.1f}")
    load = median([float(t["load"]) for t in timings])
    print(
        f"  target: usable (load event) median < {BROWSER_TARGET_MS:.0f} ms: "
        f"{verdict(load < BROWSER_TARGET_MS)}"
    )


if __name__ == "__main__":
    main()
