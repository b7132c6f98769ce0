"""OAuth2 client credentials for `reconciler serve`: clients, their resource groups, tokens.

Clients live in a credentials file outside the manifests (they are secrets, not desired state):
by default `~/.config/reconciler/<instance>/clients.json`, mode 0600. A client secret is shown
once, when the client is made, and stored only as a salted scrypt hash. Tokens are JWTs signed
with HS256 by a key kept in the same file, so they survive a restart of the server and stop
working when the file's key is rotated (`clients rotate-key`).

While `serve` runs, the file is the authority: it is looked at again at most once a second, and
when it is gone or unreadable no client is valid (every token is refused) until it is back.
Failed token requests are limited per client id and per source address (`TokenDesk`), and the
scrypt check runs in a small thread pool, off the server's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from ..errors import UserError
from ..files import FileVersion, config_dir, file_version, write_atomic

TOKEN_SECONDS = 12 * 3600  # as XSUAA; SAP's SDK refreshes a token that has < 60 min left
ISSUER = "reconciler"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
CHECK_SECONDS = 1.0  # how stale serve's view of the credentials file may be
FAILURE_LIMIT = 10  # failed token requests per client id, and per source address, ...
FAILURE_WINDOW_SECONDS = 60.0  # ... in this window; then 429 until the window ends
FAILURE_KEYS = 8192  # counters kept at most (memory stays bounded whatever callers send)
HASH_WORKERS = 2  # scrypt takes 16 MiB and ~50 ms a call: a few at a time is plenty

log = logging.getLogger("reconciler.auth")


def default_credentials_path(instance: str) -> Path:
    return config_dir(instance) / "clients.json"


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    resource_groups: tuple[str, ...]
    secret_hash: str  # "scrypt$<salt b64>$<hash b64>"
    created_at: str
    read_only: bool = False  # may look (API GETs, the dashboard), never change anything

    def to_json(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "name": self.name,
            "resourceGroups": list(self.resource_groups),
            "secretHash": self.secret_hash,
            "createdAt": self.created_at,
            "readOnly": self.read_only,
        }

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_json().items() if k != "secretHash"}


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for."""

    client_id: str
    name: str
    resource_groups: tuple[str, ...]
    read_only: bool = False

    def may_use(self, resource_group: str) -> bool:
        return resource_group in self.resource_groups or "*" in self.resource_groups


class AuthError(Exception):
    """A request without valid credentials (401)."""


class Throttled(Exception):
    """Too many failed token requests for a client id or a source address (429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts: retry after {retry_after} s")
        self.retry_after = retry_after


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


# What tells one state of the credentials file from the next: its version, and whether this
# process may read it (a chmod changes neither inode, mtime nor size). None: there is no file.
_Stamp = tuple[FileVersion, bool] | None


@dataclass(frozen=True, eq=False)
class _Loaded:
    """One reading of the credentials file. It is replaced whole, never changed, so that a
    verification that began under one key can only cache its result with that key's reading,
    which a new key's reading does not carry over."""

    key: bytes
    clients: dict[str, Client]
    stamp: _Stamp | str  # str: a stamp that could not be taken (the error), read as unreadable
    verified: dict[str, tuple[Identity, float]] = field(default_factory=dict)


