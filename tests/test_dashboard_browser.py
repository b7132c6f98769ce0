"""The dashboard (/ui/ of `reconciler serve`) in a real headless Chromium, driven by Selenium,
against a real serve with real containers on the Docker engine: what a user sees and does.

One GitOps root, one serve and one browser for the module (each test signs in as the client it
needs): deployments RUNNING, DEAD (a container that fails at start) and STOPPED in the default
resource group, one in another group (team-b), and a model catalog. Each page is saved as a
screenshot under build/screenshots/ (a test artifact, git-ignored).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.browser_support import Chromium, eventually, screenshot, start_browser
from tests.conftest import cli, git
from tests.engine_support import (
    Host,
    Server,
    configuration,
    deployment,
    docs,
    make_root,
    request,
)

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600, func_only=True)]

SECRET = "tok-0123456789-secret"  # TINY_TEMPLATE's API_TOKEN, which a crash prints


def in_group(manifest: str, group: str) -> str:
    return manifest.replace("metadata:\n", f"metadata:\n  resourceGroup: {group}\n", 1)


APP = docs(
    configuration("tiny-v1"),
    configuration("tiny-crash", crash="1"),
    configuration("tiny-plan"),
    deployment("web-app", "tiny-v1"),
    deployment("broken", "tiny-crash"),
    deployment("idle-app", "tiny-v1", "  targetStatus: STOPPED\n"),
    deployment("plan-app", "tiny-plan"),
    deployment("stop-app", "tiny-v1"),
    in_group(configuration("tiny-b"), "team-b"),
    in_group(deployment("other-app", "tiny-b"), "team-b"),
)

# A model catalog for the Models page: an executable no configuration uses, and its model.
CHAT_TEMPLATE = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: chat-serving
spec:
  scenarioId: foundation-models
  inputs:
    parameters:
      - {name: modelName}
      - {name: modelVersion, default: latest}
      - {name: weights, default: none}
  container:
    image: reconciler-test/busybox:2
    env:
      WEIGHTS: "{{ inputs.parameters.weights }}"
"""


def catalog(retires: str) -> str:
    return f"""
apiVersion: reconciler/v1
kind: Model
metadata:
  name: tiny-chat
spec:
  executableId: chat-serving
  displayName: Tiny Chat
  provider: reconciler tests
  versions:
    - name: "1.0"
      deprecated: true
      retirementDate: "{retires}"
      suggestedReplacements: ["1.1"]
      parameters: {{weights: w10}}
    - name: "1.1"
      isLatest: true
      parameters: {{weights: w11}}
"""


@dataclass
class Dash:
    host: Host
    server: Server
    ids: dict[str, str]  # deployment name → id
    clients: dict[str, dict[str, Any]]  # "operator" ('*'), "tenant" (team-b), "reader" (read-only)
    driver: Any
    retires: str  # the catalog's version 1.0 retires on this day

    def url(self, path: str) -> str:
        return self.server.base + path

    @property
    def path(self) -> str:
        return urlparse(self.driver.current_url).path


def add_client(root: Path, credentials: Path, name: str, group: str, *flags: str) -> dict:
    result = cli(
        *("clients", "add", name, "-g", group, *flags),
        *("--credentials", credentials, "--root", root, "--json"),
    )
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.fixture(scope="module")
def dash(docker_client, chromium: Chromium, tmp_path_factory) -> Iterator[Dash]:
    root, instance = make_root(tmp_path_factory.mktemp("dashboard"))
    host = Host(root, instance, docker_client)
    retires = (datetime.now(UTC) + timedelta(days=20)).date().isoformat()
    host.write(APP)
    (root / "templates/chat.yaml").write_text(CHAT_TEMPLATE)
    (root / "manifests/models.yaml").write_text(catalog(retires))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial manifests")
    credentials = root.parent / "secrets" / "clients.json"
    clients = {
        "operator": add_client(root, credentials, "ops-team", "*"),
        "tenant": add_client(root, credentials, "team-b", "team-b"),
        "reader": add_client(root, credentials, "auditor", "*", "--read-only"),
    }
    server = driver = None
    try:
        done = host.reconcile(ok=False)  # broken ends DEAD: the pass does not converge
        assert done.code == 1 and "broken: DEAD" in done.out, done.out + done.err
        ids = {name: d["id"] for name, d in host.status().items()}
        server = Server(root, "--credentials", str(credentials))
        driver = start_browser(chromium)
        yield Dash(host, server, ids, clients, driver, retires)
    finally:
        if driver is not None:
            driver.quit()
        if server is not None:
            server.stop()
        host.cleanup()


