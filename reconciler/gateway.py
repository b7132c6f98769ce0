"""The inference gateway: `<api>/v2/inference/deployments/<id>/<path>` → the deployment's
containers.

A plain ASGI app on the hot path (no framework routing): it looks the deployment up in the
routing table, picks a serving replica round-robin and relays the request over pooled
keep-alive connections (aiohttp), streaming both bodies so that large uploads and server-sent
events pass through as they come. A replica that refuses the connection (stopped a moment ago)
is skipped after a table refresh: the request was never received, so retrying it is safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

from .api_error import error_bytes, request_id
from .routes import Route, RouteTable

PREFIX = "/v2/inference/deployments/"
BUFFER_LIMIT = 1 << 20  # request bodies up to this size are read first, so they can be retried
CONNECT_ATTEMPTS = 3
MISS_REFRESH_SECONDS = 0.1
# Hop-by-hop headers are the connection's, not the message's (RFC 9110 7.6.1); the bearer
# token and resource group are the gateway's business, not the model server's.
_DROP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
    b"authorization",
    b"ai-resource-group",
}
_DROP_RESPONSE = _DROP - {b"authorization", b"ai-resource-group"}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# Decides whether the caller may use a deployment: returns None, or (status, message) to refuse.
Authorizer = Callable[[Scope, Route | None], tuple[int, str] | None]
Observer = Callable[[str, float, int, bool], None]  # deployment id, seconds, status, upstream ok

log = logging.getLogger("reconciler.gateway")


class Gateway:
    def __init__(
        self,
        table: RouteTable,
        timeout: float = 300.0,
        authorize: Authorizer | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.table = table
        self.timeout = timeout
        self.authorize = authorize
        self.observe = observe
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=None),
            auto_decompress=False,  # relay bytes as the model server sent them
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.timeout),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = asyncio.get_running_loop().time()
        rest = scope["path"][len(PREFIX) :]
        dep_id, _, path = rest.partition("/")
        route = self.table.get(dep_id)
        if route is None or route.status != "RUNNING" or not route.targets:
            await asyncio.get_running_loop().run_in_executor(
                None, self.table.refresh_if_stale, MISS_REFRESH_SECONDS
            )
            route = self.table.get(dep_id)
        refusal = self.authorize(scope, route) if self.authorize else None
        if refusal:
            await _error(send, *refusal, target=scope["path"])
            return
        if route is None:
            await _error(send, 404, f"Deployment {dep_id} not found", target=scope["path"])
            return
        if route.status != "RUNNING" or not route.targets:
            status = route.status if route.status != "RUNNING" else "PENDING"
            await _error(
                send,
                503,
                f"Deployment {dep_id} is {status}: it serves requests only when RUNNING",
                target=scope["path"],
            )
            return
        status = await self._relay(scope, receive, send, route, path)
        if self.observe:
            elapsed = asyncio.get_running_loop().time() - started
            self.observe(dep_id, elapsed, status, status < 502 or status > 504)

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, route: Route, path: str
    ) -> int:
        assert self._session is not None, "Gateway.start() was not awaited"
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k not in _DROP
        ]
        length = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        chunked = any(k == b"transfer-encoding" for k, _ in scope["headers"])
        body: bytes | AsyncIterator[bytes]
        if length is None and not chunked:
            body = b""  # HTTP/1.1: no length and no chunks means no body
        elif length is not None and length <= BUFFER_LIMIT:
            body = await _read_body(receive)
        else:
            body = _stream_body(receive)
        query = scope.get("query_string") or b""
        suffix = "/" + path + ("?" + query.decode("latin-1") if query else "")
        target = route.pick()
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                upstream = await self._session.request(
                    scope["method"],
                    f"http://{target}{suffix}",
                    headers=headers,
                    data=body if body else None,
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError as exc:
                # Never received: safe to send again, to another replica or a fresher table.
                if attempt + 1 == CONNECT_ATTEMPTS or not isinstance(body, bytes):
                    return await _error(send, 502, f"model server unreachable: {exc.os_error}")
                await asyncio.get_running_loop().run_in_executor(None, self.table.refresh)
                fresh = self.table.get(route.deployment_id)
                target = fresh.pick() if fresh else None
                if target is None:
                    return await _error(
                        send, 503, f"Deployment {route.deployment_id} has no serving replica now"
                    )
                continue
            except TimeoutError:
                return await _error(
                    send, 504, f"model server did not answer within {self.timeout:g}s"
                )
            except aiohttp.ClientError as exc:
                return await _error(send, 502, f"model server failed: {exc}")
            break
        async with upstream:
            out_headers = [
                (k, v) for k, v in upstream.raw_headers if k.lower() not in _DROP_RESPONSE
            ]
            await send(
                {"type": "http.response.start", "status": upstream.status, "headers": out_headers}
            )
            try:
                async for chunk in upstream.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("deployment %s: response cut off: %s", route.deployment_id, exc)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return upstream.status


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


async def _error(send: Send, status: int, message: str, target: str = "") -> int:
    body = error_bytes(status, message, target, request_id())
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status
