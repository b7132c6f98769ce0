"""The Docker engine: the one module that talks to Docker (its client wrapper, `Engine`).

`DockerBackend` (backend.py) drives it and turns its JSON into the neutral records; nothing
else works on Docker's shapes. Changes go through the Docker SDK's low-level `APIClient`, whose
container list returns summaries with labels, state and ports in one call (the high-level
client would inspect every container: N+1 calls on the no-op path).

Observing is two GET requests. On a local engine (a unix socket, the usual case) they are sent
with the standard library's HTTP client: importing the SDK and its `requests` stack costs about
80 ms, more than the two calls themselves, and a no-op `plan` should cost little more than
those calls. The SDK is loaded the first time something is changed, or for remote engines.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import shlex
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...manifests.spec import MODEL_MOUNT, ContainerSpec
from ..base import EngineError, EngineUnreachable, NotFound
from .parse import NO_PROBE_TOOL

__all__ = [
    "ContainerRequest",
    "Engine",
    "EngineError",
    "EngineUnreachable",
    "EventStream",
    "NotFound",
]

if TYPE_CHECKING:
    import docker

_CPU_PERIOD = 100_000  # CFS period; CPU limits are quota/period (docker update can change them)
_DEFAULT_SOCKET = "unix:///var/run/docker.sock"
_OWN_MEMORY = 600.0  # seconds an own stop/remove is remembered (its events come within ms)
_NS = 1_000_000_000
# Python's probe, for images without wget or curl (most model servers have Python): the
# exception's own words are the check's output.
_PY_HTTP = (
    "import sys,urllib.request\n"
    "try: urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).close()\n"
    "except Exception as e: sys.exit(f'GET {sys.argv[1]}: {e}')"
)
_PY_TCP = (
    "import socket,sys\n"
    "try: socket.create_connection(('127.0.0.1', int(sys.argv[1])), float(sys.argv[2])).close()\n"
    "except OSError as e: sys.exit(f'connect to port {sys.argv[1]}: {e}')"
)


@dataclass(frozen=True)
class ContainerRequest:
    """Everything needed to create one container of a deployment."""

    name: str
    spec: ContainerSpec
    labels: dict[str, str]
    publish_address: str
    cpus: float  # possibly limited to what the host has
    gpu_ids: tuple[str, ...] = ()


def health_check(spec: ContainerSpec) -> dict[str, Any]:
    """The container's HEALTHCHECK: its readiness probe, run by the engine from inside the
    container with whatever the image has (wget, curl, Python; for a TCP probe Python or nc),
    so that `docker ps` shows it and health_status events report a server that stops
    answering. Docker kills a check that outlives its timeout; the probe's own timeout is a
    second shorter, so the output says what the probe saw rather than Docker's "exceeded"."""
    probe = spec.readiness
    port, seconds = spec.probe_port, probe.timeout_seconds
    q = shlex.quote
    # A proxy in the image's environment must not carry a probe of the container itself.
    steps = ["unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY"]
    if probe.path is not None:
        raw_url = f"http://127.0.0.1:{port}{probe.path}"
        url = q(raw_url)
        tools = [
            ("curl", f"curl -fsS -m {seconds} -o /dev/null {url}"),
            # No -T: Debian's busybox wget (1.35) crashes with it; Docker's own timeout, a
            # second longer, ends a wget that hangs ("Health check exceeded timeout").
            ("wget", f"wget -q -O /dev/null {url}"),
            ("python3", f"python3 -c {q(_PY_HTTP)} {url} {seconds}"),
            ("python", f"python -c {q(_PY_HTTP)} {url} {seconds}"),
        ]
        what = f"GET {raw_url}"
    else:
        tools = [
            ("python3", f"python3 -c {q(_PY_TCP)} {port} {seconds}"),
            ("python", f"python -c {q(_PY_TCP)} {port} {seconds}"),
            ("nc", f"nc -z -w {seconds} 127.0.0.1 {port}"),
        ]
        what = f"connect to port {port}"
    chain = []
    for i, (tool, command) in enumerate(tools):
        keyword = "if" if i == 0 else "elif"
        # wget -q and nc -z say nothing when they fail: name the probe and the exit status.
        chain.append(
            f"{keyword} command -v {tool} >/dev/null 2>&1; then "
            f'{command} || {{ echo {q(what + " failed")} "({tool} exit $?)"; exit 1; }}'
        )
    chain.append(f"else echo {q(NO_PROBE_TOOL + ' (curl, wget, python3 or nc) in the image')}")
    chain.append("exit 1; fi")
    steps.append("; ".join(chain[:-2]) + "; " + "; ".join(chain[-2:]))
    return {
        "test": ["CMD-SHELL", "; ".join(steps)],
        "interval": probe.period_seconds * _NS,
        "timeout": (seconds + 1) * _NS,
        "retries": probe.failure_threshold,
        # Failures while the model loads do not count: the start-up wait judges that phase.
        "start_period": spec.startup_timeout * _NS,
    }


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, str) and explanation.strip():
        return explanation.strip()
    return str(exc)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Engine:
    def __init__(self, where: str, kwargs: dict[str, Any], timeout: float) -> None:
        self.where = where
        self._kwargs = kwargs
        self._timeout = timeout
        self._pull_lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._sdk: docker.APIClient | None = None
        # Containers this handle stopped or removed, by id or name, with when: the Docker events
        # these calls cause are the reconciler's own, not drift (see `caused`).
        self._own: dict[str, float] = {}
        self._own_lock = threading.Lock()
        local = where.startswith("unix://") and not kwargs.get("tls")
        self._socket_path = where[len("unix://") :] if local else None

    @property
    def local(self) -> bool:
        """Whether the engine runs on this host (a unix socket): its containers' addresses
        may then be reachable from here."""
        return self._socket_path is not None

    @classmethod
    def connect(cls, timeout: float = 60, host: str | None = None) -> Engine:
        """An engine handle at `host` (a Docker host URL; None: DOCKER_HOST, else the local
        socket); nothing is sent until the first call (which says if it is down). TLS for a
        tcp:// host comes from DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as for the docker CLI;
        an ssh:// host goes through the system's ssh client (its config and agent)."""
        host = host or os.environ.get("DOCKER_HOST") or _DEFAULT_SOCKET
        if host.startswith("unix://") and not os.environ.get("DOCKER_TLS_VERIFY"):
            return cls(host, {"base_url": host}, timeout)
        import docker

        try:
            kwargs = docker.utils.kwargs_from_env(environment={**os.environ, "DOCKER_HOST": host})
        except docker.errors.DockerException as exc:
            raise EngineUnreachable(cls._unreachable(host, exc)) from None
        if host.startswith("ssh://"):
            kwargs["use_ssh_client"] = True  # the ssh binary: no paramiko dependency
        return cls(kwargs.get("base_url") or host, kwargs, timeout)

    @property
    def _client(self) -> docker.APIClient:
        with self._client_lock:
            if self._sdk is None:
                import docker

                try:
                    self._sdk = docker.APIClient(
                        version="auto", timeout=self._timeout, **self._kwargs
                    )
                except docker.errors.DockerException as exc:
                    raise EngineUnreachable(self._unreachable(self.where, exc)) from None
            return self._sdk

    @staticmethod
    def _unreachable(where: str, exc: Exception) -> str:
        reason = str(exc).split(" (Caused by")[0][:200]
        return (
            f"Docker engine unreachable at {where} ({reason}): start it "
            "(sudo systemctl start docker, or scripts/ensure-docker) or set DOCKER_HOST"
        )

    @property
    def sdk(self) -> docker.APIClient:
        """The SDK's low-level client, for the engine kinds built on this one (Swarm)."""
        return self._client

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One SDK call, with this handle's error mapping (see `_call`)."""
        return self._call(fn, *args, **kwargs)

    def get(self, path: str, query: dict[str, str]) -> Any:
        """A read-only API call (`path` as the API names it): the standard library's HTTP
        client on a local socket, the SDK elsewhere."""
        if self._socket_path is not None:
            return self._get(self._socket_path, path, query)
        client = self._client
        return self._call(
            lambda: client._result(client._get(client._url(path), params=query), True)
        )

    def _get(self, socket_path: str, path: str, query: dict[str, str]) -> Any:
        """A read-only API call to a local engine, with the standard library."""
        conn = _UnixConnection(socket_path, self._timeout)
        try:
            conn.request("GET", f"{path}?{urllib.parse.urlencode(query)}")
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise EngineUnreachable(self._unreachable(self.where, exc)) from None
        finally:
            conn.close()
        if response.status >= 400:
            try:
                message = json.loads(body).get("message")
            except ValueError:
                message = None
            raise EngineError(message or f"{path} answered {response.status}")
        return json.loads(body)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One SDK call; connection failures become EngineUnreachable, refusals EngineError,
        a missing container or image NotFound."""
        import docker.errors
        import requests

        try:
            return fn(*args, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise EngineUnreachable(self._unreachable(self.where, exc)) from None
        except docker.errors.NotFound as exc:
            raise NotFound(_explain(exc)) from None
        except docker.errors.APIError as exc:
            raise EngineError(_explain(exc)) from None

    # -- observing --------------------------------------------------------------------------

    def list_containers(self, label_filters: list[str]) -> list[dict[str, Any]]:
        if self._socket_path is None:
            return self._call(self._client.containers, all=True, filters={"label": label_filters})
        filters = json.dumps({"label": label_filters})
        return self._get(self._socket_path, "/containers/json", {"all": "1", "filters": filters})

    def images(self) -> list[dict[str, Any]]:
        if self._socket_path is None:
            return self._call(self._client.images)
        return self._get(self._socket_path, "/images/json", {})

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        try:
            return self._call(self._client.inspect_container, container_id)
        except NotFound:
            return None

    @functools.cached_property
    def ncpus(self) -> int:
        return int(self._call(self._client.info).get("NCPU") or 1)

    def logs(
        self,
        container_id: str,
        tail: int | str = "all",
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> bytes:
        try:
            return self._call(
                self._client.logs, container_id, tail=tail, since=since, timestamps=timestamps
            )
        except NotFound:
            return b""

    def log_streams(
        self, container_id: str, since: datetime, until: datetime | None
    ) -> Iterator[tuple[str, bytes]]:
        """("stdout" | "stderr", lines with RFC 3339 timestamps) of one container."""
        for stream in ("stdout", "stderr"):
            try:
                raw = self._call(
                    self._client.logs,
                    container_id,
                    stdout=stream == "stdout",
                    stderr=stream == "stderr",
                    timestamps=True,
                    since=since,
                    until=until,
                )
            except NotFound:
                return
            yield stream, raw

    def image_id(self, ref: str) -> str | None:
        try:
            return self._call(self._client.inspect_image, ref)["Id"]
        except NotFound:
            return None

    def ensure_image(self, ref: str) -> str:
        """The image's id, pulling it when it is not on the host (as compose does)."""
        image_id = self.image_id(ref)
        if image_id:
            return image_id
        with self._pull_lock:  # one pull per image, however many deployments use it
            image_id = self.image_id(ref)
            if image_id:
                return image_id
            try:
                self._call(self._client.pull, ref)
            except (EngineError, NotFound) as exc:
                raise EngineError(
                    f"image {ref} is not on this host and could not be pulled ({_explain(exc)}); "
                    "build or load it (docker load) first"
                ) from None
        image_id = self.image_id(ref)
        if not image_id:
            raise EngineError(f"image {ref} could not be found after pulling it")
        return image_id

    def create(self, req: ContainerRequest) -> str:
        from docker.types import DeviceRequest
        from docker.types import Mount as DockerMount

        spec = req.spec
        mounts = []
        if spec.model_path:
            mounts.append(DockerMount(MODEL_MOUNT, spec.model_path, type="bind", read_only=True))
        for m in spec.volumes:
            mounts.append(
                DockerMount(
                    m.target,
                    m.source,
                    type="volume" if m.is_volume else "bind",
                    read_only=m.read_only,
                )
            )
        device_requests = []
        if req.gpu_ids:
            device_requests.append(
                DeviceRequest(device_ids=list(req.gpu_ids), capabilities=[["gpu"]])
            )
        elif spec.gpus:
            device_requests.append(DeviceRequest(count=spec.gpus, capabilities=[["gpu"]]))
        host_config = self._client.create_host_config(
            port_bindings={spec.port: (req.publish_address, None)},
            mounts=mounts,
            cpu_period=_CPU_PERIOD,
            cpu_quota=int(req.cpus * _CPU_PERIOD),
            mem_limit=spec.memory,
            memswap_limit=spec.memory,
            restart_policy={"Name": spec.restart_policy} if spec.restart_policy != "no" else None,
            device_requests=device_requests or None,
            shm_size=spec.shm_size,
            ipc_mode=spec.ipc_mode,
        )
        created = self._call(
            self._client.create_container,
            spec.image,
            name=req.name,
            entrypoint=list(spec.command) if spec.command is not None else None,
            command=list(spec.args) if spec.args is not None else None,
            environment=[f"{e.name}={e.value}" for e in spec.env],
            labels=req.labels,
            ports=[spec.port],
            working_dir=spec.working_dir,
            stop_timeout=spec.stop_timeout,
            healthcheck=health_check(spec),
            host_config=host_config,
        )
        return created["Id"]

    def start(self, container_id: str) -> None:
        self._call(self._client.start, container_id)

    def update(self, container_id: str, cpus: float, memory: int, restart_policy: str) -> None:
        self._call(
            self._client.update_container,
            container_id,
            cpu_period=_CPU_PERIOD,
            cpu_quota=int(cpus * _CPU_PERIOD),
            mem_limit=memory,
            memswap_limit=memory,
            restart_policy={"Name": restart_policy if restart_policy != "no" else ""},
        )

    def stop(self, container_id: str, timeout: int | None = None) -> None:
        self._remember(container_id)
        with contextlib.suppress(NotFound):
            self._call(
                self._client.stop, container_id, timeout=timeout if timeout is not None else 10
            )

    def remove(self, container_id: str) -> None:
        """Remove a container (killing it if it still runs); gone already is fine."""
        self._remember(container_id)
        try:
            self._call(self._client.remove_container, container_id, force=True)
        except NotFound:
            pass
        except EngineError as exc:
            if "already in progress" not in str(exc) and "No such container" not in str(exc):
                raise

    # -- events -----------------------------------------------------------------------------

    def events(self, since: str | None, filters: dict[str, list[str]]) -> EventStream:
        """Docker's event stream (as dicts) matching `filters`, from `since` (unix time as
        "seconds.nanoseconds") on: the engine first replays the events it still holds from
        then, so a stream resumed after a break misses nothing the engine kept. Raises
        EngineUnreachable when the engine is down."""
        stream = self._call(self._client.events, since=since, filters=filters, decode=True)
        return EventStream(stream)

    def caused(self, container: str, within: float = _OWN_MEMORY) -> bool:
        """Whether this handle stopped or removed `container` (as it was named in the call:
        an id, or a name) lately: the events of the reconciler's own actions are not drift."""
        with self._own_lock:
            at = self._own.get(container)
        return at is not None and time.monotonic() - at <= within

    def _remember(self, container: str) -> None:
        """Noted before the call: its events may arrive before the call returns."""
        moment = time.monotonic()
        with self._own_lock:
            if len(self._own) > 1000:  # forget what is too old to matter
                self._own = {k: t for k, t in self._own.items() if moment - t <= _OWN_MEMORY}
            self._own[container] = moment


class EventStream:
    """Docker events, ending when the engine closes the stream (it stopped or restarted, or
    the connection broke) or when `close()` is called from another thread."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import docker.errors
        import requests

        try:
            for event in self._stream:
                if isinstance(event, dict):
                    yield event
        except (requests.exceptions.RequestException, OSError, ValueError):
            return  # a broken stream is an ended one: the caller reconnects with `since`
        except docker.errors.APIError as exc:
            raise EngineError(_explain(exc)) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closed or broken already: nothing to do
            self._stream.close()
