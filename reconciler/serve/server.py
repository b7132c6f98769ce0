"""`reconciler serve`: deployment URLs (the inference gateway) and the AI API on one port.

The port belongs to `reconciler.serve.relay`'s HTTP/1.1 front. Requests under
`/v2/inference/deployments/` go to the gateway, which relays them to the deployment's
containers as bytes (no framework on the hot path); everything else (the AI API, /oauth/token,
/metrics, /openapi.json, /healthz) is relayed the same way to the AI API: a FastAPI app run by
uvicorn in the same process and event loop, on a unix socket in a private directory (mode
0700), so that its ASGI semantics stay uvicorn's. The routing table is refreshed in the
background twice a second; writes through the AI API trigger reconcile passes, run one at a
time in a thread.

Auth is on by default: every `/v2/lm` and `/v2/inference` call needs a bearer token from
`/oauth/token`, issued to clients of the credentials file (`reconciler clients add`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.app import ApiContext, ApiError, authenticate, create_app
from ..api.auth import Credentials, default_credentials_path
from ..backends import connect
from ..core.autoscale import Decision
from ..core.triggers import Triggers, describe
from ..dashboard import Dashboard
from ..dashboard import mount as mount_dashboard
from ..errors import UserError
from ..manifests.desired import desired_state
from .gateway import HOLD_SECONDS, MAX_HELD, PREFIX, Gateway
from .metrics import CONTENT_TYPE, Metrics
from .relay import (
    HEAD_SECONDS,
    HOP_BY_HOP,
    MAX_PER_ADDRESS,
    Exchange,
    HttpFront,
    Request,
    request_head,
)
from .routes import Route, RouteTable
from .scaler import Scaler
from .traffic import Traffic

REFRESH_SECONDS = 0.5
_PREFIX = PREFIX.encode()
SHUTDOWN_GRACE_SECONDS = 10.0  # requests in flight at SIGTERM/SIGINT may finish within this
API_KEEP_ALIVE_SECONDS = 75.0  # > relay.POOL_IDLE_SECONDS: the relay closes idle ones first

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("reconciler.server")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ServeOptions:
    root: Path
    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = True
    credentials: Path | None = None  # default: default_credentials_path(instance)
    api_url: str | None = None  # public base URL; default: Settings.apiUrl, else host:port
    trusted_proxies: tuple[Network, ...] = ()  # whose Host and X-Forwarded-* to believe
    timeout: float = 300.0
    refresh_seconds: float = REFRESH_SECONDS
    head_timeout: float = HEAD_SECONDS  # a request head must be whole this long after it began
    max_connections_per_address: int = MAX_PER_ADDRESS  # beyond, refused (503) at once
    max_held: int = MAX_HELD  # requests held per deployment while it starts from zero
    hold_seconds: float = HOLD_SECONDS  # the longest one is held
    autoscale: bool = True  # run the autoscaler (off: counts stay as reconcile leaves them)


class BackgroundReconciler:
    """Runs reconcile passes after API writes and the autoscaler's requests: one at a time, and
    requests that arrive during a pass are folded into one next pass (level-triggered: each
    pass converges everything; of several counts asked for one deployment, the last stands)."""

    def __init__(self, root: Path, metrics: Metrics) -> None:
        self.root = root
        self.metrics = metrics
        self._triggers = Triggers()
        self._scales: dict[str, Decision] = {}
        self._scales_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()

    def trigger(self, reason: str) -> None:
        self._triggers.add("api", reason)

    def scale(self, deployment_id: str, decision: Decision) -> None:
        with self._scales_lock:
            self._scales[deployment_id] = decision
        self._triggers.add("autoscaler", deployment_id)

    def close(self) -> None:
        self._stop.set()
        self._triggers.wake()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from ..core.reconcile import reconcile

        while not self._stop.is_set():
            reasons = self._triggers.take(timeout=60)
            if not reasons or self._stop.is_set():
                continue
            why = "; ".join(describe(reasons))
            with self._scales_lock:
                scales, self._scales = self._scales, {}
            started = time.monotonic()
            try:
                result = reconcile(
                    self.root,
                    trigger=why,
                    stop=self._stop,
                    lock_wait=600,
                    scales=scales,
                    self_heal=None,  # (the Settings say: spec.selfHeal)
                )
                for warning in result.plan.warnings:
                    log.warning("%s", warning)
                for change in result.plan.changes:
                    if change.unplaced:
                        log.warning("scale %s: %s", change.name, change.unplaced)
                for failed in (o for o in result.outcomes if not o.ok):
                    log.warning("reconcile after %s: %s", why, failed.describe())
                outcome = "converged" if result.converged else "failed"
            except UserError as exc:  # invalid manifests, engine down, lock held too long
                log.warning("reconcile after %s: %s", why, exc)
                outcome = "error"
            except Exception:
                log.exception("reconcile after %s failed", why)
                outcome = "error"
            self.metrics.observe_pass(outcome, time.monotonic() - started)


class App:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        desired = desired_state(options.root)
        repo = desired.repo
        backend = connect(repo.settings)
        self.credentials: Credentials | None = None
        if options.auth:
            path = options.credentials or default_credentials_path(repo.instance)
            self.credentials = Credentials(path)
            if not self.credentials.clients:
                raise UserError(
                    f"no clients in {path}: add one with `reconciler clients add NAME "
                    "--resource-group default` (it prints the client id and secret once), "
                    "or run `reconciler serve --no-auth` for local development only"
                )
        self.metrics = Metrics()
        self.traffic = Traffic()
        self.table = RouteTable(options.root, repo.instance, repo.settings.publish_address, backend)
        self.reconciler = BackgroundReconciler(options.root, self.metrics)
        self.gateway = Gateway(
            self.table,
            timeout=options.timeout,
            authorize=self._authorize,
            observe=self._observe,
            in_flight=self.metrics.observe_in_flight,
            max_held=options.max_held,
            hold_seconds=options.hold_seconds,
        )
        self.scaler: Scaler | None = None
        if options.autoscale:
            self.scaler = Scaler(options.root, self.gateway, self.table, self.reconciler.scale)
            self.gateway.wake = self.scaler.wake
        self.context = ApiContext(
            options.root,
            backend,
            self.credentials,
            self.reconciler.trigger,
            options.api_url,
            recent=self.table.recent,
        )
        self.api = create_app(self.context)
        mount_dashboard(self.api, Dashboard(self.context, self.traffic.series))
        self._add_metrics_route()
        self._refresher: asyncio.Task[None] | None = None
        self.api_relay = ApiRelay("")  # its address is known once serve() made the socket

    def _authorize(
        self, headers: Mapping[bytes, bytes], route: Route | None
    ) -> tuple[int, str] | None:
        """The gateway's check: a valid token, and a deployment of a resource group the client
        may use; another group's deployment is "not found" (its existence does not leak).
        `headers` maps lower-case names to values."""
        authorization = headers.get(b"authorization")
        try:
            identity = authenticate(
                self.credentials, authorization.decode("latin-1") if authorization else None
            )
        except ApiError as exc:
            return exc.status, exc.message
        if route is None:
            return None
        asked = headers.get(b"ai-resource-group")
        wrong_group = asked is not None and asked.decode("latin-1") != route.resource_group
        if wrong_group or not identity.may_use(route.resource_group):
            return 404, f"Deployment {route.deployment_id} not found"
        return None

    def _observe(self, deployment: str, seconds: float, code: int, upstream_ok: bool) -> None:
        self.metrics.observe_request(deployment, seconds, code, upstream_ok)
        self.traffic.observe(deployment, seconds, code, upstream_ok)

    def _add_metrics_route(self) -> None:
        from fastapi.responses import Response

        @self.api.get("/metrics", include_in_schema=False)
        def metrics() -> Any:
            self.gateway.flush_metrics()  # the inference requests up to now, to the last one
            self.metrics.observe_scaling(self.table.all(), self.scaler)
            with contextlib.suppress(ApiError):  # (invalid manifests: no sync to say)
                self.metrics.observe_sync(self.context.statuses(self.context.state(), ""))
            return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def dispatch(self, ex: Exchange) -> None:
        """The front's handler: inference to the gateway, the rest to the AI API."""
        if ex.req.path.startswith(_PREFIX):
            self.gateway.handle(ex)
        else:
            self.api_relay.handle(ex)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app that uvicorn runs behind the front: the AI API, and the lifespan."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.get_running_loop().run_in_executor(None, self.table.refresh)
                self._refresher = asyncio.create_task(self._refresh_forever())
                if self.scaler is not None:
                    self.scaler.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._refresher:
                    self._refresher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._refresher
                if self.scaler is not None:
                    await asyncio.get_running_loop().run_in_executor(None, self.scaler.close)
                await asyncio.get_running_loop().run_in_executor(None, self.reconciler.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _refresh_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.refresh_seconds)
            self.gateway.flush_metrics()  # (the dashboard's charts follow without a scrape)
            try:
                await loop.run_in_executor(None, self.table.refresh)
            except Exception:  # a bad snapshot must not end routing; the next tick retries
                log.exception("refreshing the routing table failed")


