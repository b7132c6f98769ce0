"""Issue 19, the dashboard (/ui/ of `reconciler serve`), attacked over plain HTTP: a real
`reconciler serve` with OAuth2 clients of two tenants, a read-only client and an operator,
in front of a real git-tracked GitOps root and real containers on the Docker engine. No
browser: what a browser would be made to send (cookies, forms, Origin) is sent by hand, and
SameSite=Strict is simulated by not sending the cookie on a cross-site request.

Each attack must fail and change nothing: no new git commit, no uncommitted manifest change,
no container started, stopped or replaced, no reconcile pass run (`unchanged`).

One server serves the whole module (the containers take a while to start); the tests leave
it as they found it, but for the last one, which proves the forms work with a right token.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import jwt
import pytest

from tests.conftest import cli, git
from tests.engine_support import (
    TINY_TEMPLATE,
    Host,
    Server,
    configuration,
    deployment,
    docs,
    make_root,
    wait_for,
)

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600, func_only=True)]

TOKEN_VALUE = "tok-0123456789-secret"  # API_TOKEN of both templates: secret by its name
LICENCE_VALUE = "lic-4242-unguessable"  # LICENCE of say-serving: secret by `secret: true`
SECRETS = (TOKEN_VALUE, LICENCE_VALUE)
XSS = ("<img src=x onerror=alert(1)>", "</script><script>alert(1)</script>")
B_FAILURE = "bravo-private-failure"  # what tenant B's DEAD deployment said: B's alone

# A "model server" that says its secrets, and a message, at start; with `crash` set it then
# fails the way a real one does (an error line naming the message), else it serves.
SAY_TEMPLATE = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: say-serving
spec:
  scenarioId: says
  inputs:
    parameters:
      - {name: message, default: "hello"}
      - {name: crash, default: ""}
  container:
    image: reconciler-test/busybox:2
    command:
      - sh
      - -c
      - >-
        echo "token is $API_TOKEN, licence $LICENCE"; echo "$MESSAGE";
        if [ -n "$CRASH" ]; then echo "error: $MESSAGE (token $API_TOKEN)" >&2; exit 3; fi;
        exec /bin/serve
    env:
      - {name: MESSAGE, value: "{{ inputs.parameters.message }}"}
      - {name: CRASH, value: "{{ inputs.parameters.crash }}"}
      - {name: API_TOKEN, value: "tok-0123456789-secret"}
      - {name: LICENCE, value: "lic-4242-unguessable", secret: true}
    resourcePlan: starter
    startupTimeout: 30
    stopTimeout: 2
"""


def in_group(text: str, group: str) -> str:
    return text.replace("metadata:\n", f"metadata:\n  resourceGroup: {group}\n", 1)


def say(name: str, message: str, crash: str = "") -> str:
    return configuration(
        name, template="say-serving", scenario="says", message=message, crash=crash
    )


# Tenant A (resource group default): a deployment that prints its secrets and serves, one that
# printed its token and died (TINY_TEMPLATE's crash), one whose crash says XSS payloads, and
# one named like one of tenant B's. Tenant B (group other): one that serves, and its "shared",
# DEAD with words of its own.
MANIFESTS_A = docs(
    configuration("tiny-v1"),
    configuration("crash-config", crash="yes"),
    say("say-config", "hello from alpha"),
    say("xss-config", " ".join(XSS), crash="yes"),
    deployment("alpha", "say-config"),
    deployment("crashy", "crash-config"),
    deployment("xss-dead", "xss-config"),
    deployment("shared", "tiny-v1"),
)
MANIFESTS_B = docs(
    in_group(configuration("tiny-b"), "other"),
    in_group(say("fail-b", B_FAILURE, crash="yes"), "other"),
    in_group(deployment("bravo", "tiny-b"), "other"),
    in_group(deployment("shared", "fail-b"), "other"),
)
PENDING_B = in_group(deployment("bravo-next", "tiny-b"), "other")  # committed, not applied


