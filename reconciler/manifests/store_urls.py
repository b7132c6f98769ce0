"""The form of an object store's artifact URL, checked without the store (pure).

* `ai://<secret>/<path>`: AI Core's form. `<secret>` names an object-store secret of the
  artifact's resource group (kept outside git: `reconciler secrets objectstore add`); the
  objects are under `<its pathPrefix>/<path>` in its bucket.
* `s3://<bucket>/<path>`: a bucket named directly; the credentials are those of the resource
  group's object-store secret for that bucket.

`<path>` names a folder (every object under it) or one object. Whether the secret exists and
the objects are there is known only when a plan reads the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

STORE_SCHEMES = ("ai", "s3")
_SECRET = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,231}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreUrl:
    scheme: str  # ai or s3
    name: str  # the secret (ai) or the bucket (s3)
    path: str  # no leading or trailing '/'


def parse_store_url(url: str) -> StoreUrl:
    """Raises ValueError with a one-line problem naming the scheme and the part."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    what = "object-store secret" if scheme == "ai" else "bucket"
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {', '.join(STORE_SCHEMES)}")
    if parts.query or parts.fragment or parts.username or parts.password or parts.port:
        raise ValueError(f"{scheme}:// takes {what} and a path only (no user, port or query)")
    name = parts.hostname or ""
    pattern = _SECRET if scheme == "ai" else _BUCKET
    if not pattern.match(name) or name != parts.netloc:
        example = "ai://<secret>/<path>" if scheme == "ai" else "s3://<bucket>/<path>"
        raise ValueError(
            f"{scheme}:// {what} {parts.netloc!r} is not a valid name ({example}; lower-case "
            "letters, digits and '-')"
        )
    path = unquote(parts.path).strip("/")
    segments = path.split("/")
    if not path or any(s in ("", ".", "..") for s in segments):
        raise ValueError(
            f"{scheme}://{name}: the path {parts.path!r} must name a folder or object "
            "(no empty, '.' or '..' parts)"
        )
    return StoreUrl(scheme, name, path)


def is_store_url(url: str | None) -> bool:
    """An object store's URL (ai://, s3://), whatever else is wrong with it."""
    return bool(url) and urlsplit(url or "").scheme.lower() in STORE_SCHEMES


def store_url_problem(url: str) -> str | None:
    try:
        parse_store_url(url)
    except ValueError as exc:
        return str(exc)
    return None