# -- what the tests do in the browser ------------------------------------------------------


def fresh_login_page(dash: Dash) -> None:
    """The sign-in page with no session (the browser's cookies for this server removed)."""
    dash.driver.get(dash.url("/ui/login"))
    dash.driver.delete_all_cookies()
    dash.driver.get(dash.url("/ui/login"))


def submit_login(dash: Dash, client_id: str, secret: str) -> None:
    d = dash.driver
    for field, value in (("client_id", client_id), ("client_secret", secret)):
        box = d.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def sign_in(dash: Dash, who: str) -> None:
    client = dash.clients[who]
    fresh_login_page(dash)
    submit_login(dash, client["clientId"], client["clientSecret"])
    eventually(lambda: dash.path == "/ui/" and heading(dash) == "Deployments", what="sign-in")
    assert signed_in_as(dash).startswith(client["name"])


def heading(dash: Dash) -> str:
    return str(dash.driver.find_element(By.TAG_NAME, "h1").text)


def signed_in_as(dash: Dash) -> str:
    return str(dash.driver.find_element(By.CSS_SELECTOR, "header .who span").text)


def texts(dash: Dash, css: str) -> list[str]:
    return [e.text for e in dash.driver.find_elements(By.CSS_SELECTOR, css)]


def row(dash: Dash, name: str) -> Any:
    return dash.driver.find_element(By.ID, f"d-{dash.ids[name]}")


def shown_names(dash: Dash) -> list[str]:
    return texts(dash, "table.deployments tbody tr td:first-child a")


def background(element: Any) -> str:
    return str(element.value_of_css_property("background-color"))


def open_page(dash: Dash, path: str, expected_heading: str) -> None:
    dash.driver.get(dash.url(path))
    eventually(lambda: expected_heading in heading(dash), what=f"{path}: {expected_heading}")


# -- the tests ------------------------------------------------------------------------------


def test_sign_in_needs_the_right_secret_and_sign_out_ends_the_session(dash: Dash):
    d, operator = dash.driver, dash.clients["operator"]
    fresh_login_page(dash)
    d.get(dash.url("/ui/"))  # no session: to the sign-in page, back here afterwards
    eventually(lambda: dash.path == "/ui/login", what="the redirect to sign in")
    assert parse_qs(urlparse(d.current_url).query)["next"] == ["/ui/"]
    assert heading(dash) == "Sign in" and not d.find_elements(By.CSS_SELECTOR, "header nav")
    screenshot(d, "login")

    submit_login(dash, operator["clientId"], "not-the-secret")
    error = eventually(lambda: d.find_element(By.CSS_SELECTOR, "p.error[role=alert]"))
    assert error.text == "invalid client credentials"
    assert dash.path == "/ui/login" and heading(dash) == "Sign in"
    assert d.get_cookie("reconciler_ui") is None

    submit_login(dash, operator["clientId"], operator["clientSecret"])
    eventually(lambda: dash.path == "/ui/" and heading(dash) == "Deployments", what="sign-in")
    assert signed_in_as(dash) == "ops-team"
    assert texts(dash, "header nav a") == ["Deployments", "Sync", "Models"]
    session = d.get_cookie("reconciler_ui")
    assert session and session["httpOnly"] and session["sameSite"] == "Strict"

    d.find_element(By.XPATH, "//header//button[normalize-space()='Sign out']").click()
    eventually(lambda: dash.path == "/ui/login" and heading(dash) == "Sign in", what="sign-out")
    assert d.get_cookie("reconciler_ui") is None
    d.get(dash.url("/ui/"))
    eventually(lambda: dash.path == "/ui/login", what="the redirect to sign in again")
    assert heading(dash) == "Sign in"


