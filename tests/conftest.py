"""Shared test helpers: GitOps roots made of real files, and the real CLI.

`gitops(files)` writes a GitOps root under pytest's tmp_path; `cli(...)` runs the command line
in-process (fast, real code path); `cli_process(...)` runs the installed console script in a
child process, for what only a real process shows (exit codes, tracebacks, signals).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.cli.main import main
from tests.browser_support import chromium  # noqa: F401  (a fixture: registered here)
from tests.s3_support import s3_server, s3s_binary  # noqa: F401  (fixtures: registered here)
from tests.swarm_support import swarm_testbed  # noqa: F401  (a fixture: registered here)

# Per-instance files the tool keeps outside the GitOps root (credentials of `serve`, the key of
# the secret-value digests) go to ~/.config/reconciler/<instance>/: the tests' instances keep
# theirs in a folder of this run, not in the home folder of whoever runs them. Set before any
# test starts a child process, so `reconciler serve` children inherit it.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="reconciler-tests-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], True)

PROJECT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(*args: str | Path) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def cli_process(*args: str | Path, timeout: float = 120, **kwargs: object) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def git(root: Path, *args: str) -> str:
    """Run git in `root` (a real repository) as a test author; its output, stripped."""
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    for folder in ("manifests", "templates"):
        (root / folder).mkdir(exist_ok=True)
    return root


@pytest.fixture
def gitops(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    def make(files: dict[str, str], name: str = "repo") -> Path:
        return write_tree(tmp_path / name, files)

    return make


# A small, valid repository in the project's own template form; tests edit copies of it.
ECHO_TEMPLATE = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: echo-serving
spec:
  scenarioId: echo
  inputs:
    parameters:
      - name: greeting
        default: hello
      - name: port
        default: "8080"
    artifacts:
      - name: model
  container:
    image: "echo/server:{{ inputs.parameters.greeting }}"
    env:
      GREETING: "{{ inputs.parameters.greeting }}"
    port: "{{ inputs.parameters.port }}"
    modelArtifact: model
"""

ECHO_MANIFESTS = """
apiVersion: reconciler/v1
kind: Artifact
metadata:
  name: echo-model
spec:
  kind: model
  url: file:models/echo
  scenarioId: echo
---
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: echo-config
spec:
  executableId: echo-serving
  scenarioId: echo
  inputArtifactBindings:
    - key: model
      artifactId: echo-model
---
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: echo
spec:
  configurationId: echo-config
"""


@pytest.fixture
def echo_repo(gitops: Callable[..., Path]) -> Path:
    return gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": ECHO_MANIFESTS})


@pytest.fixture(scope="session")
def docker_client():
    from tests.engine_support import ensure_engine_and_image

    return ensure_engine_and_image()


@pytest.fixture
def host(tmp_path: Path, docker_client):
    from tests.engine_support import make_host

    h = make_host(tmp_path, docker_client)
    yield h
    h.cleanup()


@pytest.fixture
def make_hosts(tmp_path: Path, docker_client):
    """Several GitOps roots (instances) on the same engine."""
    from tests.engine_support import make_host

    made = []

    def make(name: str):
        h = make_host(tmp_path, docker_client, name)
        made.append(h)
        return h

    yield make
    for h in made:
        h.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`engine` means "needs a running Docker engine": a test that asks for the engine's
    fixtures must be marked, so that `-m "not engine"` never needs one. (The other way round,
    a test that needs no engine is not marked: the relay tests, tests/test_cli_errors.py; but
    for two slow ones in tests/test_auth_security.py, which say why.)"""
    engine_fixtures = {"docker_client", "host", "make_hosts", "swarm_testbed"}
    unmarked = [
        item.nodeid
        for item in items
        if engine_fixtures & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("engine") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the Docker engine but are not marked `engine`:\n  "
            + "\n  ".join(unmarked)
        )
