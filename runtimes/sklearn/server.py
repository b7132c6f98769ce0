"""Model server: serves the scikit-learn model in /mnt/models with the kserve SDK.

Configuration (environment):
  MODEL_NAME   name in the URLs (/v1/models/NAME, /v2/models/NAME); default "churn"
  PORT         HTTP port for V1 and V2; default 8080
  STORAGE_URI  where the model came from (set by the reconciler); only reported in logs/errors
  MODEL_DIR    model folder; default /mnt/models (the reconciler always mounts it there)

Exits 1 with one `error: ...` line on stderr when the configuration is wrong or there is no
loadable model, before anything listens: readiness can only ever answer for a loaded model.
"""

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODEL_FILES = ("model.joblib", "model.pkl", "model.pickle")


class ConfigError(Exception):
    pass


def config() -> tuple[str, int, Path, str]:
    name = os.environ.get("MODEL_NAME", "").strip() or "churn"
    if not NAME.match(name):
        raise ConfigError(
            f"MODEL_NAME={name!r} cannot appear in a URL: use letters, digits, '_', '.', '-'"
        )
    port_text = os.environ.get("PORT", "").strip() or "8080"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"PORT={port_text!r} is not a port number (1-65535)")
    model_dir = Path(os.environ.get("MODEL_DIR", "").strip() or "/mnt/models")
    return name, int(port_text), model_dir, os.environ.get("STORAGE_URI", "")


def model_folder_problem(model_dir: Path, storage_uri: str) -> str | None:
    where = f"{model_dir} (STORAGE_URI={storage_uri or 'unset'})"
    try:
        names = set(os.listdir(model_dir)) if model_dir.is_dir() else set()
    except PermissionError:
        # The server runs as a non-root user; a model folder private to its owner (mode 700)
        # is mounted fine but cannot be read.
        return (
            f"cannot read {where}: permission denied for uid {os.getuid()}; "
            "make the model folder readable by all (chmod -R a+rX)"
        )
    except OSError as exc:
        return f"cannot read {where}: {exc.strerror}"
    if not names.intersection(MODEL_FILES):
        return (
            f"no model in {where}: expected {' or '.join(MODEL_FILES)}; mount a model folder there"
        )
    return None


def main() -> int:
    try:
        name, port, model_dir, storage_uri = config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # Importing kserve, pandas and scikit-learn takes a second or two: a container started
    # without a model says so at once instead.
    problem = model_folder_problem(model_dir, storage_uri)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1

    # kserve 0.16 still answers with FastAPI's ORJSONResponse, which newer FastAPI deprecates
    # on every request: a warning for kserve's maintainers, not for whoever reads these logs.
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")

    from kserve import ModelServer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from sklearn_model import ModelLoadError, SklearnModel

    # The constructor also configures kserve's log format, so construct it before loading.
    server = ModelServer(
        http_port=port,
        enable_grpc=False,  # one REST port, as the serving template publishes
        workers=1,
        enable_latency_logging=False,  # uvicorn's access log already has one line per request
    )
    # Two timing lines per request from kserve's middleware drown the access log.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("kserve").addFilter(ClientErrorFilter())

    model = SklearnModel(name, model_dir, storage_uri)
    try:
        model.load()
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    class FixedModels(ModelRepositoryExtension):
        """A GitOps deployment serves the model it was started with: no load/unload over HTTP.

        kserve's extension would let any client unload the model (then every request is a
        404 while readiness still says 200).
        """

        async def load(self, model_name: str) -> None:
            raise NotImplementedError("this server serves a fixed model; it cannot load others")

        async def unload(self, model_name: str) -> None:
            raise NotImplementedError("this server serves a fixed model; it cannot unload it")

    server.model_repository_extension = FixedModels(server.registered_models)
    install_error_handlers()
    install_parameter_filter()
    install_version_routes(server, model)
    server.start([model])
    return 0


