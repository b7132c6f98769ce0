"""The inference gateway: `<api>/v2/inference/deployments/<id>/<path>` → the deployment's
containers.

A `reconciler.serve.relay` handler (no framework on the hot path): it looks the deployment up in the
routing table, checks the caller, picks a serving replica round-robin and has the relay pass
the request and its answer through as bytes, over pooled keep-alive connections. A deployment
that is unknown or not serving gets a table refresh first (at most one per
`MISS_REFRESH_SECONDS`), so that it answers as soon as reconcile recorded it. A replica that
refuses the connection (stopped a moment ago) is skipped after a table refresh: the request was
never received, so sending it again is safe. So is one that does not accept the connection
within `CONNECT_ATTEMPT_SECONDS`: a replica reached at its own address on the bridge
(reconciler.serve.routes) that was removed a moment ago drops the connection attempt silently, where
a published port would refuse it; the table is refreshed and the request goes to a replica that
is still there (or waits again for the same one, still listed: an overloaded server); one
that failed the request is passed over while another is listed. A connection that breaks
before any byte of the answer came (the replica's host was lost) is sent once more, to another
replica (`lost_unanswered`).

The table lists only replicas that pass their health check (reconciler.serve.routes): a
deployment with none answers 503 at once, with the reason `reconciler status` gives (its
statusMessage, e.g. "no replica ready: ..."), instead of waiting out a frozen server's timeout.

Except one scaled to zero (minReplicas 0, idle): as Knative's activator, the gateway holds its
requests, has one replica started (`wake`: the autoscaler asks for it, once however many
requests wait) and relays them once it serves. At most `max_held` requests wait per deployment,
for at most `hold_seconds`; beyond either, 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping

from .relay import HOP_BY_HOP, Exchange, connect_failure, request_head
from .routes import Route, RouteTable

PREFIX = "/v2/inference/deployments/"
_PREFIX = PREFIX.encode()
CONNECT_ATTEMPTS = 3
# A connection on this host is accepted within milliseconds; a SYN that got no answer is sent
# again only after 1 s (TCP's initial retransmission timeout), so waiting longer than this for
# one attempt only delays the move to a replica that is still there.
CONNECT_ATTEMPT_SECONDS = 1.0
MAX_MEMO = 16  # upstream heads kept per request head (one per replica address)
MISS_REFRESH_SECONDS = 0.1
# Retry-After of a 503 for a deployment that is expected to serve again (PENDING): KServe's
# default readiness period, the soonest a replica's health check can say it answers again.
RETRY_AFTER = b"retry-after: 10\r\n"
MAX_HELD = 100  # requests held per deployment while it starts from zero
HOLD_SECONDS = 120.0  # the longest a request is held (model servers load in seconds to minutes)
HOLD_REFRESH_SECONDS = 0.05  # how often the table is read while a deployment starts
# Besides hop-by-hop headers: the bearer token and resource group are the gateway's business,
# not the model server's; Host is the replica's.
_DROP = HOP_BY_HOP | {b"host", b"authorization", b"ai-resource-group"}

# Decides whether the caller may use a deployment: gets the request's headers (lower-case
# names), returns None, or (status, message) to refuse.
Authorizer = Callable[[Mapping[bytes, bytes], Route | None], tuple[int, str] | None]
Observer = Callable[[str, float, int, bool], None]  # deployment id, seconds, status, upstream ok


def unavailable(deployment_id: str, route: Route) -> str:
    """The 503's message for a deployment without a serving replica: its status and why (the
    routing table's message is its statusMessage, so the caller reads what `reconciler status`
    says: "no replica ready: ..." for one whose replicas fail their health check)."""
    status = route.status if route.status != "RUNNING" else "PENDING"
    why = route.message or "it serves requests only when RUNNING"
    return f"Deployment {deployment_id} is {status}: {why}"


def _unavailable(ex: Exchange, message: str) -> None:
    """503 with Retry-After, for a request relayed before (a retry) or not."""
    if ex.handler is not None:  # counted in flight: its end is the relay's to report
        ex.upstream_failed(503, message, RETRY_AFTER)
    else:
        ex.refuse(503, message, target=ex.req.decoded_path(), headers=RETRY_AFTER)


class Gateway:
    """Answers exchanges whose path starts with PREFIX; the relay tells it of refused
    connections and of each exchange's end (`Relayed`)."""

    def __init__(
        self,
        table: RouteTable,
        timeout: float = 300.0,
        authorize: Authorizer | None = None,
        observe: Observer | None = None,
        in_flight: Callable[[Mapping[str, int]], None] | None = None,
        wake: Callable[[str], None] | None = None,
        max_held: int = MAX_HELD,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        self.table = table
        self.timeout = timeout
        self.authorize = authorize
        self.observe = observe
        self.report_in_flight = in_flight
        # Requests relayed to each deployment and not answered yet (the load an autoscaler
        # reads, Knative's "concurrency"): changed on the event loop only, read anywhere.
        self.in_flight: dict[str, int] = {}
        # Requests that reached each deployment since the autoscaler last took the count.
        self.arrived: dict[str, int] = {}
        self.wake = wake  # asks for one replica of a deployment scaled to zero
        self.max_held = max_held
        self.hold_seconds = hold_seconds
        self._held: dict[str, int] = {}
        self._starting: dict[str, asyncio.Task[Route | None]] = {}
        # Observations wait here for `flush_metrics` (the relay's timer, and /metrics): each
        # request still gets its own `observe` call, but in batches, off the request's path,
        # where the metrics code runs with warm caches (per request it cost a quarter of the
        # relay's CPU). A deque: appended here, emptied from any thread.
        self._observed: deque[tuple[str, float, int, bool]] = deque()

    def handle(self, ex: Exchange) -> None:
        req = ex.req
        deployment = req.path[len(_PREFIX) :].partition(b"/")[0].decode("latin-1")
        ex.tag = deployment
        route = self.table.get(deployment)
        if route is None or route.status != "RUNNING" or not route.targets:
            ex.spawn(self._after_refresh(ex))
        elif self.authorize is not None and self.authorize(req.fields, route):
            self._decide(ex, route)  # says why
        else:  # the fast path: a serving deployment the caller may use (it has targets)
            self._forward(ex, route.pick())  # type: ignore[arg-type]

    async def _after_refresh(self, ex: Exchange) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, self.table.refresh_if_stale, MISS_REFRESH_SECONDS
        )
        self._decide(ex, self.table.get(ex.tag))

    def _decide(self, ex: Exchange, route: Route | None) -> None:
        req = ex.req
        refusal = self.authorize(req.fields, route) if self.authorize else None
        if refusal:
            ex.refuse(*refusal, target=req.decoded_path())
        elif route is None:
            ex.refuse(404, f"Deployment {ex.tag} not found", target=req.decoded_path())
        elif route.idle:
            ex.spawn(self._hold(ex))
        elif route.status != "RUNNING" or not route.targets:
            # PENDING (sick, restarting, being started) is expected to serve again by itself;
            # STOPPED, DEAD and the like are not: no Retry-After for those.
            again = route.status in ("RUNNING", "PENDING")
            ex.refuse(
                503,
                unavailable(ex.tag, route),
                target=req.decoded_path(),
                headers=RETRY_AFTER if again else b"",
            )
        else:  # (it has targets)
            self._forward(ex, route.pick())  # type: ignore[arg-type]

    def _forward(self, ex: Exchange, target: str) -> None:
        req = ex.req
        # The head for this replica, made once per request head (a repeated head brings its
        # Request back: see relay.Request.memo).
        head = req.memo.get(target)
        if head is None:
            # Everything after the deployment id, as the caller sent it (no decoding, no
            # quoting).
            path = req.target[len(_PREFIX) + len(ex.tag) :]
            if not path.startswith(b"/"):  # "<id>" or "<id>?query"
                path = b"/" + path
            if len(req.memo) >= MAX_MEMO:  # replicas replaced over a long-lived connection
                req.memo.clear()
            head = req.memo[target] = request_head(req, path, _DROP, host=target.encode())
        ex.connect_seconds = CONNECT_ATTEMPT_SECONDS
        if ex.handler is None:  # its first replica (not a retry): one more in flight
            self.in_flight[ex.tag] = self.in_flight.get(ex.tag, 0) + 1
            self.arrived[ex.tag] = self.arrived.get(ex.tag, 0) + 1
        ex.forward(target, head, self.timeout, self)

    async def _hold(self, ex: Exchange) -> None:
        """A request for a deployment scaled to zero: held until a replica serves."""
        dep = ex.tag
        waiting = self._held.get(dep, 0)
        if waiting >= self.max_held:
            _unavailable(
                ex,
                f"Deployment {dep} is starting from zero and {waiting} requests wait for it "
                "already: try again shortly",
            )
            return
        self._held[dep] = waiting + 1
        try:
            starting = self._starting.get(dep)
            if starting is None or starting.done():
                if self.wake is not None:
                    self.wake(dep)  # once per cold start, however many requests wait
                starting = self._starting[dep] = asyncio.get_running_loop().create_task(
                    self._until_serving(dep)
                )
            try:
                route = await asyncio.wait_for(asyncio.shield(starting), self.hold_seconds)
            except TimeoutError:
                route = None
        finally:
            left = self._held[dep] - 1
            if left:
                self._held[dep] = left
            else:
                del self._held[dep]
        if route is not None and route.status == "RUNNING" and route.targets:
            self._forward(ex, route.pick())  # type: ignore[arg-type]
        elif route is not None and not route.idle:
            self._decide(ex, route)  # stopped, DEAD ... meanwhile: says why
        else:
            _unavailable(ex, f"Deployment {dep} did not start within {self.hold_seconds:g}s")

    async def _until_serving(self, dep: str) -> Route | None:
        """Reads the table until the deployment serves, or is no longer scaled to zero and
        not being woken (stopped, deleted, DEAD), for at most `hold_seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold_seconds
        route = self.table.get(dep)
        while loop.time() < deadline:
            await loop.run_in_executor(None, self.table.refresh_if_stale, HOLD_REFRESH_SECONDS)
            route = self.table.get(dep)
            if route is None or route.targets or route.status not in ("RUNNING", "PENDING"):
                return route
            await asyncio.sleep(HOLD_REFRESH_SECONDS)
        return route

    def take_arrived(self) -> dict[str, int]:
        """Requests per deployment since the last call (the autoscaler's rate), reset."""
        arrived, self.arrived = self.arrived, {}
        return arrived

    # Relayed

    def connect_failed(self, ex: Exchange, exc: OSError) -> None:
        if ex.attempt >= CONNECT_ATTEMPTS or not ex.replayable:
            ex.upstream_failed(*connect_failure(exc, ex.connect_seconds))
        else:
            ex.attempt += 1
            ex.avoid = ex.avoid | {ex.address}
            ex.spawn(self._retry(ex))

    def lost_unanswered(self, ex: Exchange, exc: Exception | None) -> None:
        """The replica's connection broke before any byte of its answer: its host went away
        (a node lost, a replica killed). Sent once more, to another replica: a model's
        prediction has no side effect, and a request that kills its replica (a "query of
        death") takes down at most one more. Not when none other is there."""
        others = [a for a in self._targets(ex) if a != ex.address and a not in ex.avoid]
        if ex.failed_over or not others:
            why = f": {exc}" if exc else ""
            ex.upstream_failed(502, f"model server closed the connection{why}")
            return
        ex.failed_over = True
        ex.retried = False  # a pooled connection to the other one may be stale: as for any
        ex.avoid = ex.avoid | {ex.address}
        self._forward(ex, others[0])

    def _targets(self, ex: Exchange) -> tuple[str, ...]:
        route = self.table.get(ex.tag)
        return route.targets if route is not None and route.status == "RUNNING" else ()

    async def _retry(self, ex: Exchange) -> None:
        """Never received: safe to send again, to another replica (one that has not failed
        this request, while there is one) or a fresher table."""
        await asyncio.get_running_loop().run_in_executor(None, self.table.refresh)
        fresh = self.table.get(ex.tag)
        target = fresh.pick() if fresh else None
        if fresh is not None and target in ex.avoid:
            target = next((a for a in fresh.targets if a not in ex.avoid), target)
        if fresh is not None and fresh.idle:  # scaled to zero meanwhile: held like the first
            await self._hold(ex)
        elif fresh is not None and fresh.status != "RUNNING":  # stopped or sick meanwhile
            ex.upstream_failed(503, unavailable(ex.tag, fresh))
        elif target is None:
            ex.upstream_failed(503, f"Deployment {ex.tag} has no serving replica now")
        else:
            self._forward(ex, target)

    def done(self, ex: Exchange, status: int, upstream_ok: bool) -> None:
        left = self.in_flight.get(ex.tag, 1) - 1
        if left > 0:
            self.in_flight[ex.tag] = left
        else:
            self.in_flight.pop(ex.tag, None)
        if self.observe is not None:
            # 503 "no serving replica now" counts as the upstream's failure, as 502 and 504 do
            self._observed.append(
                (
                    ex.tag,
                    time.perf_counter() - ex.started,
                    status,
                    upstream_ok and (status < 502 or status > 504),
                )
            )

    def flush_metrics(self) -> None:
        """Hand the observations so far to `observe`, and the requests in flight now to
        `in_flight`."""
        if self.report_in_flight is not None:
            self.report_in_flight(dict(self.in_flight))  # (a copy: the loop changes it)
        observed, observe = self._observed, self.observe
        if observe is None:
            return
        while True:
            try:  # (another thread may be flushing too: /metrics runs in uvicorn's threads)
                item = observed.popleft()
            except IndexError:
                return
            observe(*item)