class Credentials:
    """The credentials file: read on every change, written atomically with mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Verified tokens (in `_loaded.verified`), so that the gateway's hot path skips the
        # signature check; a new reading of the file starts with none (a removed client's
        # tokens, and those signed with a rotated key, stop working at once).
        self._loaded = _Loaded(b"", {}, None)
        self._lock = threading.Lock()  # one reload at a time: readings never go back in time
        self._checked_at = 0.0
        self.reload()

    @property
    def clients(self) -> dict[str, Client]:
        return self._loaded.clients

    @property
    def _key(self) -> bytes:
        return self._loaded.key

    # -- file -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def _stamp(self) -> _Stamp | str:
        try:
            version = file_version(self.path)
            return None if version is None else (version, os.access(self.path, os.R_OK))
        except OSError as exc:  # a folder on the way that we may not enter, say
            return f"{type(exc).__name__}: {exc}"

    def reload(self, strict: bool = True) -> None:
        """Read the file again if it changed. A missing file means no clients. An unreadable
        one is an error when `strict` (the command line, serve's start); while serving
        (`strict=False`) it means no clients either, and is logged once: fail closed."""
        with self._lock:
            stamp = self._stamp()
            if stamp == self._loaded.stamp:
                return
            if stamp is None:
                if self._loaded.key:
                    log.warning("%s is gone: every token is refused until it is back", self.path)
                self._loaded = _Loaded(b"", {}, None)
                return
            try:
                if isinstance(stamp, str):
                    raise OSError(stamp)
                data = json.loads(self.path.read_text())
                key = base64.b64decode(data["signingKey"])
                clients = {
                    c["clientId"]: Client(
                        c["clientId"],
                        c["name"],
                        tuple(c["resourceGroups"]),
                        c["secretHash"],
                        c.get("createdAt", ""),
                        bool(c.get("readOnly", False)),
                    )
                    for c in data.get("clients", [])
                }
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problem = (
                    f"credentials file {self.path} is unreadable ({exc}): restore it, or delete "
                    "it and add the clients again"
                )
                if strict:
                    raise UserError(problem) from None
                log.warning("%s; until then every token is refused", problem)
                self._loaded = _Loaded(b"", {}, stamp)
                return
            self._loaded = _Loaded(key, clients, stamp)

    def _save(self, key: bytes, clients: dict[str, Client]) -> None:
        key = key or secrets.token_bytes(32)
        data = {
            "formatVersion": FORMAT_VERSION,
            "signingKey": base64.b64encode(key).decode(),
            "clients": [clients[k].to_json() for k in sorted(clients)],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(data, indent=2) + "\n", mode=0o600)
        with self._lock:
            self._loaded = _Loaded(key, clients, self._stamp())

    # -- management -------------------------------------------------------------------------

    def add(
        self, name: str, resource_groups: list[str], read_only: bool = False
    ) -> tuple[Client, str]:
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
            read_only=read_only,
        )
        self._save(self._key, {**self.clients, client.client_id: client})
        return client, secret

    def remove(self, name_or_id: str) -> Client:
        found = [c for c in self.clients.values() if name_or_id in (c.client_id, c.name)]
        if not found:
            known = ", ".join(sorted(c.name for c in self.clients.values())) or "none"
            raise UserError(f"no client {name_or_id!r} (clients: {known})")
        self._save(self._key, {k: c for k, c in self.clients.items() if c is not found[0]})
        return found[0]

    def rotate_key(self) -> None:
        """A new signing key: every token issued so far stops working."""
        self._save(secrets.token_bytes(32), self.clients)

    # -- tokens -----------------------------------------------------------------------------

    def issue(self, client_id: str, client_secret: str, now: float | None = None) -> str:
        """A token for a client whose secret matches. Slow on purpose (scrypt): call it off the
        event loop (`TokenDesk`)."""
        self.reload(strict=False)
        loaded = self._loaded
        client = loaded.clients.get(client_id)
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
        return jwt.encode(claims, loaded.key, algorithm="HS256")

    def verify(self, token: str) -> Identity:
        """The identity a token speaks for; AuthError when it is forged, expired, signed with
        a key that is no longer the file's, its client was removed, or the file is gone or
        unreadable (each of these within a second)."""
        # The file is looked at once a second, not on every request: this is the gateway's
        # hot path.
        now = time.monotonic()
        if now - self._checked_at >= CHECK_SECONDS:
            self._checked_at = now
            self.reload(strict=False)
        loaded = self._loaded  # one reading throughout: its key, its clients, its cache
        cached = loaded.verified.get(token)
        if cached and cached[1] > time.time():
            return cached[0]
        if not loaded.key:
            raise AuthError("no clients are configured")
        try:
            claims: Mapping[str, Any] = jwt.decode(
                token, loaded.key, algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired: request a new one at /oauth/token") from None
        except jwt.InvalidTokenError:
            raise AuthError("the token is not valid") from None
        client = loaded.clients.get(str(claims.get("sub")))
        if client is None:
            raise AuthError("the token's client no longer exists")
        identity = Identity(client.client_id, client.name, client.resource_groups, client.read_only)
        if len(loaded.verified) > 10_000:  # bounded: forgeries are never cached, but be safe
            loaded.verified.clear()
        loaded.verified[token] = (identity, float(claims["exp"]))
        return identity


class FailureCounter:
    """Failed attempts per key, in fixed windows that start at a key's first failure. At
    `limit` failures a key is blocked until its window ends. At most `capacity` keys are
    kept: ended windows go first, then the oldest (windows are kept in the order they began,
    so both are at the front)."""

    def __init__(
        self,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW_SECONDS,
        capacity: int = FAILURE_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.capacity, self.clock = limit, window, capacity, clock
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # key: [ends at, count]
        self._lock = threading.Lock()

    def charge(self, keys: tuple[str, ...]) -> None:
        """Count an attempt as failed for every key, before it is checked: so that concurrent
        attempts cannot overrun the limit. Throttled (and nothing counted) when a key is
        blocked; `refund` when the attempt succeeds."""
        with self._lock:
            now = self.clock()
            waits = [w[0] - now for k in keys if (w := self._live(k, now)) and w[1] >= self.limit]
            if waits:
                raise Throttled(max(1, math.ceil(max(waits))))
            for key in keys:
                window = self._live(key, now)
                if window is None:
                    self._make_room(now)
                    window = self._windows[key] = [now + self.window, 0]
                window[1] += 1

    def refund(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            now = self.clock()
            for key in keys:
                window = self._live(key, now)
                if window is not None and window[1] > 0:
                    window[1] -= 1

    def _live(self, key: str, now: float) -> list[float] | None:
        window = self._windows.get(key)
        if window is not None and window[0] <= now:
            del self._windows[key]  # ended: a new failure starts a new window, at the back
            return None
        return window

    def _make_room(self, now: float) -> None:
        while self._windows:
            ends_at = next(iter(self._windows.values()))[0]
            if ends_at > now and len(self._windows) < self.capacity:
                return
            self._windows.popitem(last=False)


def source_key(address: str) -> str:
    """What counts as one source address: an IPv6 caller's /64 (a host usually holds all of
    one), any other address as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TokenDesk:
    """/oauth/token's work: the scrypt check in a small thread pool (hashlib's scrypt releases
    the GIL), so that wrong secrets cannot stall the event loop that relays inference; and failed
    attempts limited per client id and per source address, as identity providers do. A blocked
    attempt is refused before any hashing, so it costs next to nothing."""

    def __init__(
        self,
        credentials: Credentials,
        failures: FailureCounter | None = None,
        workers: int = HASH_WORKERS,
    ) -> None:
        self.credentials = credentials
        self.failures = failures or FailureCounter()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="token-hash")

    async def issue(self, client_id: str, client_secret: str, address: str) -> str:
        """A token; AuthError for wrong credentials, Throttled after too many of them."""
        keys = ("client:" + client_id[:128], "source:" + source_key(address))
        self.failures.charge(keys)
        loop = asyncio.get_running_loop()
        token = await loop.run_in_executor(
            self._pool, self.credentials.issue, client_id, client_secret
        )
        self.failures.refund(keys)  # not reached on AuthError: that attempt stays counted
        return token
