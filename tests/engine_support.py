"""Helpers for tests against the real Docker engine: a tiny image, per-test instances, polling.

Every engine test gets its own GitOps root with its own instance name, and every container of
that instance is removed afterwards, so tests cannot see each other's containers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

import docker

from tests.conftest import PROJECT, cli, write_tree

TEST_IMAGE = "reconciler-test/busybox:2"

TINY_TEMPLATE = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: tiny-serving
spec:
  scenarioId: tiny
  inputs:
    parameters:
      - {name: version, default: "1"}
      - {name: readyDelay, default: "0"}
      - {name: plan, default: starter}
      - {name: replicas, default: "1"}
      - {name: image, default: "reconciler-test/busybox:2"}
      - {name: crash, default: ""}
  container:
    image: "{{ inputs.parameters.image }}"
    # With CRASH set, the "model server" fails at start the way a real one does without model.
    command:
      - sh
      - -c
      - >-
        if [ -n "$CRASH" ]; then echo loading model; echo token is $API_TOKEN;
        echo 'error: no model in /mnt/models' >&2; exit 3; fi; exec /bin/serve
    env:
      VERSION: "{{ inputs.parameters.version }}"
      READY_DELAY: "{{ inputs.parameters.readyDelay }}"
      CRASH: "{{ inputs.parameters.crash }}"
      API_TOKEN: "tok-0123456789-secret"
    resourcePlan: "{{ inputs.parameters.plan }}"
    replicas: "{{ inputs.parameters.replicas }}"
    startupTimeout: 30
    stopTimeout: 2
---
apiVersion: reconciler/v1
kind: ResourcePlan
metadata:
  name: tiny.plan
spec:
  cpus: 0.5
  memory: 512Mi
"""


def settings(instance: str, extra: str = "") -> str:
    return f"""
apiVersion: reconciler/v1
kind: Settings
metadata:
  name: host
spec:
  instance: {instance}
{extra}"""


def configuration(
    name: str, template: str = "tiny-serving", scenario: str = "tiny", **params: str
) -> str:
    bindings = "".join(f'    - key: {k}\n      value: "{v}"\n' for k, v in params.items())
    return f"""
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: {name}
spec:
  executableId: {template}
  scenarioId: {scenario}
  parameterBindings:
{bindings or "    []"}
""".replace("  parameterBindings:\n    []\n", "")


def deployment(name: str, config: str, extra: str = "") -> str:
    return f"""
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: {name}
spec:
  configurationId: {config}
{extra}"""


def docs(*parts: str) -> str:
    return "---".join(parts)


class Host:
    """A GitOps root of its own instance on the real engine."""

    def __init__(self, root: Path, instance: str, client: docker.APIClient) -> None:
        self.root = root
        self.instance = instance
        self.client = client

    def write(self, manifests: str, name: str = "manifests/app.yaml") -> None:
        (self.root / name).write_text(manifests)

    def cli(self, *args: str) -> Any:
        return cli(*args, "--root", self.root)

    def reconcile(self, *args: str, ok: bool = True) -> Any:
        result = self.cli("reconcile", *args)
        if ok:
            assert result.code == 0, result.out + result.err
        return result

    def status(self) -> dict[str, dict[str, Any]]:
        result = self.cli("status", "--json")
        assert result.code == 0, result.err
        return {d["name"]: d for d in json.loads(result.out)["deployments"]}

    def plan(self) -> dict[str, Any]:
        result = self.cli("plan", "--json")
        assert result.code in (0, 1), result.err
        return json.loads(result.out)

    def containers(self, all: bool = True) -> list[dict[str, Any]]:
        return self.client.containers(
            all=all, filters={"label": f"reconciler.instance={self.instance}"}
        )

    def container_of(self, name: str) -> dict[str, Any]:
        found = [c for c in self.containers() if c["Labels"]["reconciler.deployment-name"] == name]
        assert len(found) == 1, found
        return found[0]

    def snapshot(self) -> dict[str, Any]:
        return json.loads((self.root / "state/snapshot.json").read_text())

    def edit_record(self, name: str, **fields: Any) -> None:
        path = self.root / "state/snapshot.json"
        data = json.loads(path.read_text())
        for record in data["deployments"].values():
            if record["name"] == name:
                record.update(fields)
        path.write_text(json.dumps(data, indent=2, sort_keys=True))

    def cleanup(self) -> None:
        for c in self.containers():
            self.client.remove_container(c["Id"], force=True)


def make_root(tmp_path: Path, name: str = "repo") -> tuple[Path, str]:
    """A GitOps root (the tiny template) of an instance of its own, and that instance's name:
    what a test needs that talks to `reconciler serve` or the CLI but to no engine."""
    instance = f"t{uuid.uuid4().hex[:10]}"
    root = write_tree(
        tmp_path / name,
        {"templates/tiny.yaml": TINY_TEMPLATE, "manifests/settings.yaml": settings(instance)},
    )
    return root, instance


def make_host(tmp_path: Path, client: docker.APIClient, name: str = "repo") -> Host:
    return Host(*make_root(tmp_path, name), client)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def ensure_engine_and_image() -> docker.APIClient:
    """The engine tests' precondition: fail loudly (never skip) when Docker is missing."""
    subprocess.run([PROJECT / "scripts/ensure-docker"], check=True, capture_output=True)
    subprocess.run([PROJECT / "scripts/build-test-image", TEST_IMAGE], check=True)
    return docker.APIClient(version="auto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`reconciler serve` for a GitOps root, as a real child process on a free port."""

    def __init__(self, root: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log = root.parent / f"serve-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "reconciler", "serve", "--root", str(root)),
                    *extra,
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(self._up, timeout=30, what="reconciler serve to answer")
        except AssertionError:
            self.stop()
            raise AssertionError(f"serve did not start:\n{self.log.read_text()}") from None

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return http_get(self.base + "/healthz", timeout=0.5)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, Message, bytes]:
    """One HTTP request; the headers look up names case-insensitively."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def serve_root(tmp_path: Path, populate: Callable[[Path], None]) -> tuple[Path, str, Server]:
    """A GitOps root of its own instance (filled by `populate`) whose deployment URLs are the
    gateway's, with `reconciler serve --no-auth` running for it: the root, the instance, the
    server. Serving needs no engine until there are deployments to run."""
    root = tmp_path / "repo"
    (root / "manifests").mkdir(parents=True)
    (root / "templates").mkdir(exist_ok=True)
    populate(root)
    instance = f"t{uuid.uuid4().hex[:10]}"
    port = free_port()
    (root / "manifests/settings.yaml").write_text(
        settings(instance, f"  apiUrl: http://127.0.0.1:{port}\n")
    )
    return root, instance, Server(root, "--no-auth", port=port)


def served_host(
    tmp_path: Path, client: docker.APIClient, populate: Callable[[Path], None]
) -> tuple[Host, Server]:
    """`serve_root`'s root as a Host on the engine, and its server."""
    root, instance, server = serve_root(tmp_path, populate)
    return Host(root, instance, client), server
