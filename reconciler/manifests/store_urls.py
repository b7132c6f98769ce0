"""The form of a downloaded model's artifact URL, checked without the store (pure).

* `ai://<secret>/<path>`: AI Core's form. `<secret>` names an object-store secret of the
  artifact's resource group (kept outside git: `reconciler secrets objectstore add`); the
  objects are under `<its pathPrefix>/<path>` in its bucket.
* `s3://<bucket>/<path>`: a bucket named directly; the credentials are those of the resource
  group's object-store secret for that bucket.
* `https://<host>[:<port>]/<path>`: one file on a web server, downloaded without credentials
  (reconciler.stores.https). Plain http is refused (a model is code the containers run), and
  so is a user or password in the URL (it would be in git, plans and logs). The rest of its
  query is the server's and sent as it is.

`<path>` names a folder (every object under it) or one object (https: one file). Whether the
secret exists and the objects are there is known only when a plan reads the store.

Any of them may end in `?version=<hex>`: a pin, at least `PIN_DIGITS` hex digits of the
model's version (the digest `reconciler plan` and `status --json` show). It is no part of
where the model is: the listing never sees it, reconciler.core.models compares it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

STORE_SCHEMES = ("ai", "s3", "https")
PIN_DIGITS = 12  # as many as `reconciler plan` shows of a version (reconciler.core.plan)
PIN_KEY = "version"
_SECRET = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,231}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PIN = re.compile(rf"[0-9a-f]{{{PIN_DIGITS},64}}")


@dataclass(frozen=True)
class StoreUrl:
    scheme: str  # ai, s3 or https
    name: str  # the secret (ai), the bucket (s3), or host[:port] (https, lower-case)
    path: str  # no leading or trailing '/' (https: as in the URL, %-escapes kept)
    pin: str | None = None  # ?version=<hex>: the model's version must start with it
    query: str = ""  # https only: the URL's query less the pin, sent to the server

    @property
    def origin(self) -> str:
        """https: where requests go (`https://host[:port]`), for allowlists and redirects."""
        return f"{self.scheme}://{self.name}"

    @property
    def fetched(self) -> str:
        """https: the URL to request (without the pin)."""
        return urlunsplit((self.scheme, self.name, "/" + self.path, self.query, ""))


def split_pin(url: str) -> tuple[str, str | None]:
    """The URL without its `version=` query parameter, and that pin (lower-case) or None.
    Raises ValueError for a pin that is not hex digits of a version."""
    parts = urlsplit(url)
    rest, pins = [], []
    for item in parts.query.split("&") if parts.query else ():
        key, _, value = item.partition("=")
        if unquote(key) == PIN_KEY:
            pins.append(unquote(value).lower())
        else:
            rest.append(item)  # (the server's parameters go back as they were written)
    if not pins:
        return url, None
    if len(pins) > 1 or not _PIN.fullmatch(pins[0]):
        shown = "&".join(f"{PIN_KEY}={p}" for p in pins)
        raise ValueError(
            f"{parts.scheme.lower()}:// ?{PIN_KEY}= pins a model version: at least "
            f"{PIN_DIGITS} hex digits of the version `reconciler plan` shows, once, not {shown!r}"
        )
    return urlunsplit(parts._replace(query="&".join(rest))), pins[0]


def parse_store_url(url: str) -> StoreUrl:
    """Raises ValueError with a one-line problem naming the scheme and the part."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        scheme = url.split(":", 1)[0].lower()
        raise ValueError(f"{scheme}:// URL is not valid ({exc})") from None
    unpinned, pin = split_pin(url)
    parts = urlsplit(unpinned)
    scheme = parts.scheme.lower()
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {', '.join(STORE_SCHEMES)}")
    if scheme == "https":
        return _https(parts, port, pin)
    what = "object-store secret" if scheme == "ai" else "bucket"
    if parts.query or parts.fragment or parts.username or parts.password or port:
        raise ValueError(
            f"{scheme}:// takes {what} and a path only (no user, port or query but "
            f"?{PIN_KEY}=<hex>)"
        )
    name = parts.hostname or ""
    pattern = _SECRET if scheme == "ai" else _BUCKET
    if not pattern.match(name) or name != parts.netloc:
        example = "ai://<secret>/<path>" if scheme == "ai" else "s3://<bucket>/<path>"
        raise ValueError(
            f"{scheme}:// {what} {parts.netloc!r} is not a valid name ({example}; lower-case "
            "letters, digits and '-')"
        )
    path = unquote(parts.path).strip("/")
    if not path or _bad_segments(path):
        raise ValueError(
            f"{scheme}://{name}: the path {parts.path!r} must name a folder or object "
            "(no empty, '.' or '..' parts)"
        )
    return StoreUrl(scheme, name, path, pin)


def _https(parts: SplitResult, port: int | None, pin: str | None) -> StoreUrl:
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "https:// takes no user or password in the URL (it would be in git, plans and "
            "logs): the file must be readable without them"
        )
    if parts.fragment:
        raise ValueError("https:// takes no #fragment (a server never sees it)")
    host = parts.hostname or ""
    if not host or any(c.isspace() for c in parts.netloc):
        raise ValueError(
            f"https:// host {parts.netloc!r} is not valid (https://<host>[:port]/<file>)"
        )
    netloc = f"[{host}]" if ":" in host else host  # (an IPv6 address keeps its brackets)
    netloc += f":{port}" if port is not None else ""
    path = parts.path
    if path.endswith("/") or _bad_segments(unquote(path).strip("/")) or "\x00" in unquote(path):
        raise ValueError(
            f"https://{netloc}: the path {path!r} must name one file (no empty, '.' or '..' "
            "parts, not a folder)"
        )
    return StoreUrl("https", netloc, path.lstrip("/"), pin, parts.query)


def _bad_segments(path: str) -> bool:
    return any(s in ("", ".", "..") for s in path.split("/"))


def endpoint_problem(allowed: Iterable[str], endpoint: str) -> str | None:
    """Why a tenant may not make the reconciler send requests to `endpoint` (scheme://host
    [:port]: an object-store secret's endpoint, an https:// model's origin), or None. Only the
    endpoints an operator listed in Settings spec.objectStoreEndpoints are allowed: the
    requests go out from the reconciler's host, and a tenant must not reach anything else on
    its network through it (SSRF)."""
    if endpoint in allowed:
        return None
    return (
        f"endpoint {endpoint} is not one this server may call: an operator adds it to "
        "Settings spec.objectStoreEndpoints"
    )


def is_store_url(url: str | None) -> bool:
    """A downloaded model's URL (ai://, s3://, https://), whatever else is wrong with it (never
    raises: urlsplit would, for a bad IPv6 host)."""
    scheme, colon, _ = (url or "").partition(":")
    return bool(colon) and scheme.lower() in STORE_SCHEMES


def store_url_problem(url: str) -> str | None:
    try:
        parse_store_url(url)
    except ValueError as exc:
        return str(exc)
    return None
