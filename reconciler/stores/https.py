"""Models on web servers: the one file an `https://` artifact URL names, downloaded read-only.

`listing(url)` asks the server about the file with a HEAD (a server that refuses HEAD: a GET
of its first byte) and gives one object: its name, its size (Content-Length) and its ETag (a
server without one: Last-Modified with the size stands in). So `Listing.version` changes when
the file does, as for an object store. `HttpLocation.read` gets a byte range with a Range
header (where the server said `Accept-Ranges: bytes`; else the whole file at once), made
conditional on what was listed (If-Match / If-Range, If-Unmodified-Since): a file replaced
since answers 412, or the whole new file (200 where 206 was asked), or validators that differ,
and each raises ChangedWhileReading.

Requests go out with bounded timeouts, TLS verification always on (an internal CA: a bundle
named by REQUESTS_CA_BUNDLE or SSL_CERT_FILE), no credentials (not even ~/.netrc's: the URL
may be a tenant's), and redirects followed only within the URL's origin. Errors are one line
(`StoreError`) naming the URL without its query (which may hold a signature) and what to do.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from ..manifests.store_urls import parse_store_url
from .listing import ChangedWhileReading, Listing, StoredObject, StoreError, one_line

CONNECT_SECONDS = 5.0
READ_SECONDS = 60.0
CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
# HEAD not allowed; signed URLs (S3's presigned ones) sign the method too and answer 403.
HEAD_REFUSED = (403, 405, 501)
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
# The bytes as the server keeps them: a .gz model stays a .gz file, and Content-Length is the
# size of what comes.
PLAIN = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class HttpLocation:
    """One file on a web server, as a listing found it."""

    url: str  # what is requested: the artifact's URL without its pin
    origin: str  # where redirects may lead (scheme://host[:port], normalized)
    ranges: bool  # the server said Accept-Ranges: bytes
    etag: str | None  # the listed ETag as the server wrote it ('"x"' or 'W/"x"')
    last_modified: str | None
    prefix: str = ""  # (one file: its name is the model folder's one file)
    checksums: bool = False  # a web server's ETag is its own tag, not the file's MD5

    @property
    def identity(self) -> str:
        return f"https {self.url}"  # (hashed into the version, never shown: may hold a query)

    def describe(self) -> str:
        return _shown(self.url)

    def read(self, obj: StoredObject, start: int, end: int) -> Iterator[bytes]:
        where = self.describe()
        headers = dict(PLAIN)
        strong = self.etag is not None and not self.etag.startswith("W/")
        validator = self.etag if strong else self.last_modified
        if strong:
            headers["If-Match"] = self.etag or ""
        elif self.last_modified:
            headers["If-Unmodified-Since"] = self.last_modified
        if self.ranges:
            headers["Range"] = f"bytes={start}-{end - 1}"
            if validator:  # (a weak ETag may not be an If-Range: the date then)
                headers["If-Range"] = validator
        elif (start, end) != (0, obj.size):
            raise StoreError(f"{where}: the server sends only the whole file, not a part of it")
        response = _send("GET", self.url, self.origin, headers, where)
        try:
            skip = self._accepted(response, obj, start, end)
            yield from _body(response, skip, end - start, where, obj.key)
        finally:
            response.close()

    def _accepted(self, response: Any, obj: StoredObject, start: int, end: int) -> int:
        """The bytes to skip at the answer's start (a server that ignored the range but sent
        the same file: all of it), once the answer is known to be the listed file's. Raises
        ChangedWhileReading or StoreError."""
        where = self.describe()
        status = response.status_code
        changed = ChangedWhileReading(
            f"{where}: {obj.key} changed while it was downloaded: the next pass takes the new "
            "version"
        )
        if status in (412, 416):  # a precondition failed; a range beyond the end: it shrank
            raise changed
        if status not in (200, 206):
            raise _http_problem(response, where)
        same = self._same(response.headers)
        if same is False:
            raise changed
        if status == 206:
            match = re.match(
                r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "")
            )
            if match is None or int(match[1]) != start:
                raise StoreError(
                    f"{where}: asked for bytes {start}-{end - 1}, the server sent others"
                )
            if match[3] != "*" and int(match[3]) != obj.size:
                raise changed
            return 0
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != obj.size:
            raise changed
        if self.ranges and same is not True:  # If-Range answers 200 when the file changed
            raise changed
        return start if self.ranges else 0

    def _same(self, headers: Mapping[str, str]) -> bool | None:
        """Whether the answer's validators are the listed ones (None: it gives none)."""
        if self.etag is not None:
            got = headers.get("ETag")
            return None if got is None else got.strip() == self.etag
        if self.last_modified is not None:
            got = headers.get("Last-Modified")
            return None if got is None else got.strip() == self.last_modified
        return None


