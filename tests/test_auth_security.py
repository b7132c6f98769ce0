"""`reconciler serve` exposed to untrusted callers (issue 13): failed token requests are limited
and never stall other requests, the credentials file stays the authority while serving, and a
caller's Host never becomes a deploymentUrl. A real `serve`, real sockets, all on loopback
(other loopback addresses, 127.0.0.2 and up, stand for other hosts). Only the tests that create
deployments need the engine (marked `engine`); two more are marked so although they need none,
because they take seconds (each says why), to keep `pytest -m "not engine"` quick."""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import statistics
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli, git
from tests.engine_support import Server, configuration, docs, make_root, wait_for
from tests.test_ai_api import add_client

GATEWAY_PATH = "/v2/inference/deployments/d0123456789abcde/v2/health/ready"


class Served:
    def __init__(self, root: Path, credentials: Path, *extra: str) -> None:
        self.root = root
        self.credentials = credentials
        self.a = add_client(root, credentials, "team-a", "default")
        self.b = add_client(root, credentials, "team-b", "default")
        self.server = Server(root, "--credentials", str(credentials), *extra)
        self.port = self.server.port


def git_root(root: Path) -> Path:
    """`root` made a git-tracked GitOps root with one configuration (API writes are commits)."""
    (root / "manifests/app.yaml").write_text(docs(configuration("tiny-v1")))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial manifests")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root for tests that create no deployment: no engine needed."""
    return git_root(make_root(tmp_path)[0])


@pytest.fixture
def engine_root(host: Any) -> Path:
    """A root on the engine, for tests that create deployments (their containers are removed
    afterwards)."""
    return git_root(host.root)


@pytest.fixture
def served(root: Path, tmp_path: Path) -> Iterator[Served]:
    s = Served(root, tmp_path / "secrets" / "clients.json")
    yield s
    s.server.stop()


@pytest.fixture
def engine_served(engine_root: Path, tmp_path: Path) -> Iterator[Served]:
    s = Served(engine_root, tmp_path / "secrets" / "clients.json")
    yield s
    s.server.stop()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = 10.0,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to serve from the loopback address `source`; the headers are sent as given
    (Host included, when given)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
    )
    try:
        headers = dict(headers or {})
        skip_host = any(k.lower() == "host" for k in headers)
        conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def ask_token(
    port: int, client_id: str, secret: str, source: str = "127.0.0.1", **headers: str
) -> tuple[int, http.client.HTTPMessage, dict[str, Any]]:
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    ).encode()
    code, head, raw = call(
        port,
        "POST",
        "/oauth/token",
        form,
        {"Content-Type": "application/x-www-form-urlencoded", **headers},
        source=source,
    )
    return code, head, json.loads(raw)


def token(port: int, client: dict[str, Any]) -> str:
    code, _, answer = ask_token(port, client["clientId"], client["clientSecret"])
    assert code == 200, answer
    return answer["access_token"]


def assert_throttled(code: int, head: http.client.HTTPMessage, answer: dict[str, Any]) -> None:
    assert code == 429, (code, answer)
    assert 1 <= int(head["Retry-After"]) <= 60, head["Retry-After"]


def fail_until_throttled(
    port: int, source: str, client_id: str | None = None, **headers: str
) -> int:
    """Wrong secrets from `source` (for `client_id`, else a new unknown id each time) until a
    429; how many were refused with 401 first. Bounded: 30 attempts."""
    for attempt in range(30):
        cid = client_id or f"nobody-{secrets.token_hex(4)}"
        code, head, answer = ask_token(port, cid, "wrong", source, **headers)
        if code == 429:
            assert_throttled(code, head, answer)
            return attempt
        assert code == 401, (code, answer)
    raise AssertionError(f"no 429 after 30 wrong secrets from {source}")


# -- finding 3: failed token requests ---------------------------------------------------------