# -- HTTP, by hand ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Message
    text: str

    def cookie(self, name: str) -> str | None:
        """The Set-Cookie line that sets `name`, whole (its attributes too)."""
        for line in self.headers.get_all("Set-Cookie") or ():
            if line.split("=", 1)[0].strip() == name:
                return line
        return None

    def cookie_value(self, name: str) -> str | None:
        line = self.cookie(name)
        return line.split("=", 1)[1].split(";", 1)[0].strip('"') if line else None

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


def call(
    base: str,
    method: str,
    path: str,
    form: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """One request; redirects are not followed (they are what is checked)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = dict(headers or {})
    if form is not None:
        body = urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    if cookies:
        sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read().decode())
    finally:
        conn.close()


def stream(base: str, path: str, cookies: dict[str, str], seconds: float) -> Answer:
    """What an event stream sends in its first `seconds` (it goes on for minutes)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", path, headers={"Cookie": f"reconciler_ui={cookies['reconciler_ui']}"})
    response = conn.getresponse()
    chunks: list[bytes] = []
    ends = time.monotonic() + seconds
    try:
        if response.status != 200:
            return Answer(response.status, response.headers, response.read().decode())
        while time.monotonic() < ends:
            conn.sock.settimeout(max(0.05, ends - time.monotonic()))
            try:
                chunk = response.read1(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        conn.close()
    return Answer(response.status, response.headers, b"".join(chunks).decode("utf-8", "replace"))


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name}"
    return found.group(1)


@dataclass
class Session:
    """A signed-in browser: its cookie, and the CSRF token its pages carry."""

    cookie: str
    csrf: str

    @property
    def cookies(self) -> dict[str, str]:
        return {"reconciler_ui": self.cookie}


# -- the served root ----------------------------------------------------------------------


@dataclass
class Dash:
    host: Host
    credentials: Path
    clients: dict[str, dict[str, Any]]
    server: Server
    ids: dict[str, str] = field(default_factory=dict)  # "group/name" → deployment id

    @property
    def base(self) -> str:
        return self.server.base

    def get(self, path: str, session: Session | None = None, **kw: Any) -> Answer:
        return call(self.base, "GET", path, cookies=session.cookies if session else None, **kw)

    def post(self, path: str, form: dict[str, str], session: Session | None = None) -> Answer:
        return call(self.base, "POST", path, form, session.cookies if session else None)

    def sign_in(self, who: str, next: str = "/ui/") -> tuple[Session, Answer]:
        client = self.clients[who]
        form_page = call(self.base, "GET", "/ui/login?" + urlencode({"next": next}))
        nonce = form_page.cookie_value("reconciler_ui_login")
        assert nonce and hidden(form_page.text, "nonce") == nonce
        answer = self.post_login(client["clientId"], client["clientSecret"], nonce, next)
        assert answer.status == 303, answer.text
        cookie = answer.cookie_value("reconciler_ui")
        assert cookie, answer.headers
        page = call(self.base, "GET", "/ui/models", cookies={"reconciler_ui": cookie})
        assert page.status == 200, page.text
        return Session(cookie, hidden(page.text, "csrf")), answer

    def post_login(
        self, client_id: str, secret: str, nonce: str | None, next: str = "/ui/", form_nonce=None
    ) -> Answer:
        form = {
            "nonce": form_nonce if form_nonce is not None else (nonce or ""),
            "next": next,
            "client_id": client_id,
            "client_secret": secret,
        }
        cookies = {"reconciler_ui_login": nonce} if nonce else None
        return call(self.base, "POST", "/ui/login", form, cookies)

    def restart(self) -> None:
        port = self.server.port
        self.server.stop()
        self.server = Server(self.host.root, "--credentials", str(self.credentials), port=port)

    def last_pass(self) -> str:
        """The newest pass the state records (its start and trigger)."""
        history = self.host.snapshot().get("history") or ()
        return json.dumps(history[-1], sort_keys=True) if history else ""

    def fingerprint(self) -> tuple[Any, ...]:
        """What an attack must not change: the commit, the working tree, the containers (each
        one's id and state) and the passes recorded."""
        root = self.host.root
        containers = sorted((c["Id"], c["State"]) for c in self.host.containers())
        return (
            git(root, "rev-parse", "HEAD"),
            git(root, "status", "--porcelain", "--", "manifests", "templates"),
            containers,
            self.last_pass(),
        )


def add_client(root: Path, credentials: Path, name: str, *groups: str, read_only: bool = False):
    args = [a for g in groups for a in ("-g", g)] + (["--read-only"] if read_only else [])
    result = cli(
        "clients", "add", name, *args, "--credentials", credentials, "--root", root, "--json"
    )
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.fixture(scope="module")
def dash(tmp_path_factory, docker_client) -> Iterator[Dash]:
    tmp = tmp_path_factory.mktemp("dashboard")
    root, instance = make_root(tmp)
    host = Host(root, instance, docker_client)
    try:
        assert "API_TOKEN" in TINY_TEMPLATE
        host.write(SAY_TEMPLATE, "templates/say.yaml")
        host.write(MANIFESTS_A)
        host.write(MANIFESTS_B, "manifests/b.yaml")
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "the operator's manifests")
        host.reconcile("--parallel", "8", ok=False)  # (three deployments are DEAD)
        status = {(d["resourceGroup"], d["name"]): d for d in host_status(host)}
        expected = {
            ("default", "alpha"): "RUNNING",
            ("default", "crashy"): "DEAD",
            ("default", "xss-dead"): "DEAD",
            ("default", "shared"): "RUNNING",
            ("other", "bravo"): "RUNNING",
            ("other", "shared"): "DEAD",
        }
        assert {k: v["status"] for k, v in status.items()} == expected
        # B's next deployment is committed, not applied: a pending change of B's only.
        host.write(PENDING_B, "manifests/b-next.yaml")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "tenant b: one more")
        credentials = tmp / "secrets" / "clients.json"
        clients = {
            "a": add_client(root, credentials, "team-a", "default"),
            "b": add_client(root, credentials, "team-b", "other"),
            "viewer": add_client(root, credentials, "viewer", "default", read_only=True),
            "ops": add_client(root, credentials, "ops", "*"),
        }
        server = Server(root, "--credentials", str(credentials))
        made = Dash(host, credentials, clients, server)
        made.ids = {f"{g}/{n}": d["id"] for (g, n), d in status.items()}
        try:
            yield made
        finally:
            made.server.stop()
    finally:
        host.cleanup()