def listing(url: str) -> Listing:
    """The file an `https://` URL names: one object. Raises StoreError (one line)."""
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise StoreError(f"{_shown(url)}: {exc}") from None
    fetched = parsed.fetched
    where, origin = _shown(fetched), _origin(fetched)
    response = _send("HEAD", fetched, origin, PLAIN, where)
    try:
        # (some frameworks answer HEAD with Content-Length: 0 whatever the file: asked again)
        if response.status_code in HEAD_REFUSED or response.headers.get("Content-Length") == "0":
            response.close()
            response = _send("GET", fetched, origin, {**PLAIN, "Range": "bytes=0-0"}, where)
        size, ranges = _size(response, where)
        etag = response.headers.get("ETag", "").strip() or None
        last_modified = response.headers.get("Last-Modified", "").strip() or None
    finally:
        response.close()
    if etag is None and last_modified is None:
        raise StoreError(
            f"{where}: the server gives neither an ETag nor a Last-Modified date, so a changed "
            "file could not be told from the one listed: serve it with either"
        )
    name = unquote(parsed.path.rsplit("/", 1)[-1])
    location = HttpLocation(fetched, origin, ranges, etag, last_modified)
    return Listing(location, (StoredObject(name, size, _stored_etag(etag, last_modified)),))


def _size(response: Any, where: str) -> tuple[int, bool]:
    """The file's size and whether the server reads ranges of it, from a HEAD's answer or a
    GET of byte 0's. Raises StoreError."""
    status = response.status_code
    headers = response.headers
    if status in (206, 416):  # Content-Range: bytes 0-0/<size> (416: bytes */<size>, empty)
        match = re.search(r"/(\d+)$", headers.get("Content-Range", ""))
        if match is None:
            raise StoreError(f"{where}: the server answered a range without the file's size")
        return int(match[1]), True
    if status != 200:
        raise _http_problem(response, where)
    length = headers.get("Content-Length", "")
    if not length.isdigit():
        raise StoreError(
            f"{where}: the server gives no Content-Length, which the download is checked "
            "against: serve the file with one"
        )
    accepts = {v.strip().lower() for v in headers.get("Accept-Ranges", "").split(",")}
    return int(length), response.request.method == "HEAD" and "bytes" in accepts


def _stored_etag(etag: str | None, last_modified: str | None) -> str:
    """The listed ETag as StoredObject keeps it (no quotes; a weak one keeps its W/), or a
    stand-in that changes with the file's date (the size is beside it in the version)."""
    if etag is None:
        return f"last-modified {last_modified}"
    weak = etag.startswith("W/")
    value = etag[2:] if weak else etag
    return ("W/" if weak else "") + value.strip('"')


