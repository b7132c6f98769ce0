"""The AI API of `reconciler serve`: AI Core's `/v2/lm` endpoints and `/oauth/token`.

Reads answer from the manifests (the desired state, reloaded when a file changes) merged with
the deployment statuses, exactly as `reconciler status` shows them. Writes are GitOps
write-back (reconciler.api.writeback): validated, written to a manifest, committed, then a
reconcile is triggered; the API never changes Docker behind the manifests' back.

Field names, status codes and the error body `{"error": {code, message, requestId, target,
details}}` follow AI Core's AI API so that its scripts and SAP's Python SDK work unchanged.

This module assembles the app: the routers (reconciler.api.routers, one per resource), the
shared context (reconciler.api.context) and the handlers that turn every error into that body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UserError
from .auth import TokenDesk
from .context import ApiContext, authenticate
from .errors import ApiError, error_body, request_id
from .routers import ROUTERS
from .routers.meta import API_VERSION

# What reconciler.serve uses from here.
__all__ = ["API_VERSION", "ApiContext", "ApiError", "authenticate", "create_app"]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="reconciler AI API",
        version=API_VERSION,
        description="SAP AI Core's AI API (serving: scenarios, executables, configurations, "
        "artifacts, deployments) over a GitOps repository; writes become commits.",
    )
    # What the endpoints reach through their dependencies (reconciler.api.context.context and
    # the token endpoint): one app, one context, one desk with its failure counters.
    app.state.context = ctx
    app.state.token_desk = TokenDesk(ctx.credentials) if ctx.credentials is not None else None
    _install_errors(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _install_errors(app: FastAPI) -> None:
    """Every error, whatever raised it, answers AI Core's error body."""

    def respond(request: Request, status: int, message: str, details: Any = None) -> Response:
        body = error_body(status, message, request.url.path, request_id(), details)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return respond(request, exc.status, exc.message, exc.details)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> Response:
        return respond(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {"code": "400", "message": f"{'.'.join(map(str, e['loc']))}: {e['msg']}"}
            for e in exc.errors()
        ]
        first = details[0]["message"] if details else "invalid request"
        return respond(request, 400, f"Bad request: {first}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return respond(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        logging.getLogger("reconciler.api").exception("%s %s failed", request.method, request.url)
        return respond(request, 500, f"internal error: {type(exc).__name__}: {exc}")