def host_status(host: Host) -> list[dict[str, Any]]:
    result = host.cli("status", "--json")
    assert result.code == 0, result.err
    return list(json.loads(result.out)["deployments"])


@pytest.fixture(scope="module")
def sessions(dash: Dash) -> dict[str, Session]:
    return {who: dash.sign_in(who)[0] for who in ("a", "b", "viewer", "ops")}


def unchanged(dash: Dash, before: tuple[Any, ...], settle: float = 2.0) -> None:
    """Nothing changed, also after a while (a reconcile pass runs in serve's background)."""
    time.sleep(settle)
    assert dash.fingerprint() == before


SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def assert_guarded(answer: Answer, what: str) -> None:
    """The headers every dashboard answer carries."""
    for name, part in SECURITY_HEADERS.items():
        assert part in (answer.headers.get(name) or ""), (what, name, dict(answer.headers))
    csp = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp


def assert_no_secret(text: str, what: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (what, secret)


# -- 1. no secret anywhere ------------------------------------------------------------------


def test_nothing_the_dashboard_serves_contains_a_secret(dash, sessions):
    crawled: dict[str, Answer] = {}
    for who in ("a", "b", "viewer", "ops"):
        session = sessions[who]
        listing = dash.get("/ui/", session)
        ids = sorted(set(re.findall(r'href="/ui/deployments/([0-9a-z]+)"', listing.text)))
        assert ids, listing.text
        for path in ("/ui/", "/ui/sync", "/ui/models", "/ui/?status=DEAD&sort=status&desc=1"):
            crawled[f"{who} {path}"] = dash.get(path, session)
        for deployment_id in ids:
            page = f"/ui/deployments/{deployment_id}"
            crawled[f"{who} {page}"] = dash.get(page, session)
            crawled[f"{who} {page}/charts"] = dash.get(page + "/charts", session)
            crawled[f"{who} {page}/logs"] = stream(dash.base, page + "/logs", session.cookies, 1.5)
    for path in ("/ui/static/dashboard.css", "/ui/static/dashboard.js"):
        crawled[path] = dash.get(path)
    crawled["/ui/login"] = dash.get("/ui/login")
    crawled["404"] = dash.get("/ui/deployments/d0000000000000000", sessions["a"])
    for what, answer in crawled.items():
        assert answer.status in (200, 404), (what, answer.status, answer.text[:300])
        assert_no_secret(answer.text, what)
        assert_no_secret(json.dumps(dict(answer.headers)), what)
        if "/static/" not in what:
            assert_guarded(answer, what)
    assert crawled["404"].status == 404

    # The secrets were there to leak: shown as *** where they would be.
    alpha, crashy = dash.ids["default/alpha"], dash.ids["default/crashy"]
    spec = crawled[f"a /ui/deployments/{alpha}"].text
    assert (
        "&#34;API_TOKEN&#34;: &#34;***&#34;" in spec and "&#34;LICENCE&#34;: &#34;***&#34;" in spec
    )
    live = crawled[f"a /ui/deployments/{alpha}/logs"].text
    assert "token is ***, licence ***" in live, live  # the live tail, redacted
    dead = crawled[f"a /ui/deployments/{crashy}"].text
    assert "DEAD" in dead and "token is ***" in dead  # its last lines, redacted
    assert "error: no model in /mnt/models" in dead  # its statusMessage
    assert crawled["/ui/static/dashboard.css"].status == 200
    for path in ("/ui/static/dashboard.css", "/ui/static/dashboard.js"):
        headers = crawled[path].headers
        assert headers.get("X-Content-Type-Options") == "nosniff", path
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), path