def _send(method: str, url: str, origin: str, headers: Mapping[str, str], where: str) -> Any:
    """A streamed answer that is no redirect: redirects are followed within `origin` only.
    Raises StoreError."""
    import requests

    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = _session().request(
                method,
                url,
                headers=dict(headers),
                timeout=(CONNECT_SECONDS, READ_SECONDS),
                allow_redirects=False,
                stream=True,
                verify=_verify(),
                proxies=requests.utils.get_environ_proxies(url),
            )
        except requests.exceptions.RequestException as exc:
            raise _failure(exc, where) from None
        if response.status_code not in REDIRECTS:
            return response
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise StoreError(f"{where}: HTTP {response.status_code} without a Location")
        target = urljoin(url, location)
        if _origin(target) != origin:
            # A server may not send the reconciler elsewhere (for a tenant's URL: somewhere
            # the operator did not allow); the artifact can name the file where it is.
            raise StoreError(
                f"{where}: the server redirects to {_shown(target)}, another origin, which is "
                "not followed: name that URL in the artifact if it is the model"
            )
        url = target
    raise StoreError(f"{where}: more than {MAX_REDIRECTS} redirects: check the URL")


def _body(response: Any, skip: int, length: int, where: str, key: str) -> Iterator[bytes]:
    """`length` bytes of the answer's body as sent (not decoded), after `skip` bytes."""
    import requests
    import urllib3

    got = 0
    try:
        for chunk in response.raw.stream(CHUNK, decode_content=False):
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            chunk = chunk[: length - got]
            if chunk:
                got += len(chunk)
                yield chunk
            if got >= length:
                return
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
        raise StoreError(
            f"{where}: reading {key} broke off after {got} bytes ({_reason(exc)}): the next "
            "pass goes on from there"
        ) from None


_local = threading.local()


def _session() -> Any:
    """This thread's session (its connections are reused; sessions are not thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        import requests

        session = requests.Session()
        # Nothing from the environment unasked: no ~/.netrc credentials for a URL that a
        # tenant may have named. The CA bundle and proxies are taken explicitly instead.
        session.trust_env = False
        _local.session = session
    return session


def _verify() -> str | bool:
    """Always verified: against an internal CA's bundle where one is named, else the public
    CAs (certifi's, as requests has them)."""
    for name in CA_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port not in (None, default) else "")


def _shown(url: str) -> str:
    """The URL without query, fragment or password (a signed URL's signature, a password
    written in the URL against the rules: none of them go into messages)."""
    return re.sub(r"//[^/@]*@", "//***@", url.split("?", 1)[0].split("#", 1)[0])


def _http_problem(response: Any, where: str) -> StoreError:
    code = response.status_code
    if code in (404, 410):
        return StoreError(f"{where}: not found (HTTP {code}): check the artifact's URL")
    if code in (401, 403):
        return StoreError(
            f"{where}: access denied (HTTP {code}): the reconciler sends no credentials, so "
            "the file must be readable without them"
        )
    what = "the server failed" if code >= 500 else "the server refused the request"
    status = " ".join(p for p in (f"HTTP {code}", one_line(response.reason or "")) if p)
    return StoreError(f"{where}: {what} ({status}): check the URL and the server")


def _failure(exc: BaseException, where: str) -> StoreError:
    import requests

    reason = _reason(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return StoreError(
            f"{where}: the server's certificate is not accepted ({reason}): for an internal "
            "CA, set REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) to a file with its certificate"
        )
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return StoreError(
            f"{where}: no connection within {CONNECT_SECONDS:g} s: check the URL and that the "
            "server is up"
        )
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return StoreError(
            f"{where}: the server did not answer within {READ_SECONDS:g} s: check that it is well"
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return StoreError(
            f"{where}: cannot connect ({reason}): check the URL and that the server is up"
        )
    return StoreError(f"{where}: {reason}: check the URL")


def _reason(exc: BaseException) -> str:
    """The innermost cause's words: requests wraps urllib3's errors, which wrap the socket's
    or TLS's, each adding a longer story."""
    for _ in range(6):
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = one_line(exc)
    text = re.sub(r"^<[^>]*>: ", "", text)  # urllib3's "<...HTTPSConnection object at 0x..>: "
    return text.removeprefix("Failed to establish a new connection: ")