class ClientErrorFilter(logging.Filter):
    """One INFO line, not an ERROR with a traceback, for a request the client got wrong.

    kserve's error handlers log every refused request with its traceback; a bad payload is
    the client's mistake and is already answered with a 4xx that says what is wrong.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from kserve.errors import InvalidInput, ModelNotFound

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InvalidInput | ModelNotFound | NotImplementedError):
            record.msg, record.args = "request refused: %s", (exc,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_error_handlers() -> None:
    """Make FastAPI's own errors look like kserve's: a 4xx with {"error": "..."}.

    kserve leaves request-validation errors of the V2 body (not JSON, a field missing, a wrong
    type) to FastAPI, which answers 422 with {"detail": [...]}, and unknown paths to Starlette
    ({"detail": "Not Found"}). Clients of this server get one error shape.
    """
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.model_server import app
    from starlette.exceptions import HTTPException

    async def validation_error(request: Request, exc: Any) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": describe_validation(exc.errors())})

    async def http_error(request: Request, exc: Any) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": f"{exc.detail}: {request.method} {request.url.path}"},
            headers=getattr(exc, "headers", None),
        )

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def install_parameter_filter() -> None:
    """Accept MLServer-style V2 parameters that kserve's request model refuses.

    AI Core's V2 examples (and MLServer clients) send `parameters` with `headers: {}` and other
    non-scalar values at request, input and output level; the protocol allows extra
    parameters. kserve 0.16 accepts only strings, numbers and booleans there and answers 400.
    This model uses none of them, so non-scalar values are dropped before kserve parses the
    body. Bodies without such values pass through untouched (no second JSON round trip).
    """
    from kserve.model_server import app

    app.add_middleware(ParameterFilter)


def _scalar_parameters(part: Any) -> bool:
    """Drop non-scalar values from `part["parameters"]`; True if anything was dropped."""
    params = part.get("parameters") if isinstance(part, dict) else None
    if not isinstance(params, dict):
        return False
    dropped = [k for k, v in params.items() if isinstance(v, dict | list)]
    for key in dropped:
        del params[key]
    return bool(dropped)


class ParameterFilter:
    """Pure ASGI middleware (see install_parameter_filter)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/infer")
        ):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnected: let the app see it
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b'"parameters"' in body:
            body = self._filtered(body)
        delivered = False

        async def replay() -> Any:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)

    @staticmethod
    def _filtered(body: bytes) -> bytes:
        import orjson

        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body  # kserve explains what is wrong with it
        if not isinstance(request, dict):
            return body
        parts = [request]
        for key in ("inputs", "outputs"):
            if isinstance(request.get(key), list):
                parts += request[key]
        changed = [_scalar_parameters(part) for part in parts]
        return orjson.dumps(request) if any(changed) else body


# Pydantic reports a failed "str | number | bool" parameter once per alternative.
_UNION_BRANCHES = {"float": "number", "int": "number", "bool": "boolean", "str": "string"}


def describe_validation(errors: Any) -> str:
    problems: list[str] = []
    for error in errors:
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            return f"request body is not valid JSON{': ' + detail if detail else ''}"
        location = [str(p) for p in error.get("loc", ())]
        # The V2 body is declared as "InferenceRequest or bytes": the bytes branch's complaint
        # says nothing useful, and the branch names are noise in the location.
        if location[1:2] == ["bytes"]:
            continue
        location = [p for p in location if p not in ("body", "InferenceRequest")]
        message = error.get("msg", "invalid")
        if location and location[-1] in _UNION_BRANCHES:
            location = location[:-1]
            message = "parameter values must be a string, number or boolean"
        problem = f"{'.'.join(location) or 'body'}: {message}"
        if problem not in problems:
            problems.append(problem)
    return "invalid inference request: " + ("; ".join(problems) or "unreadable body")


def install_version_routes(server: Any, model: Any) -> None:
    """Serve /v2/models/NAME/versions/V/... for the loaded model's version.

    (No `from __future__ import annotations` in this module: FastAPI reads these handlers'
    annotations at runtime, and the types are imported inside the function.)

    kserve answers 501 on every versioned path; AI Core's documentation uses them. The model
    folder's metadata.json names the version (a model without one is version "1").
    These routes are added before kserve's, so they take precedence.
    """
    from fastapi import HTTPException, Request, Response
    from kserve.model_server import app
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from kserve.protocol.rest.v2_endpoints import V2Endpoints

    endpoints = V2Endpoints(server.dataplane, server.model_repository_extension)
    served = model.version

    def check(model_name: str, model_version: str) -> None:
        if model_name == model.name and model_version != served:
            raise HTTPException(
                404, f"model {model_name!r} has no version {model_version!r} (serving {served})"
            )

    async def metadata(model_name: str) -> Any:
        response = await endpoints.model_metadata(model_name)
        if model_name == model.name:
            response.versions = [served]
        return response

    async def versioned_metadata(model_name: str, model_version: str) -> Any:
        check(model_name, model_version)
        return await metadata(model_name)

    async def versioned_ready(model_name: str, model_version: str) -> Any:
        check(model_name, model_version)
        return await endpoints.model_ready(model_name)

    async def versioned_infer(
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        model_version: str,
        request_body: InferenceRequest | bytes,
    ) -> Any:
        check(model_name, model_version)
        return await endpoints.infer(raw_request, raw_response, model_name, request_body)

    prefix = "/v2/models/{model_name}"
    app.add_api_route(prefix, metadata, methods=["GET"])
    app.add_api_route(prefix + "/versions/{model_version}", versioned_metadata, methods=["GET"])
    app.add_api_route(prefix + "/versions/{model_version}/ready", versioned_ready, methods=["GET"])
    app.add_api_route(
        prefix + "/versions/{model_version}/infer",
        versioned_infer,
        methods=["POST"],
        response_model=None,
    )


if __name__ == "__main__":
    sys.exit(main())
