"""`reconciler serve`: deployment URLs (the inference gateway) and the AI API on one port.

One ASGI app. Requests under `/v2/inference/deployments/` go straight to the gateway (no
framework on the hot path); everything else goes to the AI API, a FastAPI app that publishes
its OpenAPI document. The routing table is refreshed in the background twice a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .desired import desired_state
from .engine import Engine
from .errors import UserError
from .gateway import PREFIX, Gateway, Receive, Scope, Send
from .routes import RouteTable

REFRESH_SECONDS = 0.5

log = logging.getLogger("reconciler.server")


@dataclass(frozen=True)
class ServeOptions:
    root: Path
    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = True
    timeout: float = 300.0
    refresh_seconds: float = REFRESH_SECONDS


class App:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        desired = desired_state(options.root)
        settings = desired.repo.settings
        self.table = RouteTable(
            options.root, desired.repo.instance, settings.publish_address, Engine.connect()
        )
        self.gateway = Gateway(self.table, timeout=options.timeout)
        self.api = _api_app()
        self._refresher: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"].startswith(PREFIX):
            await self.gateway(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.gateway.start()
                await asyncio.get_running_loop().run_in_executor(None, self.table.refresh)
                self._refresher = asyncio.create_task(self._refresh_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._refresher:
                    self._refresher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._refresher
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _refresh_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.refresh_seconds)
            try:
                await loop.run_in_executor(None, self.table.refresh)
            except Exception:  # a bad snapshot must not end routing; the next tick retries
                log.exception("refreshing the routing table failed")


def _api_app() -> Any:
    from fastapi import FastAPI

    api = FastAPI(title="reconciler AI API", version="2")

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api


def serve(options: ServeOptions) -> None:
    import uvicorn

    app = App(options)
    # Bound here, not by uvicorn, so that a taken port is one clear line, not a log record.
    try:
        sock = socket.create_server((options.host, options.port), reuse_port=False)
    except OSError as exc:
        raise UserError(
            f"cannot listen on {options.host}:{options.port} "
            f"({os.strerror(exc.errno) if exc.errno else exc}): "
            "pass another --port, or stop the program that uses it"
        ) from None
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="on",
        server_header=False,  # the model server's own Date and Server headers pass through
        date_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