def test_wrong_secrets_are_limited_per_client_id_and_per_address(served: Served):
    port, a, b = served.port, served.a, served.b
    # Guessing team-a's secret from two addresses, five times each: ten refusals for the
    # client id, then 429 (with Retry-After) from anywhere until its minute is over, even
    # with the right secret (or a guesser would just move on to other addresses).
    for source in ("127.0.0.2", "127.0.0.3"):
        for _ in range(5):
            assert ask_token(port, a["clientId"], "wrong", source)[0] == 401
    assert_throttled(*ask_token(port, a["clientId"], "wrong", "127.0.0.6"))
    assert_throttled(*ask_token(port, a["clientId"], a["clientSecret"]))
    # Another client still gets its tokens, from the guessers' addresses too (five failures
    # each: under the limit per address).
    assert ask_token(port, b["clientId"], b["clientSecret"], "127.0.0.2")[0] == 200
    assert ask_token(port, b["clientId"], b["clientSecret"])[0] == 200

    # One address trying a new client id each time: ten refusals, then the address is
    # blocked, whoever it claims to forward for (it is no trusted proxy).
    assert fail_until_throttled(port, "127.0.0.4") == 10
    assert_throttled(*ask_token(port, b["clientId"], b["clientSecret"], "127.0.0.4"))
    spoofed = {"X-Forwarded-For": "198.51.100.9"}
    assert_throttled(*ask_token(port, "nobody-else", "wrong", "127.0.0.4", **spoofed))
    assert ask_token(port, b["clientId"], b["clientSecret"], "127.0.0.5")[0] == 200


