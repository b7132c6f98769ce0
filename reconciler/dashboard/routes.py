"""The dashboard's pages and actions under /ui/ (see reconciler.dashboard).

Every page asks who looks (reconciler.dashboard.session) and shows only that client's resource
groups; another group's deployment is "not found", as in the AI API. Forms post
`application/x-www-form-urlencoded` bodies (read here with the standard library: no multipart
parser is needed), each with the viewer's CSRF token. Answers carry a Content-Security-Policy
that allows this server's own script and style only, and are never cached.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from ..api.auth import AuthError, Throttled
from ..api.context import ApiContext, Caller, base_url
from ..api.errors import ApiError
from ..api.routers import deployments as api_deployments
from ..core.reconcile import preview
from ..errors import UserError
from ..manifests.revision import working_tree_revision
from . import pages
from .charts import Series, line_chart
from .session import CSRF_FIELD, Sessions, Viewer

HERE = Path(__file__).parent
LOGIN_COOKIE = "reconciler_ui_login"  # the sign-in form's own CSRF pair (no session yet)
LOG_POLL_SECONDS = 1.0
LOG_TAIL = 200  # lines a log view starts with
LOG_STREAM_SECONDS = 300.0  # an event stream ends after this; the browser reconnects
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Traffic = Callable[[str], Sequence[Any]]  # deployment id → points (reconciler.serve.traffic)


class Dashboard:
    """What the pages need besides the AI API's context: the sessions, the templates, and
    serve's gateway traffic for the charts."""

    def __init__(self, ctx: ApiContext, traffic: Traffic | None = None) -> None:
        self.ctx = ctx
        self.sessions = Sessions(ctx.credentials)
        self.traffic = traffic
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value a page shows is text, whoever wrote it
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def page(
        self, name: str, request: Request, viewer: Viewer | None, status: int = 200, **values: Any
    ) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            viewer=viewer,
            csrf_field=CSRF_FIELD,
            path=request.url.path,
            auth=self.sessions.needs_sign_in,
            **values,
        )
        return HTMLResponse(html, status, headers=SECURITY_HEADERS)


router = APIRouter(prefix="/ui", include_in_schema=False)


