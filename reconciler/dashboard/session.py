"""Who looks at the dashboard: sign-in with a client's id and secret (the same token as
/oauth/token, kept in an HttpOnly, SameSite=Strict cookie scoped to /ui), and the CSRF token
every form that changes something carries.

The CSRF token is an HMAC of the session's token under a key of this server process: a page of
another site can neither read it nor make it, and SameSite=Strict keeps the cookie off other
sites' requests anyway (two locks, as OWASP advises). `serve --no-auth` has no sign-in: every
visitor is the anonymous operator, and forms still carry a token tied to this process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from ..api.auth import TOKEN_SECONDS, AuthError, Credentials, Identity
from ..api.context import ANONYMOUS

COOKIE = "reconciler_ui"
PATH = "/ui"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Viewer:
    """A signed-in client (or the anonymous operator without auth) and its CSRF token."""

    identity: Identity
    csrf: str

    @property
    def may_write(self) -> bool:
        return not self.identity.read_only

    @property
    def operator(self) -> bool:
        """May see every resource group (warnings that name any deployment, the whole plan)."""
        return "*" in self.identity.resource_groups

    def may_see(self, resource_group: str) -> bool:
        return self.identity.may_use(resource_group)


class Sessions:
    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self._key = secrets.token_bytes(32)  # (a restart of serve asks forms to be reloaded)

    @property
    def needs_sign_in(self) -> bool:
        return self.credentials is not None

    def viewer(self, request: Request) -> Viewer | None:
        """Who the request's cookie speaks for; None: sign in first."""
        if self.credentials is None:
            return Viewer(ANONYMOUS, self._csrf("anonymous"))
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        try:
            identity = self.credentials.verify(token)
        except AuthError:
            return None
        return Viewer(identity, self._csrf(token))

    def csrf_ok(self, request: Request, viewer: Viewer, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(sent or "", viewer.csrf)

    def start(self, response: Response, request: Request, token: str) -> None:
        response.set_cookie(
            COOKIE,
            token,
            max_age=TOKEN_SECONDS,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def end(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")

    def _csrf(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:40]
