"""The Swarm testbed itself (scripts/swarm-testbed): three nodes, one manager, generic `gpu`
resources on node 3, and a node that is lost and booted again keeps its swarm identity. These
are the facts the Swarm backend's tests build on."""

from __future__ import annotations

import pytest

from tests.swarm_support import Testbed

pytestmark = pytest.mark.engine

# With the testbed's 1 s dispatcher heartbeat a lost node is Down after ~2-4 s (~11 s with the
# default 5 s), and a booted node is Ready again within ~2 s of its dockerd answering.
DOWN_DEADLINE_S = 20
READY_DEADLINE_S = 30


def test_three_nodes_ready_one_manager(swarm_testbed: Testbed) -> None:
    states = swarm_testbed.wait_nodes_ready(READY_DEADLINE_S)
    # (availability is not checked: the session's other tests may drain a node)
    assert {h: state for h, (state, _) in states.items()} == dict.fromkeys(
        swarm_testbed.hostnames, "ready"
    )
    nodes = swarm_testbed.client.nodes.list()
    managers = [
        n.attrs["Description"]["Hostname"] for n in nodes if n.attrs["Spec"]["Role"] == "manager"
    ]
    assert managers == [swarm_testbed.hostnames[0]]
    addresses = {n.attrs["Description"]["Hostname"]: n.attrs["Status"]["Addr"] for n in nodes}
    assert addresses == dict(zip(swarm_testbed.hostnames, swarm_testbed.addresses, strict=True))


def test_each_node_is_its_own_daemon(swarm_testbed: Testbed) -> None:
    for i, hostname in enumerate(swarm_testbed.hostnames, start=1):
        client = swarm_testbed.node_client(i)
        try:
            info = client.info()
        finally:
            client.close()
        assert info["Name"] == hostname
        assert info["Driver"] == swarm_testbed.storage_driver
        assert info["Swarm"]["LocalNodeState"] == "active"
        assert info["Swarm"]["ControlAvailable"] == (i == 1)


def test_gpu_node_advertises_generic_resources(swarm_testbed: Testbed) -> None:
    resources = {
        n.attrs["Description"]["Hostname"]: n.attrs["Description"]["Resources"].get(
            "GenericResources"
        )
        for n in swarm_testbed.client.nodes.list()
    }
    gpu_host = swarm_testbed.hostnames[swarm_testbed.gpu_node - 1]
    assert sorted(
        (r["NamedResourceSpec"]["Kind"], r["NamedResourceSpec"]["Value"])
        for r in resources.pop(gpu_host)
    ) == [("gpu", "GPU-0"), ("gpu", "GPU-1")]
    assert all(not r for r in resources.values()), resources


def test_lost_node_goes_down_and_comes_back_with_its_id(swarm_testbed: Testbed) -> None:
    swarm_testbed.wait_nodes_ready(READY_DEADLINE_S)
    hostname = swarm_testbed.hostnames[1]
    node_id = swarm_testbed.node_ids()[hostname]
    swarm_testbed.kill_node(2)
    try:
        swarm_testbed.wait_node_state(2, "down", DOWN_DEADLINE_S)
        assert swarm_testbed.node_states()[swarm_testbed.hostnames[0]] == ("ready", "active")
    finally:
        # the rest of the session needs all three nodes, whatever happened above
        swarm_testbed.start_node(2)
    swarm_testbed.wait_nodes_ready(READY_DEADLINE_S)
    assert swarm_testbed.node_ids()[hostname] == node_id
    assert len(swarm_testbed.node_ids()) == len(swarm_testbed.hostnames)