def test_the_deployments_list_shows_each_status_the_dead_reason_filters_and_sorts(dash: Dash):
    d = dash.driver
    sign_in(dash, "operator")
    names = shown_names(dash)
    assert set(names) == {"web-app", "broken", "idle-app", "plan-app", "stop-app", "other-app"}
    assert names == sorted(names)  # by name, the default
    assert "▲" in d.find_element(By.CSS_SELECTOR, "th[aria-sort=ascending]").text

    badges = {
        name: row(dash, name).find_element(By.CSS_SELECTOR, "span.status")
        for name in ("web-app", "broken", "idle-app")
    }
    assert {n: b.text for n, b in badges.items()} == {
        "web-app": "RUNNING",
        "broken": "DEAD",
        "idle-app": "STOPPED",
    }
    # Each status its own colour: green, red, grey (dashboard.css).
    assert background(badges["web-app"]) == "rgba(16, 126, 62, 1)"
    assert background(badges["broken"]) == "rgba(187, 0, 0, 1)"
    assert background(badges["idle-app"]) == "rgba(106, 109, 112, 1)"
    reason = row(dash, "broken").find_element(By.CSS_SELECTOR, ".message")
    assert reason.is_displayed()
    assert reason.text.startswith("container exited")
    assert reason.text.endswith("keeps restarting (1 restarts): error: no model in /mnt/models")
    assert reason.value_of_css_property("color") == "rgba(187, 0, 0, 1)"
    counts = d.find_element(By.CSS_SELECTOR, "p.counts").text
    assert counts.startswith("6 deployments:")
    assert {"4 RUNNING", "1 STOPPED", "1 DEAD"} <= set(texts(dash, "p.counts span.status"))
    url = row(dash, "web-app").find_element(By.CSS_SELECTOR, "code.url").text
    assert url == dash.url(f"/v2/inference/deployments/{dash.ids['web-app']}")
    assert row(dash, "web-app").find_element(By.CSS_SELECTOR, "button.copy").text == "Copy"
    assert row(dash, "other-app").find_elements(By.XPATH, "td[2][normalize-space()='team-b']")
    assert d.find_elements(By.XPATH, "//button[normalize-space()='Reconcile now']")
    screenshot(d, "deployments")

    Select(d.find_element(By.ID, "f-status")).select_by_visible_text("DEAD")
    d.find_element(By.XPATH, "//form[@class='filters']//button").click()
    eventually(lambda: "status=DEAD" in d.current_url and shown_names(dash) == ["broken"])
    assert Select(d.find_element(By.ID, "f-status")).first_selected_option.text == "DEAD"
    Select(d.find_element(By.ID, "f-group")).select_by_visible_text("team-b")
    d.find_element(By.XPATH, "//form[@class='filters']//button").click()
    eventually(lambda: "group=team-b" in d.current_url, what="the group filter")
    assert shown_names(dash) == [] and texts(dash, "tbody td") == ["No deployment matches."]

    d.get(dash.url("/ui/"))
    d.find_element(By.LINK_TEXT, "Status").click()
    eventually(lambda: "sort=status" in d.current_url, what="sorting by status")
    order = ["RUNNING", "PENDING", "STOPPING", "STOPPED", "DEAD", "UNKNOWN"]
    statuses = texts(dash, "tbody td:nth-child(3) span.status")
    assert statuses == sorted(statuses, key=order.index) and statuses[0] == "RUNNING"
    assert statuses[-1] == "DEAD"
    assert d.find_element(By.CSS_SELECTOR, "th[aria-sort=ascending]").text == "Status ▲"
    d.find_element(By.PARTIAL_LINK_TEXT, "Status").click()
    eventually(lambda: "desc=1" in d.current_url, what="sorting by status, descending")
    assert texts(dash, "tbody td:nth-child(3) span.status") == statuses[::-1]
    assert d.find_element(By.CSS_SELECTOR, "th[aria-sort=descending]").text == "Status ▼"

    # The DEAD one's page: its reason, and the lines it wrote, its secret as ***.
    row(dash, "broken").find_element(By.LINK_TEXT, "broken").click()
    eventually(lambda: heading(dash).startswith("broken"), what="the DEAD deployment's page")
    assert d.find_element(By.CSS_SELECTOR, "h1 span.status").text == "DEAD"
    message = d.find_element(By.CSS_SELECTOR, "p.message").text
    assert message.startswith("container exited") and "error: no model in /mnt/models" in message
    log = d.find_element(By.ID, "log").text
    assert "token is ***" in log and SECRET not in d.page_source
    assert not d.find_elements(By.XPATH, "//button[normalize-space()='Stop']")  # it is DEAD
    assert d.find_element(By.ID, "log-state").text == "The last lines it wrote before it stopped."
    screenshot(d, "deployment-dead")


