"""The inference gateway of `reconciler serve`, over real HTTP, against real containers."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse

import pytest

from tests.engine_support import (
    Server,
    configuration,
    deployment,
    docs,
    free_port,
    request,
    settings,
    wait_for,
)

pytestmark = pytest.mark.engine


@pytest.fixture
def served(host):
    """A host whose deployment URLs are the gateway's, with `reconciler serve` running."""
    port = free_port()
    host.write(
        settings(host.instance, f"  apiUrl: http://127.0.0.1:{port}/\n"), "manifests/settings.yaml"
    )
    server = Server(host.root, port=port)
    yield host, server
    server.stop()


def url_of(host, name: str) -> str:
    return host.status()[name]["deploymentUrl"]


def test_deployment_url_is_the_gateways_and_relays_requests(served):
    host, server = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    status = host.status()["tiny"]
    url = status["deploymentUrl"]
    assert url == f"{server.base}/v2/inference/deployments/{status['id']}"
    code, _, body = request(url + "/version")
    assert (code, body) == (200, b"1\n")
    code, headers, body = request(
        url + "/cgi-bin/echo?a=1&b=two",
        data=b'{"instances": [[1, 2]]}',
        headers={
            "Authorization": "Bearer secret-token",
            "AI-Resource-Group": "default",
            "X-Custom": "kept",
            "Content-Type": "application/json",
        },
    )
    text = body.decode()
    assert code == 200 and headers["X-Echo"] == "yes"
    assert "method=POST" in text and "query=a=1&b=two" in text
    assert "x-custom=kept" in text
    assert "authorization=none" in text  # the caller's token never reaches the model server
    assert text.endswith('{"instances": [[1, 2]]}')


def test_unknown_and_not_running_deployments_get_ai_api_errors(served):
    host, server = served
    code, headers, body = request(f"{server.base}/v2/inference/deployments/d0000000000000ff/v2")
    error = json.loads(body)["error"]
    assert code == 404 and headers["Content-Type"] == "application/json"
    assert error["code"] == "404" and "d0000000000000ff not found" in error["message"]
    assert error["requestId"] and error["target"] == "/v2/inference/deployments/d0000000000000ff/v2"

    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    url = url_of(host, "tiny")
    wait_for(lambda: request(url + "/version")[0] == 200, what="the route")
    host.write(
        docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1", "  targetStatus: STOPPED"))
    )
    host.reconcile()
    code, _, body = wait_for(
        lambda: (r := request(url + "/version"))[0] == 503 and r, what="503 after the stop"
    )
    assert "is STOPPED" in json.loads(body)["error"]["message"]


def test_requests_are_balanced_across_replicas(served):
    host, _ = served
    host.write(
        docs(configuration("two-replicas", replicas="2"), deployment("tiny", "two-replicas"))
    )
    host.reconcile()
    url = url_of(host, "tiny")
    seen = {request(url + "/host")[2] for _ in range(6)}
    assert len(seen) == 2


def test_large_bodies_stream_through_both_ways(served):
    host, _ = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB: above the buffered size, so streamed
    code, _, body = request(url_of(host, "tiny") + "/cgi-bin/echo", data=payload, timeout=60)
    assert code == 200 and body.endswith(payload)


def test_server_sent_events_pass_through_as_they_come(served, docker_client):
    """The model server sends one event, then waits for a file that the test creates only
    after it has received that event: a gateway that buffered would never deliver it."""
    host, _ = served
    host.write(docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1")))
    host.reconcile()
    parts = urllib.parse.urlsplit(url_of(host, "tiny"))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request("GET", parts.path + "/cgi-bin/sse", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    assert response.readline() == b"data: first\n"
    container = host.container_of("tiny")["Id"]
    exec_id = docker_client.exec_create(container, ["touch", "/tmp/go"])
    docker_client.exec_start(exec_id)
    rest = response.read()
    assert b"data: second" in rest
    conn.close()


def test_an_update_through_the_gateway_fails_no_request(served):
    host, _ = served
    manifests = [configuration("tiny-v1"), configuration("tiny-v2", version="2", readyDelay="1")]
    host.write(docs(*manifests, deployment("tiny", "tiny-v1")))
    host.reconcile()
    url = url_of(host, "tiny")
    answers: list[tuple[int, bytes]] = []
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            code, _, body = request(url + "/version", timeout=5)
            answers.append((code, body))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(answers) > 5, what="requests before the update")
        host.write(docs(*manifests, deployment("tiny", "tiny-v2")))
        host.reconcile()
        n = len(answers)
        wait_for(lambda: len(answers) > n + 20, what="requests after the update")
    finally:
        done.set()
        thread.join()
    assert {code for code, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    versions = [body for _, body in answers]
    switch = versions.index(b"2\n")
    assert set(versions[:switch]) == {b"1\n"} and set(versions[switch:]) == {b"2\n"}
