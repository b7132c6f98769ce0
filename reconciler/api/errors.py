"""AI API error bodies: `{"error": {code, message, requestId, target, details}}`, as upstream."""

from __future__ import annotations

import json
import uuid
from typing import Any


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