def test_the_sync_page_shows_the_plan_of_a_commit_until_a_reconcile_applies_it(dash: Dash):
    d, root = dash.driver, dash.host.root
    sign_in(dash, "operator")
    d.find_element(By.LINK_TEXT, "Sync").click()
    eventually(lambda: heading(dash) == "Sync", what="the Sync page")
    assert d.find_element(By.CSS_SELECTOR, ".sync-state").text == "In sync"
    applied = git(root, "rev-parse", "HEAD")

    app = root / "manifests/app.yaml"
    text = app.read_text()
    changed = text.replace(
        "  name: tiny-plan\nspec:\n  executableId: tiny-serving\n  scenarioId: tiny\n",
        "  name: tiny-plan\nspec:\n  executableId: tiny-serving\n  scenarioId: tiny\n"
        '  parameterBindings:\n    - key: version\n      value: "2"\n',
    )
    assert changed != text
    app.write_text(changed)
    git(root, "commit", "-q", "-am", "plan-app: version 2")
    head = git(root, "rev-parse", "HEAD")
    changes = dash.host.plan()["changes"]
    assert [c["name"] for c in changes] == ["plan-app"]

    d.refresh()
    eventually(
        lambda: d.find_element(By.CSS_SELECTOR, ".sync-state").text == "Out of sync",
        what="Out of sync",
    )
    revisions = texts(dash, "dl.revisions dd")
    assert revisions == [applied, head]
    shown = [
        [cell.text for cell in tr.find_elements(By.TAG_NAME, "td")]
        for tr in d.find_elements(By.CSS_SELECTOR, "table.plan tbody tr")
    ]
    assert shown == [
        [f"{c['symbol']} {c['action']}", c["name"], c["resourceGroup"], c["cause"]] for c in changes
    ]
    assert changes[0]["cause"] == "config changed: env.VERSION"  # what changed
    assert d.find_element(By.XPATH, "//h2[starts-with(., 'Pending plan')]").text == (
        f"Pending plan: 1 to {changes[0]['action']}"
    )
    screenshot(d, "sync-out-of-sync")

    dash.host.reconcile()
    d.refresh()
    eventually(
        lambda: d.find_element(By.CSS_SELECTOR, ".sync-state").text == "In sync", what="In sync"
    )
    assert texts(dash, "dl.revisions dd") == [head, head]
    assert not d.find_elements(By.CSS_SELECTOR, "table.plan")
    screenshot(d, "sync-in-sync")


