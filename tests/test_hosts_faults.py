"""Faults across test hosts that once lost work or opened a hole (issue 11): a client that comes back to a
node after losing it, a control node that lost its nodes' heartbeats, and a bind that only looked like
loopback.

Clients run as scripts on hosts of their own and print JSON lines (helpers in tests/test_hosts_addresses.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


import pytest

from test_hosts import client_env, script
from test_hosts_addresses import STREAM, Client, hosts
from testhosts import HostCluster, Network, secured_cluster


cluster = pytest.fixture(name="cluster")(secured_cluster)


def read_all(client: Client, first: list, timeout: float) -> list:
    results = list(first)
    while (item := client.next(timeout)) != "done":
        results.append(item)
    assert client.proc.wait(30) == 0, client.stderr
    return results


@pytest.mark.timeout(150)
def test_a_client_that_comes_back_to_a_node_keeps_the_work_it_brings(
        cluster: HostCluster, test_hosts: Network, tmp_path: Path) -> None:
    """Client A loses node b for a while (no route), drops it, finds it again and sends it work over new
    connections, where it queues behind client B's tasks on b's only worker. When b expires A's old, silent
    connection, it abandons what came over that one only. Before, it abandoned everything of A's client id:
    the worker dropped A's new queued tasks, and A waited for them forever."""
    a, b, e, f = hosts(test_hosts, "a", "b", "e", "f")
    cluster.start_control(a, a.tcp(3030))
    cluster.start_node(b, bind=b.tcp(0), processes=1, extra=["--client-timeout", "6"])
    cluster.wait_for(["b"], workers_per_node=1, via=e, timeout=30)
    # B's tasks are long, so that the worker is mostly busy with one of them when A's old session expires.
    other = Client(f, cluster, [script(tmp_path, "stream", STREAM), cluster.control_address, 8, 4],
                   client_env(cluster, cluster.secret_file), tmp_path / "other.err")
    other_first = [other.next(60)]
    count = 10
    client = Client(e, cluster, [script(tmp_path, "stream", STREAM), cluster.control_address, count, 0.3],
                    client_env(cluster, cluster.secret_file, LUCIDITY_NODE_TIMEOUT="3"), tmp_path / "client.err")
    first = [client.next(60)]
    e.blackhole(b)
    client.wait_for_log("node b stopped answering", 15)
    e.unblackhole(b)
    results = read_all(client, first, 60)  # A's new work reaches b, and b's expiry of A's old session spares it
    assert sorted(x for x, _, _ in results) == list(range(count))  # every result, each once
    assert sorted(x for x, _, _ in read_all(other, other_first, 60)) == list(range(8))
    log = cluster.logs["b"].read_text()
    assert "silent for" in log, log  # the old session did expire while the new one worked


@pytest.mark.timeout(120)
def test_a_control_node_that_lost_its_nodes_does_not_make_clients_drop_them(
        cluster: HostCluster, test_hosts: Network, tmp_path: Path) -> None:
    """The nodes cannot reach the control node (their route to it is gone), so it stops listing them; the
    client still reaches both and keeps running tasks there, resending nothing."""
    a, b, c, e = hosts(test_hosts, "a", "b", "c", "e")
    cluster.start_control(a, a.tcp(3030))
    cluster.start_node(b, bind=b.tcp(0))
    cluster.start_node(c, bind=c.tcp(0))
    cluster.wait_for(["b", "c"], workers_per_node=2, via=e, timeout=30)
    count = 200
    client = Client(e, cluster, [script(tmp_path, "stream", STREAM), cluster.control_address, count, 0.1],
                    client_env(cluster, cluster.secret_file), tmp_path / "client.err")
    first = [client.next(60)]
    b.blackhole(a)
    c.blackhole(a)
    deadline = time.monotonic() + 20
    while cluster.status(via=e)["nodes"]:  # the control node forgets both after its node timeout (5 s)
        assert time.monotonic() < deadline, "the control node still lists nodes it cannot hear"
        time.sleep(0.2)
    results = read_all(client, first, 30)
    assert sorted(x for x, _, _ in results) == list(range(count))
    assert {node for _, node, _ in results} == {"b", "c"}
    assert "left the cluster" not in client.stderr and "resending" not in client.stderr, client.stderr


@pytest.mark.timeout(60)
def test_a_source_destination_bind_is_not_taken_for_loopback(cluster: HostCluster, test_hosts: Network) -> None:
    """libzmq's `source;destination` form would bind the destination (every interface here); the text
    starts with 127.0.0.1, and the old check took it for loopback. Now it is not an address at all."""
    a, b = hosts(test_hosts, "a", "b")
    done = a.run(cluster.lucidity("node", "tcp://127.0.0.1:3030", "--bind", "tcp://127.0.0.1:0;0.0.0.0:3032",
                                  secret_file=None), timeout=30, env=cluster.env)
    assert done.returncode == 2, done
    assert done.stderr.strip().count("\n") == 0 and "is not an address" in done.stderr, done.stderr
    probe = b.run([sys.executable, "-c", f"import socket; socket.create_connection(('{a.ipv4}', 3032), 2)"],
                  timeout=30)
    assert probe.returncode != 0 and "Connection refused" in probe.stderr, probe  # nothing listens there