def test_a_deployment_taken_out_of_git_still_hides_its_secrets(dash, sessions):
    """Its manifest deleted (not yet reconciled: its container still runs), a deployment has
    no declared spec to redact its log with: its lines must not come out unredacted."""
    a = sessions["a"]
    alpha = dash.ids["default/alpha"]
    manifests = dash.host.root / "manifests/app.yaml"
    kept = manifests.read_text()
    before = dash.fingerprint()
    manifests.write_text(kept.replace("---" + deployment("alpha", "say-config"), ""))
    try:
        listing = dash.get("/ui/", a)
        assert alpha in listing.text  # still listed: it still runs
        live = stream(dash.base, f"/ui/deployments/{alpha}/logs", a.cookies, 2.5)
        assert live.status == 200
        assert_no_secret(live.text, "the log stream of an undeclared deployment")
        page = dash.get(f"/ui/deployments/{alpha}", a)
        assert page.status == 200 and "No longer declared" in page.text, page.text
        assert_no_secret(page.text, "the page of an undeclared deployment")
        bearer = {"Authorization": f"Bearer {a.cookie}"}  # (the cookie is the API's token)
        logs = call(dash.base, "GET", f"/v2/lm/deployments/{alpha}/logs", headers=bearer)
        assert logs.status == 200, logs.text
        assert_no_secret(logs.text, "the AI API's log of an undeclared deployment")
    finally:
        manifests.write_text(kept)
    unchanged(dash, before, settle=0)


