"""A real Flower deployment on loopback (fedcifar.flower.deploy, procs, certs): TLS, SuperNode auth, clean stop.

One SuperLink and two SuperNodes (flwr 1.41's own console scripts) are started once for the
module; tests/flower_dummy_app sends a small array through every node. The test that stops the
federation comes last in this file (pytest runs a module's tests in file order). About 40 s on
two busy cores, most of it Python start-ups: each message is a fresh `flwr-clientapp` process.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the [flower] extra is not installed")

from fedcifar.flower.certs import make_certs, make_node_key  # noqa: E402
from fedcifar.flower.deploy import Federation  # noqa: E402
from fedcifar.flower.procs import alive, descendants, listening_sockets, marked, start_time  # noqa: E402

APP = Path(__file__).parent / "flower_dummy_app"
NODES = 2


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("federation")
    federation = Federation.up(workdir, NODES, tls=True, auth=True, poll_interval=0.2, timeout=90)
    yield federation
    federation.down()


@pytest.mark.integration
def test_up_starts_tls_superlink_and_registered_nodes_online(fed):
    config = (fed.flwr_home / "config.toml").read_text()
    assert f'address = "{fed.address}"' in config and "root-certificates" in config
    assert fed.address.startswith("127.0.0.1:")
    nodes = fed.nodes
    assert [n.index for n in nodes] == list(range(NODES))
    assert all(n.node_id is not None for n in nodes)  # registered before they started
    assert fed.online() == {n.node_id for n in nodes}


@pytest.mark.integration
def test_dummy_run_round_trips_through_every_node(fed, tmp_path):
    result_path = tmp_path / "result.json"
    run = fed.submit(APP, {"result-path": str(result_path), "num-nodes": NODES, "rounds": 2}, timeout=300)
    assert run.status == "finished:completed" and run.returncode == 0

    result = json.loads(result_path.read_text())
    assert result["errors"] == []
    nodes = fed.nodes[:NODES]  # the ones `up` started
    by_id = {str(n.node_id): n for n in nodes}
    assert sorted(result["node-ids"]) == sorted(n.node_id for n in nodes)
    for replies in result["rounds"]:
        assert set(replies) == set(by_id)
        for node_id, reply in replies.items():
            node = by_id[node_id]
            assert reply["plus-one"]  # the array came back + 1
            assert (reply["partition-id"], reply["num-partitions"]) == (node.index, NODES)  # its --node-config
            # The ClientApp ran in its own process, started by the node's SuperExec (a child of
            # the SuperNode), not in the SuperNode itself...
            assert reply["pid"] != node.pid and reply["ppid"] in descendants([node.pid])
    # ... and a fresh one for every message.
    pids = [reply["pid"] for replies in result["rounds"] for reply in replies.values()]
    assert len(set(pids)) == len(pids)


def test_listening_sockets_reads_addresses_from_proc():
    """The check below can fail: a wildcard or IPv6 socket shows as such."""
    with socket.socket() as any4, socket.socket(socket.AF_INET6) as local6:
        any4.bind(("0.0.0.0", 0))
        local6.bind(("::1", 0))
        for s in (any4, local6):
            s.listen()
        mine = listening_sockets([os.getpid()])
        assert (os.getpid(), "0.0.0.0", any4.getsockname()[1]) in mine
        assert (os.getpid(), "::1", local6.getsockname()[1]) in mine


@pytest.mark.integration
def test_every_listening_socket_is_on_loopback(fed):
    sockets = listening_sockets(fed.pids())
    ports = {port for _, _, port in sockets}
    assert int(fed.address.rsplit(":", 1)[1]) in ports
    assert {n.port for n in fed.nodes[:NODES]} <= ports  # each SuperNode's Runtime API
    assert sockets and all(address == "127.0.0.1" for _, address, _ in sockets), sockets


@pytest.mark.integration
def test_unregistered_node_and_node_trusting_another_ca_are_refused(fed, tmp_path):
    before = fed.online()
    # A valid key that was never registered: the SuperLink refuses to activate it.
    stranger = make_node_key(tmp_path / "stranger")
    unregistered = fed.start_node(key=stranger.private, node_config="partition-id=8 num-partitions=10")
    # A registered key, but the node trusts another CA: it refuses the SuperLink's certificate.
    key = make_node_key(tmp_path / "registered")
    [node_id] = fed.register_keys([key.public])
    other_ca = make_certs(tmp_path / "other-ca").ca
    distrustful = fed.start_node(key=key.private, node_id=node_id, root_certificates=other_ca)

    for node in (unregistered, distrustful):
        code = fed.wait_exit(node.pid, timeout=60)  # flwr gives up at once on both
        assert code not in (None, 0), node.log.read_text()
    # OpenSSL's reason (not Flower's wording): the node refused the certificate, not something else.
    assert "CERTIFICATE_VERIFY_FAILED" in distrustful.log.read_text()
    statuses = {int(n["node-id"]): n["status"] for n in fed.supernodes()}
    assert statuses[node_id] == "registered"  # never online
    assert fed.online() == before


# Last: stops the module's federation.
@pytest.mark.integration
def test_down_leaves_no_process_behind(fed):
    pids = fed.pids()
    started = {p["pid"] for p in fed.state["processes"]}
    assert {n.pid for n in fed.nodes if alive(n.pid)} <= pids and pids - started  # SuperExecs too
    starts = {pid: start_time(pid) for pid in pids}

    other = Federation.attach(fed.workdir)  # as another process would: from federation.json
    assert other.down() >= pids

    assert not [pid for pid, t in starts.items() if alive(pid, t)]
    assert not marked(fed.state["marker"]) and not fed.pids()
    assert not listening_sockets(pids)
