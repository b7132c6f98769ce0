"""/oauth/token: OAuth2 client credentials, as AI Core's XSUAA answers them (the token desk,
reconciler.api.auth.TokenDesk, checks the secret and limits failed attempts)."""

import base64
import urllib.parse

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..auth import TOKEN_SECONDS, AuthError, Throttled, TokenDesk

router = APIRouter()

# The form as the OpenAPI document shows it: the endpoint reads the raw body itself (so that
# a client's Basic credentials may stand in for the form's), and FastAPI cannot see that.
_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post("/oauth/token", openapi_extra=_FORM)
async def token(request: Request) -> JSONResponse:
    """OAuth2 client credentials (form fields, or HTTP Basic for the client)."""
    raw = await request.body()
    form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode("latin-1")).items()}
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    basic = request.headers.get("authorization", "")
    if basic.lower().startswith("basic "):
        try:
            pair = base64.b64decode(basic[6:]).decode()
            client_id, _, client_secret = pair.partition(":")
        except ValueError:
            return _oauth_error(401, "invalid_client", "malformed Basic credentials")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials")
    desk: TokenDesk | None = request.app.state.token_desk
    if desk is None:
        return _oauth_error(400, "invalid_request", "this server runs without auth")
    if not client_id or not client_secret:
        return _oauth_error(401, "invalid_client", "client_id and client_secret are needed")
    # The caller's address as the relay gave it (X-Forwarded-For: the peer, or what a
    # trusted proxy said), for the limit on failed attempts per source address.
    address = request.client.host if request.client else ""
    try:
        issued = await desk.issue(client_id, client_secret, address)
    except Throttled as exc:
        return _oauth_error(429, "temporarily_unavailable", str(exc), exc.retry_after)
    except AuthError as exc:
        return _oauth_error(401, "invalid_client", str(exc))
    return JSONResponse(
        {
            "access_token": issued,
            "token_type": "bearer",
            "expires_in": TOKEN_SECONDS - 1,
            "scope": "",
        },
        headers={"Cache-Control": "no-store"},
    )


def _oauth_error(
    status: int, code: str, description: str, retry_after: int | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="oauth"'} if status == 401 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": code, "error_description": description}, status, headers)