def _dash(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def signed_in(request: Request) -> Viewer:
    viewer = _dash(request).sessions.viewer(request)
    if viewer is None:
        raise _SignIn(request.url.path)
    return viewer


# -- signing in -------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str = "/ui/") -> Response:
    import secrets

    nonce = secrets.token_urlsafe(24)
    response = _dash(request).page("login.html", request, None, nonce=nonce, next=_local(next))
    response.set_cookie(
        LOGIN_COOKIE, nonce, max_age=600, path="/ui", httponly=True, samesite="strict"
    )
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    target = _local(form.get("next", "/ui/"))
    if not nonce or form.get("nonce") != nonce:
        return _redirect(f"/ui/login?{urlencode({'next': target})}")  # a stale form
    desk = request.app.state.token_desk
    if desk is None:  # --no-auth: nobody signs in
        return _redirect(target)
    address = request.client.host if request.client else "?"
    try:
        token = await desk.issue(form.get("client_id", ""), form.get("client_secret", ""), address)
    except (AuthError, Throttled) as exc:
        status = 429 if isinstance(exc, Throttled) else 401
        return _dash(request).page(
            "login.html", request, None, status, nonce=nonce, next=target, error=str(exc)
        )
    response = _redirect(target)
    _dash(request).sessions.start(response, request, token)
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    viewer = signed_in(request)
    form = await _form(request)
    if not _dash(request).sessions.csrf_ok(request, viewer, form.get(CSRF_FIELD)):
        return _forbidden(_dash(request), request, viewer)
    response = _redirect("/ui/login")
    _dash(request).sessions.end(response)
    return response


# -- pages ------------------------------------------------------------------------------


@router.get("/")
def deployments_page(
    request: Request, status: str = "", group: str = "", sort: str = "name", desc: int = 0
) -> Response:
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    state = ctx.state()
    snapshot = ctx.snapshot(state)
    statuses = ctx.statuses(state, base_url(request))
    rows = pages.deployment_rows(statuses, state, snapshot, viewer, datetime.now(UTC))
    listing = pages.listing(rows, status, group, sort, bool(desc))
    return _dash(request).page(
        "deployments.html",
        request,
        viewer,
        listing=listing,
        statuses=pages.STATUSES,
        query=_query(status=listing.status, group=listing.group),
        problems=ctx.problems if viewer.operator else (),
        notice=request.query_params.get("notice", ""),
    )


@router.get("/sync")
def sync_page(request: Request) -> Response:
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    state = ctx.state()
    the_plan = preview(ctx.root, backend=ctx.backend).plan
    view = pages.sync_view(
        ctx.snapshot(state),
        working_tree_revision(ctx.root),
        pages.plan_view(the_plan, state, viewer),
    )
    return _dash(request).page("sync.html", request, viewer, sync=view)


@router.get("/models")
def models_page(request: Request) -> Response:
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    state = ctx.state()
    rows = pages.model_rows(list(state.repo.models.values()), datetime.now(UTC))
    return _dash(request).page("models.html", request, viewer, models=rows)


@router.get("/deployments/{deployment_id}")
def deployment_page(request: Request, deployment_id: str) -> Response:
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    state = ctx.state()
    status = _visible_status(ctx, request, viewer, deployment_id)
    d = state.find_declared(deployment_id)
    snapshot = ctx.snapshot(state)
    the_plan = preview(ctx.root, backend=ctx.backend).plan
    plan = pages.plan_view(the_plan, state, viewer)
    rec = snapshot.records.get(deployment_id)
    spec = None
    if d is not None:
        spec = json.dumps(
            {
                "configurationId": d.configuration.id,
                "executableId": d.template.name,
                "model": d.model.label if d.model else None,
                "spec": d.spec.to_dict(),  # secret values as ***
            },
            indent=2,
        )
    return _dash(request).page(
        "deployment.html",
        request,
        viewer,
        s=status,
        spec=spec,
        plan=[line for line in plan.lines if line.deployment_id == deployment_id],
        drift=[line for line in plan.drift if line.deployment_id == deployment_id],
        timeline=pages.timeline(snapshot, deployment_id),
        last_logs=list(rec.last_logs) if rec else [],
        charts=_charts(_dash(request), deployment_id),
        notice=request.query_params.get("notice", ""),
    )


@router.get("/deployments/{deployment_id}/charts")
def charts_fragment(request: Request, deployment_id: str) -> Response:
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    _visible_status(ctx, request, viewer, deployment_id)
    return HTMLResponse(_charts(_dash(request), deployment_id), headers=SECURITY_HEADERS)


@router.get("/deployments/{deployment_id}/logs")
def log_stream(request: Request, deployment_id: str) -> Response:
    """The deployment's log as server-sent events: the last lines, then each new one."""
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    _visible_status(ctx, request, viewer, deployment_id)
    return StreamingResponse(
        _log_events(ctx, request, deployment_id),
        media_type="text/event-stream",
        headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
    )


# -- actions ----------------------------------------------------------------------------


@router.post("/deployments/{deployment_id}/stop")
async def stop(request: Request, deployment_id: str) -> Response:
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    form = await _form(request)
    if not _may_act(request, viewer, form):
        return _forbidden(_dash(request), request, viewer)
    status = await run_in_threadpool(_visible_status, ctx, request, viewer, deployment_id)
    who = Caller(viewer.identity, str(status["resourceGroup"]))
    call = f"dashboard: stop deployment {deployment_id}"
    try:
        await run_in_threadpool(api_deployments.stop, ctx, request, who, deployment_id, call)
    except (ApiError, UserError) as exc:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        return _dash(request).page("error.html", request, viewer, 409, error=message)
    return _redirect(f"/ui/deployments/{deployment_id}?notice=stop")


@router.post("/reconcile")
async def reconcile_now(request: Request) -> Response:
    viewer = signed_in(request)
    ctx = _dash(request).ctx
    form = await _form(request)
    if not _may_act(request, viewer, form):
        return _forbidden(_dash(request), request, viewer)
    ctx.trigger(f"dashboard: reconcile now by {viewer.identity.name}")
    return _redirect("/ui/?notice=reconcile")


def mount(app: Any, dashboard: Dashboard) -> None:
    """The dashboard's pages, its files (/ui/static), and the exceptions its pages raise."""
    app.state.dashboard = dashboard
    app.include_router(router)
    app.mount("/ui/static", _Static(directory=HERE / "static"), name="ui-static")

    @app.exception_handler(_SignIn)
    async def sign_in(request: Request, exc: _SignIn) -> Response:
        return _redirect(f"/ui/login?{urlencode({'next': exc.path})}")

    @app.exception_handler(_NotFound)
    async def not_found(request: Request, exc: _NotFound) -> Response:
        viewer = dashboard.sessions.viewer(request)
        return dashboard.page(
            "error.html", request, viewer, 404, heading="Not found", error=str(exc)
        )

    @app.get("/ui", include_in_schema=False)
    def ui_root() -> Response:
        return _redirect("/ui/")


class _Static(StaticFiles):
    """The dashboard's own files, with the pages' headers (nosniff above all); cached, but
    checked again on each use (an upgrade's files are used at once)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-cache"})
        return response


class _SignIn(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


class _NotFound(Exception):
    """Not there, or another resource group's (the same answer: its existence never leaks)."""


def _visible_status(
    ctx: ApiContext, request: Request, viewer: Viewer, deployment_id: str
) -> dict[str, Any]:
    """The deployment's status, if the viewer may see it; else "not found" (ApiError 404,
    which the pages show as such: another group's deployment does not exist for them)."""
    for s in ctx.statuses(ctx.state(), base_url(request)):
        if s["id"] == deployment_id and viewer.may_see(str(s["resourceGroup"])):
            return s
    raise _NotFound(f"Deployment {deployment_id} not found")


def _charts(dashboard: Dashboard, deployment_id: str) -> str:
    if dashboard.traffic is None:
        return ""
    points = dashboard.traffic(deployment_id)
    return "".join(
        (
            line_chart("requests/s", "req/s", [Series("req/s", [p.rps for p in points], "rps")]),
            line_chart(
                "latency",
                "ms",
                [
                    Series("p50", [p.p50_ms for p in points], "p50"),
                    Series("p99", [p.p99_ms for p in points], "p99"),
                ],
            ),
            line_chart(
                "errors", "per 5 s", [Series("errors", [float(p.errors) for p in points], "err")]
            ),
        )
    )


async def _log_events(ctx: ApiContext, request: Request, deployment_id: str) -> AsyncIterator[str]:
    """Events of the deployment's log lines: the last LOG_TAIL of the last ten minutes, then
    each new one. The engine is asked again every LOG_POLL_SECONDS from the newest time seen
    (its `since` is coarse, so lines at that edge come again: those already sent are skipped)."""
    state = ctx.state()
    since = datetime.now(UTC) - timedelta(minutes=10)
    edge, at_edge = "", set()  # the newest time sent, and the lines sent with it
    ends = time.monotonic() + LOG_STREAM_SECONDS
    first = True
    while time.monotonic() < ends and not await request.is_disconnected():
        lines = await run_in_threadpool(ctx.log_lines, state, deployment_id, since, None) or []
        lines = sorted(lines, key=lambda line: line.time)
        if first:
            lines, first = lines[-LOG_TAIL:], False
        for line in lines:
            key = (line.replica, line.time, line.text)
            if line.time < edge or (line.time == edge and key in at_edge):
                continue
            if line.time > edge:
                edge, at_edge = line.time, set()
            at_edge.add(key)
            data = json.dumps({"time": line.time, "replica": line.replica, "text": line.text})
            yield f"data: {data}\n\n"
        if edge:
            since = _parse_rfc3339(edge) or since
        yield ": keep-alive\n\n"
        await asyncio.sleep(LOG_POLL_SECONDS)


def _parse_rfc3339(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return None


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each), at most 16 KiB of it."""
    body = await request.body()
    if len(body) > 16384:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def _local(target: str) -> str:
    """Where to go after signing in: a dashboard page only (no open redirect elsewhere)."""
    # No dot segments either ("/ui/..//x" is "//x" to a browser; so is "%2e%2e"), and no
    # control characters or spaces (a browser drops tabs and newlines from a URL).
    segments = unquote(target.split("?", 1)[0].split("#", 1)[0]).split("/")
    if (
        target.startswith("/ui/")
        and "\\" not in target
        and not any(s in (".", "..") for s in segments)
        and all(" " < c < "\x7f" for c in target)
    ):
        return target
    return "/ui/"


def _query(**values: str) -> str:
    return urlencode({k: v for k, v in values.items() if v})


def _redirect(target: str) -> RedirectResponse:
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


def _may_act(request: Request, viewer: Viewer, form: dict[str, str]) -> bool:
    """An action's gate: a client allowed to write, and the form's CSRF token is its own."""
    return viewer.may_write and _dash(request).sessions.csrf_ok(
        request, viewer, form.get(CSRF_FIELD)
    )


def _forbidden(dashboard: Dashboard, request: Request, viewer: Viewer) -> HTMLResponse:
    why = (
        "this client may only look (read-only)"
        if not viewer.may_write
        else "the form is stale (its token does not match): reload the page and try again"
    )
    return dashboard.page("error.html", request, viewer, 403, error=why)
