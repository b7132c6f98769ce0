"""OAuth2 client credentials for `reconciler serve`: clients, their resource groups, tokens.

Clients live in a credentials file outside the manifests (they are secrets, not desired state):
by default `~/.config/reconciler/<instance>/clients.json`, mode 0600. A client secret is shown
once, when the client is made, and stored only as a salted scrypt hash. Tokens are JWTs signed
with HS256 by a key kept in the same file, so they survive a restart of the server and stop
working when the file's key is rotated (`clients rotate-key`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .errors import UserError
from .record import file_version, write_atomic

TOKEN_SECONDS = 12 * 3600  # as XSUAA; SAP's SDK refreshes a token that has < 60 min left
ISSUER = "reconciler"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def default_credentials_path(instance: str) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "reconciler" / instance / "clients.json"


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    resource_groups: tuple[str, ...]
    secret_hash: str  # "scrypt$<salt b64>$<hash b64>"
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "name": self.name,
            "resourceGroups": list(self.resource_groups),
            "secretHash": self.secret_hash,
            "createdAt": self.created_at,
        }

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_json().items() if k != "secretHash"}


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for."""

    client_id: str
    name: str
    resource_groups: tuple[str, ...]

    def may_use(self, resource_group: str) -> bool:
        return resource_group in self.resource_groups or "*" in self.resource_groups


class AuthError(Exception):
    """A request without valid credentials (401)."""


def _hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def _secret_matches(secret: str, stored: str) -> bool:
    try:
        scheme, salt, _ = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    return hmac.compare_digest(_hash_secret(secret, base64.b64decode(salt)), stored)


class Credentials:
    """The credentials file: read on every change, written atomically with mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: bytes = b""
        self.clients: dict[str, Client] = {}
        self._stamp: tuple[int, int] | None = None
        # Verified tokens, so that the gateway's hot path skips the signature check; emptied
        # whenever the file changes (a removed client's tokens stop working at once).
        self._verified: dict[str, tuple[Identity, float]] = {}
        self._checked_at = 0.0
        self.reload()

    # -- file -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def reload(self) -> None:
        version = file_version(self.path)
        if version is None:
            self._key, self.clients, self._stamp = b"", {}, None
            return
        if version == self._stamp:
            return
        self._verified = {}
        try:
            data = json.loads(self.path.read_text())
            self._key = base64.b64decode(data["signingKey"])
            self.clients = {
                c["clientId"]: Client(
                    c["clientId"],
                    c["name"],
                    tuple(c["resourceGroups"]),
                    c["secretHash"],
                    c.get("createdAt", ""),
                )
                for c in data.get("clients", [])
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"credentials file {self.path} is unreadable ({exc}): restore it, or delete it "
                "and add the clients again"
            ) from None
        self._stamp = version

    def _save(self) -> None:
        if not self._key:
            self._key = secrets.token_bytes(32)
        data = {
            "formatVersion": FORMAT_VERSION,
            "signingKey": base64.b64encode(self._key).decode(),
            "clients": [self.clients[k].to_json() for k in sorted(self.clients)],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(data, indent=2) + "\n", mode=0o600)
        self._stamp = file_version(self.path)
        self._verified = {}

    # -- management -------------------------------------------------------------------------

    def add(self, name: str, resource_groups: list[str]) -> tuple[Client, str]:
        """A new client and its secret (shown once; only its hash is stored)."""
        if not _NAME.match(name):
            raise UserError(f"client name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
        if any(c.name == name for c in self.clients.values()):
            raise UserError(f"a client named {name!r} exists: remove it first, or pick a name")
        if not resource_groups:
            raise UserError("give the client at least one --resource-group (or '*' for all)")
        for group in resource_groups:
            if group != "*" and not re.fullmatch(r"[\w.-]{1,253}", group):
                raise UserError(f"resource group {group!r} is not a valid name")
        secret = secrets.token_urlsafe(32)
        client = Client(
            client_id=f"{name}-{secrets.token_hex(4)}",
            name=name,
            resource_groups=tuple(dict.fromkeys(resource_groups)),
            secret_hash=_hash_secret(secret),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self.clients[client.client_id] = client
        self._save()
        return client, secret

    def remove(self, name_or_id: str) -> Client:
        found = [c for c in self.clients.values() if name_or_id in (c.client_id, c.name)]
        if not found:
            known = ", ".join(sorted(c.name for c in self.clients.values())) or "none"
            raise UserError(f"no client {name_or_id!r} (clients: {known})")
        del self.clients[found[0].client_id]
        self._save()
        return found[0]

    def rotate_key(self) -> None:
        """A new signing key: every token issued so far stops working."""
        self._key = secrets.token_bytes(32)
        self._save()

    # -- tokens -----------------------------------------------------------------------------

    def issue(self, client_id: str, client_secret: str, now: float | None = None) -> str:
        self.reload()
        client = self.clients.get(client_id)
        # The hash is computed even for an unknown id, so timing does not tell ids apart.
        stored = client.secret_hash if client else _hash_secret("x")
        if not _secret_matches(client_secret, stored) or client is None:
            raise AuthError("invalid client credentials")
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": ISSUER,
            "sub": client.client_id,
            "iat": issued,
            "exp": issued + TOKEN_SECONDS,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> Identity:
        """The identity a token speaks for; AuthError when it is forged, expired or its client
        was removed (a removed client's tokens stop working within a second)."""
        # The file is looked at once a second, not on every request: this is the gateway's
        # hot path.
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            self.reload()
        cached = self._verified.get(token)
        if cached and cached[1] > time.time():
            return cached[0]
        if not self._key:
            raise AuthError("no clients are configured")
        try:
            claims: Mapping[str, Any] = jwt.decode(
                token, self._key, algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired: request a new one at /oauth/token") from None
        except jwt.InvalidTokenError:
            raise AuthError("the token is not valid") from None
        client = self.clients.get(str(claims.get("sub")))
        if client is None:
            raise AuthError("the token's client no longer exists")
        identity = Identity(client.client_id, client.name, client.resource_groups)
        if len(self._verified) > 10_000:  # bounded: forgeries are never cached, but be safe
            self._verified = {}
        self._verified[token] = (identity, float(claims["exp"]))
        return identity
