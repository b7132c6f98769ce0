"""The storage initializer image's self-check, run by scripts/build-images after every build and
before every reuse of the image (as /app/selfcheck.py, with no network):

    docker run --rm --network none --entrypoint python IMAGE /app/selfcheck.py

It proves, in this order: boto3, requests and reconciler.stores.initializer import; a model of
two objects (one larger than a download part) is downloaded by `initializer fetch` through
boto3 from a small S3 stand-in on loopback (ranged GETs with If-Match, as S3 answers them),
into a scratch cache, whole and checked; a second fetch finds it at once. Prints one line
`selfcheck: ok (...)` and exits 0, or ends with `selfcheck: failed: REASON` (exit 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import re
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IMPORTS = ("boto3", "botocore", "requests", "reconciler.stores.initializer")
BUCKET = "selfcheck"
OBJECTS = {
    "models/m/model.bin": bytes(range(256)) * (40 * 1024 + 7),  # ~10 MB: two parts
    "models/m/meta/config.json": b'{"selfcheck": true}\n',
}


class Failed(Exception):
    pass


class Store(BaseHTTPRequestHandler):
    """GET /<bucket>/<key> with Range and If-Match, as S3 answers them (signatures unchecked)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        key = self.path.split("?", 1)[0].removeprefix(f"/{BUCKET}/")
        body = OBJECTS.get(key)
        if body is None:
            return self._answer(404, b"<Error><Code>NoSuchKey</Code></Error>", {})
        etag = f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'
        if self.headers.get("If-Match", etag) != etag:
            return self._answer(412, b"<Error><Code>PreconditionFailed</Code></Error>", {})
        match = re.match(r"bytes=(\d+)-(\d+)$", self.headers.get("Range", ""))
        if match is None:
            return self._answer(200, body, {"ETag": etag})
        start, end = int(match[1]), min(int(match[2]), len(body) - 1)
        headers = {"ETag": etag, "Content-Range": f"bytes {start}-{end}/{len(body)}"}
        return self._answer(206, body[start : end + 1], headers)

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def check_imports() -> None:
    for module in IMPORTS:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure to import is the finding, whatever its type
            raise Failed(f"import {module}: {type(exc).__name__}: {exc}") from exc


def fetch_twice(scratch: Path, port: int) -> str:
    from reconciler.stores import initializer
    from reconciler.stores.listing import Listing, StoredObject
    from reconciler.stores.s3 import Location
    from reconciler.stores.secrets import ObjectStoreSecret

    secret = ObjectStoreSecret(
        name="selfcheck",
        resource_group="default",
        bucket=BUCKET,
        access_key_id="selfcheck-key",
        secret_access_key="selfcheck-secret",
        endpoint=f"http://127.0.0.1:{port}",
    )
    objects = tuple(
        StoredObject(key, len(body), hashlib.md5(body, usedforsecurity=False).hexdigest())
        for key, body in sorted(OBJECTS.items())
    )
    listing = Listing(Location(secret, "models/m"), objects)
    public, private = initializer.split(listing)
    if "selfcheck-secret" in str(public):
        raise Failed("the listing's shown part holds the credentials")
    (scratch / "listing.json").write_text(json.dumps(public))
    (scratch / "private.json").write_text(json.dumps(private))
    args = ["fetch", "--cache", str(scratch / "cache")]
    args += ["--listing", str(scratch / "listing.json"), "--private", str(scratch / "private.json")]
    said = []
    for _ in range(2):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = initializer.main(args)
        if code != 0:
            raise Failed(f"initializer fetch exited {code}: {err.getvalue().strip()}")
        said.append(out.getvalue().strip().splitlines()[-1])
    entry = scratch / "cache" / listing.version
    for key, body in OBJECTS.items():
        got = (entry / key.removeprefix("models/m/")).read_bytes()
        if got != body:
            raise Failed(f"{key} came with {len(got)} bytes, not the {len(body)} served")
    if "already in" not in said[1]:
        raise Failed(f"a second fetch downloaded again: {said[1]}")
    return f"{len(OBJECTS)} objects fetched through boto3, then found at once"


def main() -> int:
    started = time.monotonic()
    try:
        check_imports()
        server = ThreadingHTTPServer(("127.0.0.1", 0), Store)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with tempfile.TemporaryDirectory(prefix="selfcheck-") as scratch:
                done = fetch_twice(Path(scratch), server.server_address[1])
        finally:
            server.shutdown()
    except Failed as exc:
        print(f"selfcheck: failed: {exc}")
        return 1
    except Exception as exc:
        print(f"selfcheck: failed: {type(exc).__name__}: {exc}")
        return 1
    seconds = time.monotonic() - started
    print(f"selfcheck: ok ({len(IMPORTS)} imports, {done}; {seconds:.1f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