def test_the_log_tail_shows_a_new_line_without_reloading(dash: Dash):
    d, operator = dash.driver, dash.clients["operator"]
    # Some traffic through the gateway first, for the page's charts.
    form = f"grant_type=client_credentials&client_id={operator['clientId']}"
    form += f"&client_secret={operator['clientSecret']}"
    code, _, raw = request(
        dash.url("/oauth/token"),
        data=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert code == 200, raw
    bearer = {"Authorization": f"Bearer {json.loads(raw)['access_token']}"}
    gateway = dash.url(f"/v2/inference/deployments/{dash.ids['web-app']}/version")
    for _ in range(20):
        assert request(gateway, headers=bearer)[::2] == (200, b"1\n")

    sign_in(dash, "operator")
    row(dash, "web-app").find_element(By.LINK_TEXT, "web-app").click()
    eventually(lambda: heading(dash).startswith("web-app"), what="the deployment's page")
    assert d.find_element(By.CSS_SELECTOR, "h1 span.status").text == "RUNNING"
    log = d.find_element(By.ID, "log")
    eventually(lambda: "serving version 1 on port" in log.text, what="the log's last lines")
    eventually(lambda: d.find_element(By.ID, "log-state").text.startswith("Live:"), what="live")
    d.execute_script("window.notReloaded = true;")

    marker = f"a line written now {uuid.uuid4().hex[:8]}"
    assert marker not in log.text
    (container,) = dash.host.client.containers(
        filters={"label": f"reconciler.deployment-id={dash.ids['web-app']}"}
    )
    client = dash.host.client
    run = client.exec_create(container["Id"], ["sh", "-c", f"echo '{marker}' >/proc/1/fd/1"])
    client.exec_start(run["Id"])
    eventually(lambda: marker in log.text, timeout=15, what="the new line in the page's log")
    assert d.execute_script("return window.notReloaded === true;")
    assert log.text.rstrip().splitlines()[-1] == marker  # the newest, last
    # The rest of the page: the spec (secrets as ***), the charts, the timeline.
    spec = d.find_element(By.CSS_SELECTOR, "pre.spec").text
    assert '"API_TOKEN": "***"' in spec and SECRET not in d.page_source
    captions = texts(dash, "#charts figure.chart figcaption")
    assert [c.split(" now ")[0] for c in captions] == ["requests/s", "latency", "errors"]
    assert float(captions[0].rsplit("max ", 1)[1]) > 0, captions  # the requests we sent
    assert captions[2].endswith("· max 0"), captions  # and no error
    assert "applied" in d.find_element(By.CSS_SELECTOR, "ol.timeline").text
    screenshot(d, "deployment")


def test_a_tenant_sees_only_its_resource_group(dash: Dash):
    d = dash.driver
    sign_in(dash, "tenant")
    assert signed_in_as(dash) == "team-b"
    assert shown_names(dash) == ["other-app"]
    assert d.find_element(By.CSS_SELECTOR, "p.counts").text.startswith("1 deployment:")
    assert [o.text for o in Select(d.find_element(By.ID, "f-group")).options] == ["any", "team-b"]
    assert "web-app" not in d.page_source and dash.ids["web-app"] not in d.page_source

    open_page(dash, f"/ui/deployments/{dash.ids['other-app']}", "other-app")
    for name in ("web-app", "broken"):
        d.get(dash.url(f"/ui/deployments/{dash.ids[name]}"))
        eventually(lambda: heading(dash) == "Not found", what=f"{name}: not found")
        error = d.find_element(By.CSS_SELECTOR, "p.error").text
        assert error == f"Deployment {dash.ids[name]} not found"
        assert name not in d.page_source
    screenshot(d, "not-found")
    d.get(dash.url(f"/ui/deployments/{dash.ids['web-app']}/logs"))  # nor its log
    eventually(lambda: heading(dash) == "Not found", what="its log: not found")

    d.get(dash.url("/ui/sync"))
    eventually(lambda: heading(dash) == "Sync", what="the Sync page")
    assert "web-app" not in d.page_source and "broken" not in d.page_source


def test_stop_commits_to_git_and_the_deployment_stops_and_a_reader_has_no_buttons(dash: Dash):
    d, root, stop_id = dash.driver, dash.host.root, dash.ids["stop-app"]
    sign_in(dash, "operator")
    before = git(root, "rev-parse", "HEAD")
    open_page(dash, f"/ui/deployments/{stop_id}", "stop-app")
    assert d.find_element(By.CSS_SELECTOR, "h1 span.status").text == "RUNNING"
    d.find_element(By.XPATH, "//button[normalize-space()='Stop']").click()
    notice = eventually(lambda: d.find_element(By.CSS_SELECTOR, "p.notice[role=status]"))
    assert notice.text.startswith("Stopping: committed targetStatus STOPPED to git")
    assert dash.path == f"/ui/deployments/{stop_id}"

    assert git(root, "rev-parse", "HEAD^") == before  # one new commit
    message = git(root, "log", "-1", "--format=%B")
    assert f"dashboard: stop deployment {stop_id}" in message
    assert f"By client ops-team ({dash.clients['operator']['clientId']})" in message
    assert "targetStatus: STOPPED" in git(root, "show", "HEAD")

    def stopped() -> bool:
        d.get(dash.url(f"/ui/deployments/{stop_id}"))
        return d.find_element(By.CSS_SELECTOR, "h1 span.status").text == "STOPPED"

    eventually(stopped, timeout=60, what="the background reconcile to stop it")
    assert not d.find_elements(By.XPATH, "//button[normalize-space()='Stop']")
    assert not dash.host.client.containers(
        all=True, filters={"label": f"reconciler.deployment-id={stop_id}"}
    )

    sign_in(dash, "reader")
    assert signed_in_as(dash) == "auditor (read-only)"
    assert "web-app" in shown_names(dash)
    assert not d.find_elements(By.XPATH, "//button[normalize-space()='Reconcile now']")
    open_page(dash, f"/ui/deployments/{dash.ids['web-app']}", "web-app")
    assert d.find_element(By.CSS_SELECTOR, "h1 span.status").text == "RUNNING"
    assert not d.find_elements(By.XPATH, "//button[normalize-space()='Stop']")
    assert not d.find_elements(By.CSS_SELECTOR, "form[action$='/stop']")


def test_keyboard_only_sign_in_skip_link_and_opening_a_deployment(dash: Dash):
    d, operator = dash.driver, dash.clients["operator"]
    keys = ActionChains(d)

    def active() -> Any:
        return d.switch_to.active_element

    def tab_to(matches: Any, limit: int, what: str) -> None:
        for _ in range(limit):
            if matches(active()):
                return
            keys.send_keys(Keys.TAB).perform()
        assert matches(active()), f"Tab did not reach {what} in {limit} presses"

    fresh_login_page(dash)
    tab_to(lambda e: e.get_attribute("id") == "client_id", 5, "the client id")
    keys.send_keys(operator["clientId"], Keys.TAB).perform()
    assert active().get_attribute("id") == "client_secret"
    keys.send_keys(operator["clientSecret"], Keys.ENTER).perform()
    eventually(lambda: dash.path == "/ui/" and heading(dash) == "Deployments", what="sign-in")

    skip = d.find_element(By.CSS_SELECTOR, "a.skip")
    assert skip.rect["x"] < 0  # off screen until focused
    keys.send_keys(Keys.TAB).perform()
    assert active() == skip and skip.text == "Skip to content"
    assert skip.rect["x"] >= 0 and skip.is_displayed()
    keys.send_keys(Keys.ENTER).perform()
    eventually(lambda: active().get_attribute("id") == "main", what="focus on main")
    assert skip.rect["x"] < 0

    link = f"/ui/deployments/{dash.ids['web-app']}"
    tab_to(lambda e: (e.get_attribute("href") or "").endswith(link), 40, "web-app's link")
    assert active().value_of_css_property("outline-style") == "solid"  # focus is visible
    keys.send_keys(Keys.ENTER).perform()
    eventually(lambda: dash.path == link and heading(dash).startswith("web-app"), what="opened")


def test_the_models_page_lists_the_catalog(dash: Dash):
    d = dash.driver
    sign_in(dash, "reader")
    d.find_element(By.LINK_TEXT, "Models").click()
    eventually(lambda: heading(dash) == "Models", what="the Models page")
    title = d.find_element(By.CSS_SELECTOR, "section.model h2").text
    assert title == "Tiny Chat tiny-chat · reconciler tests · executable chat-serving"
    rows = [
        [cell.text for cell in tr.find_elements(By.TAG_NAME, "td")]
        for tr in d.find_elements(By.CSS_SELECTOR, "section.model tbody tr")
    ]
    # Whole days to the date, as `plan` and `status` count them (20, but around midnight).
    left = (date.fromisoformat(dash.retires) - datetime.now(UTC).date()).days
    assert rows[0][3] in {f"{dash.retires} in {n} days" for n in (left, left + 1)}, rows
    assert rows == [
        ["1.0", "", "deprecated", rows[0][3], "1.1"],
        ["1.1", "latest", "", "", ""],
    ]
    assert d.find_element(By.CSS_SELECTOR, "header nav a[aria-current=page]").text == "Models"
    screenshot(d, "models")