# Needs no engine; marked to keep `-m "not engine"` quick: about 90 scrypt checks of wrong
# secrets (~50 ms of CPU each, deliberately), 4 to 8 s on two cores.
@pytest.mark.engine
def test_floods_of_wrong_secrets_do_not_stall_other_requests(served: Served):
    port = served.port
    bearer = {"Authorization": f"Bearer {token(port, served.b)}"}
    floods, problems = 8, list[str]()

    def flood(n: int) -> None:
        try:
            fail_until_throttled(port, f"127.0.1.{n + 1}")
        except Exception as exc:  # reported by the main thread
            problems.append(f"flood {n}: {exc!r}")

    threads = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(floods)]
    for t in threads:
        t.start()
    latencies: list[float] = []
    deadline = time.monotonic() + 60
    # While the floods run (bounded: 5000 probes, 60 s), cheap requests keep being answered:
    # the health check and a gateway request, which checks its token.
    for _ in range(5000):
        started = time.monotonic()
        assert call(port, "GET", "/healthz")[0] == 200
        assert call(port, "GET", GATEWAY_PATH, headers=bearer)[0] == 404
        latencies.append(time.monotonic() - started)
        if not any(t.is_alive() for t in threads) or time.monotonic() > deadline:
            break
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    print(
        f"{len(latencies)} probe pairs during {floods} floods: "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert not problems, problems
    assert not any(t.is_alive() for t in threads), "a flood did not end"


# -- finding 7: the credentials file is the authority ----------------------------------------


# Needs no engine; marked to keep `-m "not engine"` quick: seven changes of the credentials
# file, each seen at serve's next look at it (at most once a second), about 6 s in all.
@pytest.mark.engine
def test_deleting_the_credentials_file_revokes_tokens_within_seconds(served: Served):
    port, credentials = served.port, served.credentials
    bearer = {"Authorization": f"Bearer {token(port, served.a)}"}

    def answers(code: int) -> bool:
        return call(port, "GET", "/v2/lm/scenarios", headers=bearer)[0] == code

    assert answers(200)  # verified once: from now on the token is in serve's cache
    assert call(port, "GET", GATEWAY_PATH, headers=bearer)[0] == 404

    backup = served.credentials.with_suffix(".bak")
    shutil.copy2(credentials, backup)
    credentials.unlink()
    wait_for(lambda: answers(401), timeout=10, what="401 once the credentials file is gone")
    assert call(port, "GET", GATEWAY_PATH, headers=bearer)[0] == 401
    assert ask_token(port, served.b["clientId"], served.b["clientSecret"])[0] == 401

    # The same file back: its key and clients are valid again.
    shutil.copy2(backup, credentials)
    wait_for(lambda: answers(200), timeout=10, what="200 once the file is restored")

    # An unreadable file is no file: 401 (not 400 or 500, and no path in the answer).
    credentials.write_text("{ not json")
    wait_for(lambda: answers(401), timeout=10, what="401 while the file is unreadable")
    code, _, raw = call(port, "GET", GATEWAY_PATH, headers=bearer)
    assert code == 401 and str(credentials) not in raw.decode()
    shutil.copy2(backup, credentials)
    wait_for(lambda: answers(200), timeout=10, what="200 once the file is readable again")

    # A rotated key: tokens signed with the old one stop working; new ones work.
    result = cli("clients", "rotate-key", "--credentials", credentials, "--root", served.root)
    assert result.code == 0, result.err
    wait_for(lambda: answers(401), timeout=10, what="401 for a token of the old key")
    fresh = {"Authorization": f"Bearer {token(port, served.a)}"}
    assert call(port, "GET", "/v2/lm/scenarios", headers=fresh)[0] == 200

    # A removed client's tokens stop working too.
    other = {"Authorization": f"Bearer {token(port, served.b)}"}
    assert call(port, "GET", "/v2/lm/scenarios", headers=other)[0] == 200
    result = cli("clients", "remove", "team-b", "--credentials", credentials, "--root", served.root)
    assert result.code == 0, result.err
    wait_for(
        lambda: call(port, "GET", "/v2/lm/scenarios", headers=other)[0] == 401,
        timeout=10,
        what="401 for a removed client's token",
    )
    assert call(port, "GET", "/v2/lm/scenarios", headers=fresh)[0] == 200


# -- finding 9b: deploymentUrl from serve's own address ---------------------------------------

EVIL = {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"}


def create_deployment(port: int, bearer: dict[str, str], source: str, **headers: str) -> str:
    body = json.dumps({"configurationId": "tiny-v1"}).encode()
    code, _, raw = call(
        port,
        "POST",
        "/v2/lm/deployments",
        body,
        {**bearer, "Content-Type": "application/json", **headers},
        source=source,
    )
    assert code == 202, raw
    return json.loads(raw)["deploymentUrl"]


def listed_urls(port: int, bearer: dict[str, str], source: str, **headers: str) -> list[str]:
    code, _, raw = call(
        port, "GET", "/v2/lm/deployments", headers={**bearer, **headers}, source=source
    )
    assert code == 200, raw
    return [d["deploymentUrl"] for d in json.loads(raw)["resources"]]


@pytest.mark.engine
def test_a_callers_host_never_becomes_a_deployment_url(engine_served: Served):
    served = engine_served
    port = served.port
    bearer = {"Authorization": f"Bearer {token(port, served.a)}"}
    own = f"http://127.0.0.1:{port}/v2/inference/deployments/"
    url = create_deployment(port, bearer, "127.0.0.1", **EVIL)
    assert url.startswith(own), url
    urls = listed_urls(port, bearer, "127.0.0.2", **EVIL)
    assert urls and all(u.startswith(own) for u in urls), urls
    assert not any("evil.example" in u or "https" in u for u in [url, *urls])


@pytest.mark.engine
def test_a_trusted_proxy_names_the_host_and_the_caller(engine_root: Path, tmp_path: Path):
    proxy, public = "127.0.0.2", "https://api.example:8443/v2/inference/deployments/"
    served = Served(
        engine_root, tmp_path / "secrets" / "clients.json", "--trusted-proxy", "127.0.0.2/32"
    )
    try:
        port = served.port
        bearer = {"Authorization": f"Bearer {token(port, served.a)}"}
        via_proxy = {"Host": "api.example:8443", "X-Forwarded-Proto": "https"}
        url = create_deployment(port, bearer, proxy, **via_proxy)
        assert url.startswith(public), url
        assert all(u.startswith(public) for u in listed_urls(port, bearer, proxy, **via_proxy))
        # The same headers from anyone else are not believed.
        own = f"http://127.0.0.1:{port}/v2/inference/deployments/"
        urls = listed_urls(port, bearer, "127.0.0.3", **via_proxy)
        assert urls and all(u.startswith(own) for u in urls), urls

        # Failed attempts count against the caller the proxy names (the last address it
        # appended; what the caller wrote before it is not believed), not the proxy.
        caller = {"X-Forwarded-For": "203.0.113.7"}
        assert fail_until_throttled(port, proxy, **caller) == 10
        spoofing = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
        assert_throttled(*ask_token(port, "nobody", "wrong", proxy, **spoofing))
        b = served.b
        neighbour = {"X-Forwarded-For": "203.0.113.8"}
        assert ask_token(port, b["clientId"], b["clientSecret"], proxy, **neighbour)[0] == 200
    finally:
        served.server.stop()
