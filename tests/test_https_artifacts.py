"""`https://` model artifacts (issue 18): one file on a web server, listed with a HEAD and
downloaded through the model cache in byte ranges, against a real HTTPS server on loopback
(Python's http.server in TLS, its certificate self-signed for the test and trusted through
REQUESTS_CA_BUNDLE). A changed file is a new version, a file changed mid-download is noticed,
a server without ranges still works, faults are one line, and a tenant cannot make the
reconciler fetch from an origin the operator did not allow. No Docker."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from ai_api_client_sdk.exception import AIAPIInvalidRequestException
from ai_api_client_sdk.models.artifact import Artifact

from reconciler.manifests.desired import desired_state
from reconciler.stores.artifacts import list_artifact
from reconciler.stores.cache import COMPLETE, PARTIAL, ModelCache
from reconciler.stores.https import listing
from reconciler.stores.listing import ChangedWhileReading, StoreError
from reconciler.stores.secrets import ObjectStoreSecrets
from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, write_tree
from tests.engine_support import make_root, settings
from tests.test_ai_api import sdk, serve_api

BIG = os.urandom(20 * 1024 * 1024 + 12345)  # three of the cache's 8 MiB parts, the last short


# -- a real HTTPS server ------------------------------------------------------------------------


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: with the `cryptography` package
    where it is installed, else with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        _certificate_with_cryptography(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl to make a certificate")
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=reconciler-test"),
                *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


def _certificate_with_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reconciler-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass
class Files:
    """What the server serves and how: its folder, and the behaviours a test turns on."""

    folder: Path
    port: int = 0
    ranges: bool = True  # Accept-Ranges: bytes, and Range honoured
    head: bool = True  # False: HEAD answers 405
    etag: str = "md5"  # md5 (strong), weak, none
    if_match: bool = True  # If-Match honoured (else only If-Range tells a change)
    redirects: dict[str, str] = field(default_factory=dict)
    before_get: Callable[[int], None] | None = None  # called with the GET's number
    gets: int = 0
    requests: int = 0  # of any method
    ranges_asked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}/{path}"

    def write(self, name: str, data: bytes, mtime: float | None = None) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _empty(self, code: int, **headers: str) -> None:
        self.send_response(code)
        for k, v in {**headers, "Content-Length": "0"}.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()

    def _serve(self, head: bool) -> None:
        files = self.server.files
        with files.lock:
            files.requests += 1
        path = urlsplit(self.path).path
        if path in files.redirects:
            return self._empty(302, Location=files.redirects[path])
        if head and not files.head:
            return self._empty(405, Allow="GET")
        if not head:
            with files.lock:
                files.gets += 1
                number = files.gets
            if files.before_get is not None:
                files.before_get(number)
        target = files.folder / unquote(path).lstrip("/")
        if not target.is_file():
            return self._empty(404)
        data = target.read_bytes()
        modified = formatdate(target.stat().st_mtime, usegmt=True)
        etag = {
            "md5": f'"{hashlib.md5(data).hexdigest()}"',
            "weak": f'W/"{len(data):x}-{target.stat().st_mtime_ns:x}"',
        }.get(files.etag)
        headers = {"Last-Modified": modified, **({"ETag": etag} if etag else {})}
        if files.ranges:
            headers["Accept-Ranges"] = "bytes"
        if_match = self.headers.get("If-Match")
        if files.if_match and if_match and (etag is None or if_match != etag):
            return self._empty(412)
        asked = self.headers.get("Range") if files.ranges and not head else None
        if asked:
            files.ranges_asked.append(asked)
            condition = self.headers.get("If-Range")
            if condition and condition not in (etag, modified):
                asked = None  # changed since: the whole (new) file, 200
        if asked:
            first, _, last = asked.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last), len(data) - 1)
            if start >= len(data):
                return self._empty(416, Content_Range=f"bytes */{len(data)}")
            body, code = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        else:
            body, code = data, 200
        self.send_response(code)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            # (a client that stops reading: a download it gave up)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: Files


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's CA trusted as an operator's internal one is: REQUESTS_CA_BUNDLE."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    return certificate[0]


@pytest.fixture
def files(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[Files]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.files = Files(tmp_path / "www", server.server_address[1])
    server.files.folder.mkdir()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.files
    server.shutdown()
    server.server_close()


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    """The error as a user sees it: one line, no traceback, no chained cause shown."""
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    shown = exc.value.__cause__ or (
        None if exc.value.__suppress_context__ else exc.value.__context__
    )
    assert shown is None, text
    return text


def _secrets(tmp_path: Path) -> ObjectStoreSecrets:
    return ObjectStoreSecrets(tmp_path / "objectstores.json")  # (https:// needs none)


# -- listing and version ------------------------------------------------------------------------


def test_a_listing_is_the_one_file_and_its_version_follows_the_file(files, trusted, tmp_path):
    files.write("models/churn v1.bin", b"model one")
    url = files.url("models/churn%20v1.bin")
    found = list_artifact(url, "default", _secrets(tmp_path))
    (obj,) = found.objects
    assert (obj.key, obj.size) == ("churn v1.bin", 9)
    assert obj.etag == hashlib.md5(b"model one").hexdigest()  # no quotes
    assert found.location.ranges and found.location.prefix == ""
    assert found.relative(obj) == "churn v1.bin"
    assert found.version == list_artifact(url, "default", _secrets(tmp_path)).version  # stable

    files.write("models/churn v1.bin", b"model two")
    assert list_artifact(url, "default", _secrets(tmp_path)).version != found.version
    # A pin and the server's own query are no part of where the file is; the query is sent,
    # never shown (it may hold a signature).
    pinned = listing(f"{url}?token=s3cr3t&version={found.version[:12]}")
    assert pinned.location.describe() == files.url("models/churn%20v1.bin")
    assert "s3cr3t" not in pinned.location.describe()


def test_without_an_etag_the_date_and_size_make_the_version(files, trusted):
    files.etag = "none"
    path = files.write("m.bin", b"abc", mtime=1_800_000_000)
    first = listing(files.url("m.bin"))
    assert first.objects[0].etag.startswith("last-modified ")
    os.utime(path, (1_800_000_100, 1_800_000_100))  # the same bytes, saved again
    assert listing(files.url("m.bin")).version != first.version


# -- downloads through the model cache ----------------------------------------------------------


def test_a_download_through_the_cache_is_the_file(files, trusted, tmp_path):
    files.write("big.bin", BIG)
    found = listing(files.url("big.bin"))
    cache = ModelCache(tmp_path / "cache")
    entry = cache.fetch(found)
    assert (entry / "big.bin").read_bytes() == BIG
    assert entry.name == found.version and (entry / COMPLETE).is_file()
    assert len(files.ranges_asked) == 3  # in parts, by range
    assert cache.fetch(listing(files.url("big.bin"))) == entry  # once per version


def test_a_server_without_ranges_or_head_still_downloads(files, trusted, tmp_path):
    files.ranges, files.head, files.etag = False, False, "weak"
    files.write("big.bin", BIG)
    found = listing(files.url("big.bin"))  # (HEAD refused: a GET of byte 0, answered whole)
    assert not found.location.ranges and found.objects[0].size == len(BIG)
    assert found.objects[0].etag.startswith("W/")
    entry = ModelCache(tmp_path / "cache").fetch(found)
    assert (entry / "big.bin").read_bytes() == BIG
    assert files.ranges_asked == []


@pytest.mark.parametrize(
    ("etag", "if_match"),
    [("md5", True), ("md5", False), ("weak", False), ("none", False)],
    ids=["if-match", "if-range-etag", "if-range-date-weak-etag", "if-range-date"],
)
def test_a_file_changed_mid_download_is_noticed(files, trusted, tmp_path, etag, if_match):
    files.etag, files.if_match = etag, if_match
    path = files.write("big.bin", BIG, mtime=1_800_000_000)
    found = listing(files.url("big.bin"))

    def replace_after_the_first_part(number: int) -> None:
        if number == 2:
            files.write("big.bin", BIG[::-1], mtime=1_800_000_100)

    files.before_get = replace_after_the_first_part
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(ChangedWhileReading) as raised:
        cache.fetch(found)
    assert "big.bin changed while it was downloaded: the next pass takes" in _one_line(raised)
    assert not cache.has(found.version)
    assert not [p for p in cache.root.iterdir() if p.name.startswith(PARTIAL)]

    files.before_get = None  # the next pass: the new version
    entry = cache.fetch(listing(files.url("big.bin")))
    assert (entry / "big.bin").read_bytes() == path.read_bytes() == BIG[::-1]


def test_read_tells_a_whole_new_file_from_the_range_asked(files, trusted):
    """If-Range: a server that has another file answers 200 with all of it, not the 206 asked."""
    files.if_match = False
    files.write("m.bin", b"0123456789", mtime=1_800_000_000)
    found = listing(files.url("m.bin"))
    (obj,) = found.objects
    assert b"".join(found.location.read(obj, 2, 5)) == b"234"
    files.write("m.bin", b"abcdefghij", mtime=1_800_000_100)
    with pytest.raises(ChangedWhileReading):
        b"".join(found.location.read(obj, 2, 5))


# -- faults: one line each ----------------------------------------------------------------------


def test_a_missing_file_is_one_line(files, trusted):
    with pytest.raises(StoreError) as raised:
        listing(files.url("nothing/here.bin?sig=hidden"))
    line = _one_line(raised)
    assert line == (
        f"{files.url('nothing/here.bin')}: not found (HTTP 404): check the artifact's URL"
    )


def test_a_server_that_is_down_is_one_line(trusted):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nothing listens there)
    with pytest.raises(StoreError) as raised:
        listing(f"https://127.0.0.1:{port}/m.bin")
    line = _one_line(raised)
    assert line.startswith(f"https://127.0.0.1:{port}/m.bin: cannot connect (")
    assert "Connection refused" in line and line.endswith("check the URL and that the server is up")


def test_an_untrusted_certificate_is_one_line_saying_what_to_do(files, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    files.write("m.bin", b"x")
    with pytest.raises(StoreError) as raised:
        listing(files.url("m.bin"))
    line = _one_line(raised)
    assert "the server's certificate is not accepted (" in line
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert line.endswith("set REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) to a file with its certificate")


def test_ssl_cert_file_names_an_internal_ca_too(files, certificate, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    files.write("m.bin", b"x")
    assert listing(files.url("m.bin")).objects[0].size == 1


def test_redirects_are_followed_within_the_origin_only(files, trusted):
    files.write("m.bin", b"model")
    files.redirects["/same"] = "/m.bin"
    assert listing(files.url("same")).objects[0].size == 5
    files.redirects["/away"] = f"https://localhost:{files.port}/m.bin?token=secret"
    files.redirects["/plain"] = f"http://127.0.0.1:{files.port}/m.bin"
    for path, target in (("away", "https://localhost"), ("plain", "http://127.0.0.1")):
        with pytest.raises(StoreError) as raised:
            listing(files.url(path))
        line = _one_line(raised)
        assert line == (
            f"{files.url(path)}: the server redirects to {target}:{files.port}/m.bin, another "
            "origin, which is not followed: name that URL in the artifact if it is the model"
        )


def test_a_bad_https_url_is_one_line(trusted):
    for url, words in (
        ("https://user:pw@example.com/m.bin", "takes no user or password"),
        ("https://example.com/models/", "must name one file"),
        ("https://example.com/m.bin?version=abc", "at least 12 hex digits"),
    ):
        with pytest.raises(StoreError, match=words) as raised:
            listing(url)
        assert "pw" not in _one_line(raised)


# -- tenants: only the origins the operator allowed ---------------------------------------------

ALLOWED = "https://files.internal:8443"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    root, instance = make_root(tmp_path)
    (root / "manifests/settings.yaml").write_text(
        settings(instance, f"  objectStoreEndpoints: [{ALLOWED}]\n")
    )
    server, a, _, _ = serve_api(root, tmp_path)
    yield root, server, a
    server.stop()


def test_a_tenant_may_name_only_an_allowed_origin(served):
    _, server, a = served
    client = sdk(server, a)

    def create(name: str, url: str) -> None:
        client.artifact.create(name=name, kind=Artifact.Kind.MODEL, url=url, scenario_id="tiny")

    for url in (
        "https://169.254.169.254/latest/meta-data/iam",  # the cloud's metadata service
        "https://127.0.0.1:2376/version",  # the host's own services
        "https://files.internal:9443/m.bin",  # the allowed host, another port
        "https://files.internal.evil.example:8443/m.bin",
    ):
        with pytest.raises(AIAPIInvalidRequestException, match="objectStoreEndpoints"):
            create("sneaky", url)
    assert client.artifact.query().count == 0
    create("allowed", f"{ALLOWED}/models/churn.bin?version=0123456789ab")
    assert [x.url for x in client.artifact.query().resources] == [
        f"{ALLOWED}/models/churn.bin?version=0123456789ab"
    ]


def test_an_operators_artifact_in_git_may_name_any_https_url(gitops):
    url = "https://127.0.0.1:9/internal/model.bin?version=0123456789ab"
    manifests = ECHO_MANIFESTS.replace("url: file:models/echo", f'url: "{url}"')
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    (d,) = desired_state(root).deployments
    assert d.spec.model_uri == url and d.spec.model_path is None  # (from the cache, once listed)


def test_a_tenants_https_model_is_downloaded_only_from_an_allowed_origin(files, trusted, tmp_path):
    """Behind the API's check: an artifact under manifests/api/ (a tenant's) whose origin is
    not allowed (any more) is never requested; the deployment cannot start, with one line."""
    from reconciler.core.models import resolve_models
    from reconciler.core.record import Snapshot

    files.write("m.bin", b"model")
    url = files.url("m.bin")
    artifact, rest = ECHO_MANIFESTS.split("---", 1)
    artifact = artifact.replace("url: file:models/echo", f'url: "{url}"')
    for allowed, name in (
        ("https://files.internal:8443", "refused"),
        (f"https://127.0.0.1:{files.port}", "allowed"),
    ):
        root = tmp_path / name
        write_tree(
            root,
            {
                "templates/echo.yaml": ECHO_TEMPLATE,
                "manifests/api/default/echo-model.yaml": artifact,
                "manifests/echo.yaml": rest,
                "manifests/settings.yaml": settings(
                    f"t{name}", f"  objectStoreEndpoints: [{allowed}]\n"
                ),
            },
        )
        files.requests = 0
        desired = desired_state(root)
        resolved, models = resolve_models(
            desired, Snapshot("x", {}), ModelCache(tmp_path / "cache"), _secrets(tmp_path)
        )
        (d,) = resolved.deployments
        if name == "refused":
            assert models.unavailable == {
                d.id: f"{url}: endpoint https://127.0.0.1:{files.port} is not one this server "
                "may call: an operator adds it to Settings spec.objectStoreEndpoints"
            }
            assert d.spec.model_version is None and files.requests == 0
        else:
            assert not models.unavailable and d.spec.model_version in models.listings
