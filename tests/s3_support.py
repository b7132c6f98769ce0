"""A real S3-compatible server for tests: `s3s-fs` (crates.io, installed by
scripts/ensure-s3s-fs when missing) serving a temporary folder on a free loopback port, with
SigV4 authentication. Tests talk to it with boto3, the same client the reconciler uses; the
server is a separate process, so "the store is down" is a real stop."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent
ACCESS_KEY = "reconciler-test-key"
SECRET_KEY = "reconciler-test-secret-0123456789"
# One customer's record, as the churn model's tests send it.
CHURN_RECORD = {
    "region": 3, "tenure": 37, "age": 53, "address": 13, "income": 48, "employ": 10,
    "gender": 0, "equip": 0,
}  # fmt: skip


def store_configuration(suffix: str, url: str) -> str:
    """Manifests of a model artifact `churn-model-<suffix>` at `url` (a store's URL) and a
    configuration `churn-<suffix>` of the churn serving template bound to it."""
    return f"""---
apiVersion: reconciler/v1
kind: Artifact
metadata: {{name: churn-model-{suffix}}}
spec: {{kind: model, url: "{url}", scenarioId: churn}}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {{name: churn-{suffix}}}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  inputArtifactBindings: [{{key: churnmodel, artifactId: churn-model-{suffix}}}]
"""


def deployment(name: str, configuration: str) -> str:
    return f"""---
apiVersion: reconciler/v1
kind: Deployment
metadata: {{name: {name}}}
spec: {{configurationId: {configuration}}}
"""


def churn_from_store(suffix: str, url: str) -> str:
    """store_configuration's two manifests and a deployment `churn-<suffix>` of it."""
    return store_configuration(suffix, url) + deployment(f"churn-{suffix}", f"churn-{suffix}")


@dataclass
class S3Server:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    # Where it listens: loopback, or 0.0.0.0 for clients elsewhere too (a Swarm's nodes).
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        """Where this machine reaches it."""
        return "127.0.0.1" if self.host == "0.0.0.0" else self.host

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self, binary: str) -> None:
        self.process = subprocess.Popen(
            [
                binary,
                *("--host", self.host, "--port", str(self.port)),
                *("--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY),
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"s3s-fs exited {self.process.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("s3s-fs did not listen within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def client(self, secret_key: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def bucket(self) -> str:
        """A new bucket of its own for a test."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3s_binary() -> str:
    done = subprocess.run(
        [PROJECT / "scripts/ensure-s3s-fs"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"no S3 server for the tests: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def s3_server(s3s_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"), _free_port())
    server.start(s3s_binary)
    yield server
    server.stop()


class FaultyLink:
    """A TCP relay in front of a server that can cut or stall it, for a store that goes down
    or hangs midway: `down_after` bytes from the server (counted over every connection) then
    cuts them all and refuses new ones until `heal()`; `stall` takes connections and never
    answers; `flip_at` damages the byte at that count (a bit flipped on the way). `relayed`
    counts the bytes that came from the server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.down_after: int | None = None
        self.flip_at: int | None = None
        self.stall = False
        self.relayed = 0
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def heal(self) -> None:
        with self.lock:
            self.down_after, self.flip_at, self.stall, self.relayed = None, None, False, 0

    def _down(self) -> bool:
        return self.down_after is not None and self.relayed >= self.down_after

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self._down():
                    client.close()
                    continue
                self.sockets.append(client)
            if self.stall:
                continue  # taken, never answered
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if counted:
                    with self.lock:
                        before = self.relayed
                        self.relayed += len(data)
                        cut = self._down()
                        if self.flip_at is not None and before <= self.flip_at < self.relayed:
                            at = self.flip_at - before
                            data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
                    if cut:
                        break
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()