class ApiRelay:
    """Relays what is not inference to the AI API's uvicorn, on the unix socket `path`: the
    caller's headers as they are (Authorization included), less hop-by-hop ones.

    The internal uvicorn believes the relay's X-Forwarded-For and -Proto (only the relay reaches
    its socket), and URLs it builds (deploymentUrl) take the Host header; so the relay believes
    those headers only from a trusted proxy (`serve --trusted-proxy`, none by default). For any
    other caller it drops them, says who the caller was, and gives as Host the address serve
    listens on (`listen`): a caller's Host never becomes a deploymentUrl."""

    _UNTRUSTED = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"host"}
    _PROXIED = HOP_BY_HOP | {b"x-forwarded-for"}

    def __init__(
        self, path: str, listen: str = "127.0.0.1", trusted: tuple[Network, ...] = ()
    ) -> None:
        self.address = "unix:" + path
        self.listen = listen.encode()
        self.trusted = trusted

    def handle(self, ex: Exchange) -> None:
        req = ex.req
        if self._trusts(req.peer):
            host = None if b"host" in req.fields else self.listen
            extra = b"X-Forwarded-For: %s\r\n" % self._client(req).encode()
            head = request_head(req, req.target, self._PROXIED, host=host, extra=extra)
        else:
            extra = b"X-Forwarded-For: %s\r\n" % req.peer.encode()
            head = request_head(req, req.target, self._UNTRUSTED, host=self.listen, extra=extra)
        ex.forward(self.address, head, timeout=None)

    def _trusts(self, address: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's IPv4 caller
        return any(ip in network for network in self.trusted)

    def _client(self, req: Request) -> str:
        """Who called the trusted proxies: X-Forwarded-For read from the right (each proxy
        appends its caller), the first address that is not a trusted proxy. Entries left of
        it came from the caller, who may write anything there."""
        chain = [
            entry.strip()
            for name, _, value in req.headers
            if name == b"x-forwarded-for"
            for entry in value.decode("latin-1").split(",")
        ]
        client = req.peer
        for entry in reversed(chain):
            try:
                client = str(ipaddress.ip_address(entry))
            except ValueError:
                break  # not an address: what the last good hop said stands
            if not self._trusts(client):
                break
        return client


def listen_address(sock: socket.socket) -> str:
    """host:port of the listening socket, for URLs when no apiUrl is set. A wildcard address
    (0.0.0.0, ::) names no host: this machine's name stands in for it."""
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


class _ApiServer:
    """uvicorn for the AI API on a unix socket, in this event loop. Signals are the front's
    business: uvicorn's own handlers are never installed."""

    def __init__(self, app: App) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

            def install_signal_handlers(self) -> None:  # uvicorn < 0.29
                pass

        self.dir = tempfile.mkdtemp(prefix="reconciler-serve-")  # mode 0700: ours alone
        self.path = os.path.join(self.dir, "api.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(512)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            http="auto",  # httptools when installed
            ws="none",
            lifespan="on",
            server_header=False,  # the model server's own Date and Server headers pass through
            date_header=False,
            proxy_headers=True,
            forwarded_allow_ips="*",  # only the relay reaches this socket (see ApiRelay)
            timeout_keep_alive=int(API_KEEP_ALIVE_SECONDS),
        )
        self.server = Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start uvicorn and the app's lifespan (the first routing table)."""
        self.task = asyncio.get_running_loop().create_task(self.server.serve([self.sock]))
        while not self.server.started:
            if self.task.done():
                await self.task  # startup failed: raises (uvicorn exits the process)
                raise UserError("the AI API did not start")
            await asyncio.sleep(0.01)

    async def stop(self, force: bool) -> None:
        self.server.should_exit = True
        self.server.force_exit = force
        if self.task is not None:
            await self.task

    def cleanup(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _serve(app: App, sock: socket.socket, options: ServeOptions) -> int | None:
    """Run until SIGINT or SIGTERM; a second one stops waiting for requests in flight. Returns
    the signal that ended it."""
    loop = asyncio.get_running_loop()
    api = _ApiServer(app)
    try:
        await api.start()
        app.api_relay = ApiRelay(api.path, listen_address(sock), options.trusted_proxies)
        front = HttpFront(
            app.dispatch,
            min_timeout=options.timeout,
            tick=app.gateway.flush_metrics,
            head_seconds=options.head_timeout,
            max_per_address=options.max_connections_per_address,
        )
        await front.start(sock)
        # What exists now lives as long as the server: out of the cyclic collector's sight, so
        # that its full collections do not walk the frameworks' objects again and again.
        gc.collect()
        gc.freeze()
        stop, force = asyncio.Event(), asyncio.Event()
        received: list[int] = []

        def on_signal(sig: int) -> None:
            received.append(sig)
            (force if stop.is_set() else stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            stopped = loop.create_task(stop.wait())
            assert api.task is not None
            await asyncio.wait({stopped, api.task}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            log.info("shutting down")
            await front.shutdown(SHUTDOWN_GRACE_SECONDS, force)
            await api.stop(force.is_set())
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return received[0] if received else None
    finally:
        api.cleanup()


def serve(options: ServeOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = App(options)
    # Bound here, before anything starts, so that a taken port is one clear line.
    try:
        sock = socket.create_server((options.host, options.port), reuse_port=False)
    except OSError as exc:
        raise UserError(
            f"cannot listen on {options.host}:{options.port} "
            f"({os.strerror(exc.errno) if exc.errno else exc}): "
            "pass another --port, or stop the program that uses it"
        ) from None
    where = f"http://{options.host}:{options.port}"
    if app.credentials is None:
        log.warning(
            "auth is OFF (--no-auth): anyone who reaches %s may use every deployment", where
        )
    else:
        log.info("clients from %s; tokens at %s/oauth/token", app.credentials.path, where)
    log.info("serving deployment URLs %s%s<id> and the AI API %s/v2/lm", where, PREFIX, where)
    if options.trusted_proxies:
        proxies = ", ".join(map(str, options.trusted_proxies))
        log.info("Host and X-Forwarded-* are believed from trusted proxies %s only", proxies)
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # uvicorn[standard] brings it where it exists (not on Windows)
        loop_factory = None
    with sock, asyncio.Runner(loop_factory=loop_factory) as runner:
        received = runner.run(_serve(app, sock, options))
    if received is not None:
        # As uvicorn did: end the way the signal would have ended the process (SIGINT is
        # KeyboardInterrupt, which the command line reports as "interrupted").
        signal.raise_signal(received)
