"""Readiness probes: is a model server ready to take requests?

HTTP GET on the template's readiness path through the published port (what clients will use),
or, for templates without an HTTP probe, a TCP connect to the container's own address: through
Docker's port proxy a TCP connect always succeeds, even when nothing listens.
"""

from __future__ import annotations

import http.client
import socket


def http_ready(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[bool, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read(1024)
        if 200 <= response.status < 300:
            return True, f"GET {path} answered {response.status}"
        return False, f"GET {path} answered {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"GET {path} failed: {_reason(exc)}"
    finally:
        conn.close()


def tcp_ready(host: str, port: int, timeout: float = 2.0) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"port {port} accepts connections"
    except OSError as exc:
        return False, f"port {port} does not accept connections ({_reason(exc)})"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
        return "connection closed without an answer"
    return str(exc) or type(exc).__name__
