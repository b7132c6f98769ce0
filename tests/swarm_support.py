"""A real multi-node Docker Swarm for tests: scripts/swarm-testbed, driven from pytest.

`swarm_testbed` (session-scoped) starts three dockerd nodes on this host in namespaces of their
own (node 1 the manager, node 3 advertising two `gpu` generic resources), yields a `Testbed`
that knows their sockets and addresses, and removes all of it at the end of the session. It
skips, with the script's one-line reason, where the machine cannot run it (not root, no network
namespaces). The host's default Docker engine is never touched. Tests that use it need root and
a Docker engine, so they are marked `engine`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "swarm-testbed"
DEFAULT_DIR = Path("/tmp/reconciler-swarm")


def testbed_dir() -> Path:
    """Where the script keeps the testbed; SWARM_TESTBED_DIR moves it, as for the script."""
    return Path(os.environ.get("SWARM_TESTBED_DIR", str(DEFAULT_DIR)))


def run_script(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """scripts/swarm-testbed with `args`; stdout and stderr together in `.stdout`."""
    return subprocess.run(
        [str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env={**os.environ, "SWARM_TESTBED_DIR": str(testbed_dir())},
    )


@dataclass
class Testbed:
    """The running testbed, as `up` described it in testbed.json. Nodes are numbered from 1."""

    base: Path
    manager: str
    nodes: list[str]
    addresses: list[str]
    hostnames: list[str]
    host_address: str
    gpu_node: int
    storage_driver: str = ""
    _client: docker.DockerClient | None = field(default=None, repr=False)

    __test__ = False  # not a test class, whatever pytest thinks of the name

    @classmethod
    def load(cls, base: Path) -> Testbed:
        info = json.loads((base / "testbed.json").read_text())
        return cls(
            base=base,
            manager=info["manager"],
            nodes=list(info["nodes"]),
            addresses=list(info["addresses"]),
            hostnames=list(info["hostnames"]),
            host_address=info["host_address"],
            gpu_node=int(info["gpu_node"]),
            storage_driver=info.get("storage_driver", ""),
        )

    @property
    def client(self) -> docker.DockerClient:
        """A client of the manager (node 1), made once."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.manager, timeout=10)
        return self._client

    def node_client(self, i: int) -> docker.DockerClient:
        """A new client of node `i`'s own daemon; the caller closes it."""
        return docker.DockerClient(base_url=self.nodes[i - 1], timeout=10)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def kill_node(self, i: int) -> None:
        """Lose node `i` as a host is lost: SIGKILL its dockerd and every process it left
        (containerd, shims, containers). Its data stays, for `start_node`. Node 1 is the only
        manager: while it is lost, the swarm has no API (`node_states` fails)."""
        self._script("kill-node", str(i))

    def start_node(self, i: int) -> None:
        """Boot node `i` again; returns once its dockerd answers. It rejoins the swarm with the
        same node ID by itself: wait for that with `wait_nodes_ready`."""
        self._script("start-node", str(i))

    def _script(self, *args: str) -> None:
        proc = run_script(*args, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"swarm-testbed {' '.join(args)} failed:\n{proc.stdout}")

    def node_ids(self) -> dict[str, str]:
        """{hostname: swarm node ID}, from the manager."""
        return {n.attrs["Description"]["Hostname"]: n.id for n in self.client.nodes.list()}

    def node_states(self) -> dict[str, tuple[str, str]]:
        """{hostname: (state, availability)} as the manager sees them, e.g. ("ready", "active");
        state is one of unknown, down, ready, disconnected."""
        return {
            n.attrs["Description"]["Hostname"]: (
                n.attrs["Status"]["State"],
                n.attrs["Spec"]["Availability"],
            )
            for n in self.client.nodes.list()
        }

    def wait_node_state(self, i: int, state: str, deadline_s: float) -> float:
        """Wait until the manager reports node `i` in `state`; the seconds that took. Fails with
        the last states seen once `deadline_s` seconds have passed."""
        hostname = self.hostnames[i - 1]
        start = time.monotonic()
        states: dict[str, tuple[str, str]] = {}
        while time.monotonic() - start < deadline_s:
            states = self.node_states()
            if states.get(hostname, ("", ""))[0] == state:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(
            f"{hostname} not {state!r} within {deadline_s}s; the manager says {states}"
        )

    def wait_nodes_ready(self, deadline_s: float) -> dict[str, tuple[str, str]]:
        """Wait until every node of the testbed is `ready`; the states then. Fails with the
        last states seen once `deadline_s` seconds have passed."""
        start = time.monotonic()
        states: dict[str, tuple[str, str]] = {}
        while time.monotonic() - start < deadline_s:
            states = self.node_states()
            if all(states.get(h, ("", ""))[0] == "ready" for h in self.hostnames):
                return states
            time.sleep(0.2)
        raise AssertionError(
            f"not every node ready within {deadline_s}s; the manager says {states}"
        )


@pytest.fixture(scope="session")
def swarm_testbed() -> Iterator[Testbed]:
    """Three Docker Swarm nodes on this host for the whole session; removed at its end."""
    check = run_script("check", timeout=60)
    if check.returncode == 2:
        pytest.skip(check.stdout.strip() or "swarm-testbed check: this machine cannot run it")
    if check.returncode != 0:
        pytest.fail(f"swarm-testbed check failed ({check.returncode}):\n{check.stdout}")
    try:
        up = run_script("up")
    except subprocess.TimeoutExpired as timeout:
        run_script("down")
        said = timeout.output or b""  # bytes even with text=True, when run() times out
        text = said.decode(errors="replace") if isinstance(said, bytes) else said
        pytest.fail(f"swarm-testbed up took over {timeout.timeout}s:\n{text}")
    if up.returncode != 0:
        down = run_script("down")
        pytest.fail(f"swarm-testbed up failed:\n{up.stdout}\n(down afterwards:)\n{down.stdout}")
    testbed = Testbed.load(testbed_dir())
    try:
        yield testbed
    finally:
        testbed.close()
        down = run_script("down")
        if down.returncode != 0:
            pytest.fail(f"swarm-testbed down failed:\n{down.stdout}")
