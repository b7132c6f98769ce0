"""AI API errors: `ApiError` (what an endpoint raises) and the body every error answer has,
`{"error": {code, message, requestId, target, details}}`, as upstream.

No FastAPI here: the relay (reconciler.serve.relay) writes the same bodies on its own.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


class ApiError(Exception):
    """An answer other than success: its HTTP status, message and details (app.py's handlers
    turn it into the error body)."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def request_id() -> str:
    return uuid.uuid4().hex


def error_body(
    status: int,
    message: str,
    target: str = "",
    rid: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "code": str(status),
            "message": message,
            "requestId": rid or request_id(),
            "target": target,
            "details": details or [],
        }
    }


def error_bytes(status: int, message: str, target: str = "", rid: str | None = None) -> bytes:
    return json.dumps(error_body(status, message, target, rid)).encode()