def test_a_login_never_echoes_the_client_secret_and_its_cookie_is_locked_down(dash):
    client = dash.clients["a"]
    secret = client["clientSecret"]
    form_page = dash.get("/ui/login")
    assert_guarded(form_page, "login form")
    nonce_cookie = form_page.cookie("reconciler_ui_login")
    assert nonce_cookie is not None
    nonce = form_page.cookie_value("reconciler_ui_login")

    # A wrong secret that differs from the right one in its last character only.
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    failed = dash.post_login(client["clientId"], wrong, nonce)
    assert failed.status == 401 and "invalid client credentials" in failed.text
    assert wrong not in failed.text and secret not in failed.text
    assert failed.cookie("reconciler_ui") is None
    assert_guarded(failed, "failed login")

    session, good = dash.sign_in("a")
    assert good.status == 303 and good.location == "/ui/"
    assert secret not in good.text + json.dumps(dict(good.headers))
    assert_guarded(good, "login")
    for line in (good.cookie("reconciler_ui"), nonce_cookie):
        assert line is not None
        attributes = {a.strip().lower() for a in line.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= attributes, line
        assert not any(a.startswith("domain") for a in attributes), line
    # The page after it (a signed-in page) does not carry it either.
    page = dash.get("/ui/", session)
    assert page.status == 200 and secret not in page.text


# -- 2. tenancy -------------------------------------------------------------------------------


def test_a_tenant_cannot_see_or_stop_another_tenants_deployments(dash, sessions):
    a, b = sessions["a"], sessions["b"]
    bravo, b_shared = dash.ids["other/bravo"], dash.ids["other/shared"]
    a_shared = dash.ids["default/shared"]
    before = dash.fingerprint()

    for path in ("/ui/", "/ui/?group=other", "/ui/?status=DEAD", "/ui/sync"):
        page = dash.get(path, a)
        assert page.status == 200, path
        for word in (bravo, b_shared, "bravo", B_FAILURE):
            assert word not in page.text, (path, word)
    for target in (bravo, b_shared):
        for suffix in ("", "/charts", "/logs"):
            answer = dash.get(f"/ui/deployments/{target}{suffix}", a)
            assert answer.status == 404, (target, suffix, answer.text[:300])
            assert "bravo" not in answer.text and B_FAILURE not in answer.text
    # A's deployment named like B's: its page shows none of B's failure (its timeline).
    mine = dash.get(f"/ui/deployments/{a_shared}", a)
    assert mine.status == 200 and B_FAILURE not in mine.text, mine.text

    # Stop B's deployment, with A's valid CSRF token (valid: not a 403, the token is A's).
    answer = dash.post(f"/ui/deployments/{bravo}/stop", {"csrf": a.csrf}, a)
    assert answer.status == 404 and "not found" in answer.text, answer.text
    unchanged(dash, before)
    running = {c["Labels"]["reconciler.deployment-id"]: c["State"] for c in dash.host.containers()}
    assert running[bravo] == "running"

    # What A did not see is there: B sees its pending change, the operator B's warning (not
    # B: while A has a deployment of that name, the warning cannot be told from A's).
    theirs = dash.get("/ui/sync", b).text
    assert "bravo-next" in theirs and "alpha" not in theirs and "crashy" not in theirs
    assert B_FAILURE not in theirs and "xss-dead is DEAD" not in theirs
    everything = dash.get("/ui/sync", sessions["ops"]).text
    assert "bravo-next" in everything and "shared is DEAD (container exited" in everything
    assert B_FAILURE in everything
    assert "crashy is DEAD" in dash.get("/ui/sync", a).text  # A's own warnings, A sees
    assert dash.get(f"/ui/deployments/{dash.ids['default/alpha']}", b).status == 404


# -- 3. CSRF ------------------------------------------------------------------------------------


ACTIONS = ("stop", "/ui/reconcile", "/ui/logout")


def action_path(dash: Dash, action: str) -> str:
    return f"/ui/deployments/{dash.ids['default/alpha']}/stop" if action == "stop" else action


def test_forms_without_their_sessions_token_are_refused(dash, sessions):
    a = sessions["a"]
    other_session, _ = dash.sign_in("a")  # the same client, another session (another token)
    assert other_session.cookie != a.cookie and other_session.csrf != a.csrf
    before = dash.fingerprint()
    for action in ACTIONS:
        path = action_path(dash, action)
        for form in (
            {},
            {"csrf": ""},
            {"csrf": other_session.csrf},
            {"csrf": sessions["b"].csrf},
            {"csrf": a.csrf[:-1]},
            {"csrf": a.csrf.upper()},
        ):
            answer = dash.post(path, form, a)
            assert answer.status == 403, (action, form, answer.status)
            assert "stale" in answer.text and answer.cookie("reconciler_ui") is None
        # A cross-site form post: another site's Origin, and no cookie (SameSite=Strict).
        forged = call(
            dash.base,
            "POST",
            path,
            {"csrf": a.csrf},
            headers={"Origin": "https://evil.example", "Referer": "https://evil.example/x"},
        )
        assert forged.status == 303 and forged.location.startswith("/ui/login?"), action
    unchanged(dash, before)
    assert dash.get("/ui/", a).status == 200  # the session still works (no logout happened)


def test_the_login_form_needs_its_own_nonce(dash):
    """Login CSRF: another site must not sign a victim in as the attacker's client."""
    client = dash.clients["a"]
    nonce = dash.get("/ui/login").cookie_value("reconciler_ui_login")
    other_nonce = dash.get("/ui/login").cookie_value("reconciler_ui_login")
    assert nonce and other_nonce and nonce != other_nonce
    for cookie_nonce, form_nonce in (
        (None, nonce),  # the form's nonce, no cookie (a cross-site post)
        (None, ""),
        (nonce, ""),
        (nonce, other_nonce),
        (nonce, nonce + "x"),
    ):
        answer = dash.post_login(
            client["clientId"], client["clientSecret"], cookie_nonce, form_nonce=form_nonce
        )
        assert answer.status == 303 and answer.location.startswith("/ui/login?"), answer.text
        assert answer.cookie("reconciler_ui") is None, (cookie_nonce, form_nonce)


def test_a_form_from_before_a_restart_is_refused(dash, sessions):
    a = sessions["a"]
    old = a.csrf
    before = dash.fingerprint()
    dash.restart()
    page = dash.get("/ui/", a)
    assert page.status == 200  # the session outlives the restart (the token does)...
    fresh = hidden(page.text, "csrf")
    assert fresh != old  # ...its forms' token does not
    for action in ACTIONS:
        answer = dash.post(action_path(dash, action), {"csrf": old}, a)
        assert answer.status == 403 and "stale" in answer.text, action
    unchanged(dash, before)
    for session in sessions.values():  # (the other tests' sessions, from now on)
        session.csrf = hidden(dash.get("/ui/models", session).text, "csrf")
    assert a.csrf == fresh
    # The fresh token works: sign out (its cookie is cleared; nothing else changes).
    out = dash.post("/ui/logout", {"csrf": fresh}, a)
    assert out.status == 303 and out.location == "/ui/login"
    cleared = out.cookie("reconciler_ui")
    assert cleared is not None and ("Max-Age=0" in cleared or "expires=" in cleared.lower())
    assert dash.fingerprint() == before


# -- 4. read-only clients -----------------------------------------------------------------


def test_a_read_only_client_may_look_and_do_nothing(dash, sessions):
    viewer = sessions["viewer"]
    alpha = dash.ids["default/alpha"]
    before = dash.fingerprint()
    listing = dash.get("/ui/", viewer)
    assert listing.status == 200 and alpha in listing.text and "(read-only)" in listing.text
    assert 'action="/ui/reconcile"' not in listing.text and "Reconcile now" not in listing.text
    page = dash.get(f"/ui/deployments/{alpha}", viewer)
    assert page.status == 200 and "RUNNING" in page.text
    assert "/stop" not in page.text and ">Stop<" not in page.text
    for path in (f"/ui/deployments/{alpha}/stop", "/ui/reconcile"):
        answer = dash.post(path, {"csrf": viewer.csrf}, viewer)  # its own, valid token
        assert answer.status == 403 and "read-only" in answer.text, path

    # The AI API, with the same client's bearer token: GETs work, writes are refused.
    form = {
        "grant_type": "client_credentials",
        "client_id": dash.clients["viewer"]["clientId"],
        "client_secret": dash.clients["viewer"]["clientSecret"],
    }
    granted = call(dash.base, "POST", "/oauth/token", form)
    assert granted.status == 200, granted.text
    bearer = {"Authorization": f"Bearer {json.loads(granted.text)['access_token']}"}
    listed = call(dash.base, "GET", "/v2/lm/deployments", headers=bearer)
    assert listed.status == 200 and alpha in listed.text
    assert call(dash.base, "GET", "/v2/lm/configurations", headers=bearer).status == 200
    as_json = {**bearer, "Content-Type": "application/json"}
    writes = [
        (
            "POST",
            "/v2/lm/configurations",
            {"name": "ro", "executableId": "tiny-serving", "scenarioId": "tiny"},
        ),
        ("POST", "/v2/lm/deployments", {"configurationId": "tiny-v1"}),
        ("PATCH", f"/v2/lm/deployments/{alpha}", {"targetStatus": "STOPPED"}),
        ("DELETE", f"/v2/lm/deployments/{alpha}", None),
        (
            "PATCH",
            "/v2/lm/deployments",
            {"deployments": [{"id": alpha, "targetStatus": "STOPPED"}]},
        ),
    ]
    for method, path, body in writes:
        raw = json.dumps(body).encode() if body is not None else None
        answer = call(dash.base, method, path, headers=as_json, body=raw)
        assert answer.status == 403, (method, path, answer.text)
        message = json.loads(answer.text)["error"]["message"]
        assert "read-only" in message and "\n" not in message, message
    unchanged(dash, before)


# -- 5. open redirect -----------------------------------------------------------------------


EVIL_NEXTS = (
    "//evil.example",
    "//evil.example/ui/",
    "https://evil.example",
    "https://evil.example/ui/",
    "/\\evil.example",
    "/ui/\\evil.example",
    "\\\\evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)//ui/",
    "/ui/..//evil.example",
    "/ui/%2e%2e//evil.example",
    "/ui/.%2E/%2E%2e//evil.example",
    "/ui/./..//evil.example?x=1",
    " //evil.example",
    "\t//evil.example",
    "data:text/html,<script>alert(1)</script>",
    "http:evil.example",
)


@pytest.mark.parametrize("evil", EVIL_NEXTS)
def test_after_sign_in_the_browser_stays_on_the_dashboard(dash, evil):
    form_page = dash.get("/ui/login?" + urlencode({"next": evil}))
    field_next = hidden(form_page.text, "next")
    assert field_next.startswith("/ui/") and "evil" not in field_next, field_next
    # The form as an attacker would post it (their `next`, not the field's).
    nonce = form_page.cookie_value("reconciler_ui_login")
    client = dash.clients["a"]
    answer = dash.post_login(client["clientId"], client["clientSecret"], nonce, next=evil)
    assert answer.status == 303, answer.text
    landed = urlsplit(urljoin(dash.base + "/ui/login", answer.location))
    assert (landed.scheme, landed.netloc) == ("http", urlsplit(dash.base).netloc), answer.location
    assert landed.path.startswith("/ui/") and not answer.location.startswith("//")
    assert "\\" not in answer.location and "evil" not in answer.location, answer.location


# -- 6. XSS -----------------------------------------------------------------------------------


def test_what_a_container_prints_is_shown_escaped(dash, sessions):
    a = sessions["a"]
    xss = dash.ids["default/xss-dead"]
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    pages = {
        "listing": dash.get("/ui/", a),
        "dead listing": dash.get("/ui/?status=DEAD", a),
        "page": dash.get(f"/ui/deployments/{xss}", a),
        "sync": dash.get("/ui/sync", a),
        "ops sync": dash.get("/ui/sync", sessions["ops"]),
        "404": dash.get("/ui/deployments/%3Cimg%20src=x%20onerror=alert(1)%3E", a),
        "login": dash.get("/ui/login?" + urlencode({"next": '/ui/"><img src=x onerror=alert(1)>'})),
    }
    for what, answer in pages.items():
        for payload in (*XSS, "<script>alert", "<img"):
            assert payload not in answer.text, (what, payload)
        assert_guarded(answer, what)
    page = pages["page"].text
    assert "DEAD" in page
    # Shown (escaped): in the statusMessage and in the last log lines.
    message = re.search(r'<p class="message">(.*?)</p>', page, re.S)
    assert message and escaped in message.group(1), page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in message.group(1)
    log = re.search(r'<pre id="log"[^>]*>(.*?)</pre>', page, re.S)
    assert log and escaped in log.group(1) and "token is ***" in log.group(1), page
    assert escaped in pages["listing"].text and escaped in pages["sync"].text
    assert pages["404"].status == 404 and escaped in pages["404"].text


# -- 7. unauthenticated -------------------------------------------------------------------


def forged_tokens(dash: Dash, good: str) -> dict[str, str]:
    claims = jwt.decode(good, options={"verify_signature": False})
    key = base64.b64decode(json.loads(dash.credentials.read_text())["signingKey"])
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    ops = dash.clients["ops"]["clientId"]
    return {
        "another key": jwt.encode(claims, "not the signing key, " * 4, algorithm="HS256"),
        "another key, an operator": jwt.encode(
            {**claims, "sub": ops}, "not the signing key, " * 4, algorithm="HS256"
        ),
        "expired": jwt.encode({**claims, "exp": int(time.time()) - 60}, key, algorithm="HS256"),
        "no client": jwt.encode({**claims, "sub": "nobody-1234"}, key, algorithm="HS256"),
        "alg none": f"{header}.{payload}.",
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "garbage": "garbage",
        "empty": "",
    }


def test_without_a_valid_session_every_page_asks_to_sign_in(dash, sessions):
    alpha = dash.ids["default/alpha"]
    pages = [
        "/ui/",
        "/ui/?status=RUNNING",
        "/ui/sync",
        "/ui/models",
        f"/ui/deployments/{alpha}",
        f"/ui/deployments/{alpha}/charts",
        f"/ui/deployments/{alpha}/logs",
        "/ui/deployments/d0000000000000000",
    ]
    posts = [f"/ui/deployments/{alpha}/stop", "/ui/reconcile", "/ui/logout"]
    before = dash.fingerprint()
    cookies: dict[str, dict[str, str] | None] = {"no cookie": None}
    for what, value in forged_tokens(dash, sessions["a"].cookie).items():
        cookies[what] = {"reconciler_ui": value}
    cookies["the login nonce as a session"] = {
        "reconciler_ui_login": dash.get("/ui/login").cookie_value("reconciler_ui_login") or ""
    }
    for what, jar in cookies.items():
        for path in pages:
            answer = call(dash.base, "GET", path, cookies=jar)
            assert answer.status == 303, (what, path, answer.status)
            assert answer.location == "/ui/login?" + urlencode({"next": urlsplit(path).path})
            assert alpha not in answer.text and "alpha" not in answer.text
            assert_guarded(answer, f"{what} {path}")
        for path in posts:
            answer = call(dash.base, "POST", path, {"csrf": sessions["a"].csrf}, jar)
            assert answer.status == 303 and answer.location.startswith("/ui/login?"), (what, path)
    # What needs no session: the sign-in form and the dashboard's own files.
    assert dash.get("/ui/login").status == 200
    assert dash.get("/ui/static/dashboard.js").status == 200
    unchanged(dash, before)


# -- the control: with its own token, a form does act ---------------------------------------


def test_control_with_the_right_token_the_forms_act(dash, sessions):
    """Last: it changes things. The refusals above are refusals of the attack, not of every
    form: A's own token reconciles (a pass, which applies B's pending deployment) and stops
    A's deployment (a commit, then a pass that stops it)."""
    a = sessions["a"]
    alpha = dash.ids["default/alpha"]
    page = dash.get(f"/ui/deployments/{alpha}", a)
    assert f'action="/ui/deployments/{alpha}/stop"' in page.text
    csrf = hidden(page.text, "csrf")
    assert csrf == a.csrf
    answer = dash.post("/ui/reconcile", {"csrf": csrf}, a)
    assert answer.status == 303 and answer.location == "/ui/?notice=reconcile"
    wait_for(lambda: "reconcile now by team-a" in dash.last_pass(), timeout=90, what="the pass")
    head = git(dash.host.root, "rev-parse", "HEAD")
    answer = dash.post(f"/ui/deployments/{alpha}/stop", {"csrf": csrf}, a)
    assert answer.status == 303 and answer.location == f"/ui/deployments/{alpha}?notice=stop"
    assert git(dash.host.root, "rev-parse", "HEAD") != head
    message = git(dash.host.root, "log", "-1", "--format=%B")
    assert f"dashboard: stop deployment {alpha}" in message
    wait_for(
        lambda: alpha not in {c["Labels"]["reconciler.deployment-id"] for c in running(dash)},
        timeout=90,
        what="alpha to stop",
    )


def running(dash: Dash) -> list[dict[str, Any]]:
    return [c for c in dash.host.containers() if c["State"] == "running"]
