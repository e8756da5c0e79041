"""Addresses across test hosts (network namespaces, tests/testhosts.py): the wildcard-bind recipe, a node a
client cannot reach, a control node's host cut off, and control nodes found (and found again) by DNS name.

Every client runs on a host of its own, as a script written to tmp_path; scripts print JSON lines that the
test reads back (tests/test_hosts.py has the helpers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from test_hosts import MAP, client_env, run_client, script
from testhosts import Host, HostCluster, LineReader, Network, secured_cluster

#: A map that runs until stopped, printing [argument, node, arrival time] for each result, then "done".
STREAM = """
import json, sys, time
import lucidity

def slow(x):
    time.sleep(float(sys.argv[3]))
    return x, lucidity.current_node()

if __name__ == "__main__":
    with lucidity.Pool(address=sys.argv[1]) as pool:
        for x, node in pool.imap_unordered(slow, range(int(sys.argv[2])), chunksize=1):
            print(json.dumps([x, node, time.monotonic()]), flush=True)
    print(json.dumps("done"), flush=True)
"""

#: One pool, kept open: it maps once and prints which nodes ran the tasks; then, after each line on stdin,
#: maps until a task runs on the node that line names (or 40 s pass) and prints the nodes again.
LONG_LIVED = """
import json, sys, time
import lucidity

def where(x):
    time.sleep(0.02)
    return lucidity.current_node()

if __name__ == "__main__":
    started = time.monotonic()
    with lucidity.Pool(address=sys.argv[1]) as pool:
        ready = time.monotonic() - started
        nodes = sorted(set(pool.map(where, range(40), chunksize=1)))
        print(json.dumps({"ready_after": ready, "nodes": nodes, "unreachable": list(pool._client.unreachable)}),
              flush=True)
        for wanted in sys.stdin:
            wanted, seen, deadline = wanted.strip(), set(), time.monotonic() + 40
            while wanted not in seen and time.monotonic() < deadline:
                seen |= set(pool.map(where, range(16), chunksize=1))
            print(json.dumps({"nodes": sorted(seen), "unreachable": list(pool._client.unreachable)}), flush=True)
"""


cluster = pytest.fixture(name="cluster")(secured_cluster)


def hosts(network: Network, *names: str) -> list[Host]:
    return [network.add_host(name) for name in names]


class Client:
    """A long-lived client script on a host, read line by line."""

    def __init__(self, host: Host, cluster: HostCluster, argv: list[Any], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.cluster = cluster
        self.proc = host.popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=open(log, "wb"), text=True, env=env)
        assert self.proc.stdout is not None
        self.lines = LineReader(self.proc.stdout)

    def next(self, timeout: float) -> Any:
        line = self.lines.next(time.monotonic() + timeout)
        assert line is not None, f"the client exited {self.proc.wait(5)}:\n{self.stderr}\n{self.cluster.describe_logs()}"
        return json.loads(line)

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0, self.stderr

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert time.monotonic() < deadline, f"no {text!r} in the client's stderr:\n{self.stderr}"
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("family", ["ipv6", "ipv4"])
def test_the_wildcard_recipe_advertises_addresses_clients_can_reach(
        cluster: HostCluster, test_hosts: Network, tmp_path: Path, family: str) -> None:
    """The original project's production recipe: control and nodes bound to wildcards, each node telling
    the address of its interface that routes to the control node (IPv6: [::]; IPv4: 0.0.0.0 and the
    original docs' bare HOST form for the control address)."""
    a, b, c, d = hosts(test_hosts, "a", "b", "c", "d")
    if family == "ipv6":
        cluster.start_control(a, "tcp://[::]:3030")
        control = f"tcp://[{a.ipv6}]:3030"
        for host in (b, c):
            cluster.start_node(host, control, bind="tcp://[::]:3031")
    else:
        cluster.start_control(a, "0.0.0.0")
        control = a.ipv4
        for host in (b, c):
            cluster.start_node(host, control, bind="0.0.0.0:3031")
    cluster.control_address = control
    report = cluster.wait_for(["b", "c"], workers_per_node=2, via=d, timeout=30)
    for node in report["nodes"]:
        host = b if node["name"] == "b" else c
        expected = f"tcp://[{host.ipv6}]" if family == "ipv6" else f"tcp://{host.ipv4}"
        assert node["address"] == f"{expected}:3031", node
        assert all(w["address"].startswith(expected + ":") for w in node["workers"]), node["workers"]
    out = run_client(d, cluster, [script(tmp_path, "map", MAP), control, 48], client_env(cluster, cluster.secret_file))
    assert out["results"] == [x * x for x in range(48)]
    assert out["nodes"] == ["b", "c"]


@pytest.mark.timeout(120)
def test_a_node_this_client_cannot_reach_does_not_stop_the_pool(
        cluster: HostCluster, test_hosts: Network, tmp_path: Path) -> None:
    """Node c joined, but the client's host has no route to it: the pool starts on b, names c once, and
    uses c as soon as the route is back."""
    a, b, c, d = hosts(test_hosts, "a", "b", "c", "d")
    cluster.start_control(a, a.tcp(3030))
    cluster.start_node(b, bind=b.tcp(0))
    cluster.start_node(c, bind=c.tcp(0))
    cluster.wait_for(["b", "c"], workers_per_node=2, via=d, timeout=30)
    d.blackhole(c)
    client = Client(d, cluster, [script(tmp_path, "long", LONG_LIVED), cluster.control_address],
                    client_env(cluster, cluster.secret_file, LUCIDITY_NODE_TIMEOUT="2"), tmp_path / "client.err")
    first = client.next(60)
    assert first["nodes"] == ["b"], first
    assert first["ready_after"] < 15, first  # not the 30 s connect timeout: b answered at once
    status = cluster.status(via=d)
    assert [n["name"] for n in status["nodes"] if "error" in n] == ["c"]  # as seen from the client's host

    client.wait_for_log("unreachable", 15)  # after the node timeout (2 s here), c is named
    client.say("b")  # a few more maps while c is still cut off: c is named once, not once per heartbeat
    assert client.next(60)["unreachable"] == ["c"]
    d.unblackhole(c)
    client.say("c")
    assert client.next(60) == {"nodes": ["b", "c"], "unreachable": []}
    client.finish()
    warnings = [line for line in client.stderr.splitlines() if "unreachable" in line]
    assert len(warnings) == 1 and "node c" in warnings[0], client.stderr
    assert "stopped answering" not in client.stderr and "left the cluster" not in client.stderr, client.stderr


@pytest.mark.timeout(120)
def test_clients_keep_running_tasks_while_the_control_host_is_cut_off(
        cluster: HostCluster, test_hosts: Network, tmp_path: Path) -> None:
    """The control node's host loses its cable for 20 s: the nodes and the client cannot reach it, yet the
    client keeps running tasks on the nodes it knows, resends nothing, and every result arrives once."""
    a, b, c, d = hosts(test_hosts, "a", "b", "c", "d")
    cluster.start_control(a, a.tcp(3030))
    cluster.start_node(b, bind=b.tcp(0))
    cluster.start_node(c, bind=c.tcp(0))
    cluster.wait_for(["b", "c"], workers_per_node=2, via=d, timeout=30)
    count, seconds = 520, 0.2  # four workers: 26 s of work
    client = Client(d, cluster, [script(tmp_path, "stream", STREAM), cluster.control_address, count, seconds],
                    client_env(cluster, cluster.secret_file), tmp_path / "client.err")
    results = [client.next(60)]
    cut = time.monotonic()
    a.pull_cable()
    while (item := client.next(30)) != "done":
        results.append(item)
        if item[2] - cut > 20 and a.link_problems():
            a.plug_cable()
    if a.link_problems():
        a.plug_cable()
    assert client.proc.wait(30) == 0, client.stderr
    assert sorted(x for x, _, _ in results) == list(range(count))  # every result, each once
    during = [x for x, _, at in results if cut + 2 < at < cut + 18]
    assert len(during) > 100, f"only {len(during)} results arrived while the control host was cut off"
    assert "left the cluster" not in client.stderr and "resending" not in client.stderr, client.stderr
    cluster.wait_for(["b", "c"], workers_per_node=2, via=d, timeout=30)  # and the control node relearnt them


@pytest.mark.timeout(150)
def test_a_control_node_found_by_dns_name_and_found_again_when_it_moves(
        cluster: HostCluster, test_hosts: Network, tmp_path: Path) -> None:
    """Nodes and clients take the control node's DNS name; when the control node moves to another host
    and the record follows it, the node already joined and the client already running find it again."""
    dns, a, b, c, e, f = hosts(test_hosts, "dns", "a", "b", "c", "e", "f")
    name = "control.lucidity.test"
    server = test_hosts.start_dns(dns, {name: [a.ipv4, a.ipv6]})
    test_hosts.use_dns(server)
    cluster.start_control(a, "tcp://[::]:3030")
    cluster.control_address, cluster.control_host = name, a
    cluster.start_node(b, name, bind="tcp://[::]:3031")
    cluster.wait_for(["b"], workers_per_node=2, via=c, timeout=30)
    client = Client(c, cluster, [script(tmp_path, "long", LONG_LIVED), name],
                    client_env(cluster, cluster.secret_file), tmp_path / "client.err")
    assert client.next(60)["nodes"] == ["b"]

    assert cluster.stop("control") == 0
    server.set_records({name: [e.ipv4, e.ipv6]})
    cluster.start_control(e, "tcp://[::]:3030")
    cluster.control_address, cluster.control_host = name, e
    cluster.start_node(f, name, bind="tcp://[::]:3031")
    cluster.wait_for(["b", "f"], workers_per_node=2, via=c, timeout=40)  # b found the control node again
    client.say("f")  # and the running client did too: it learns of f only from the moved control node
    assert client.next(60)["nodes"] == ["b", "f"]
    client.finish()


@pytest.mark.timeout(90)
def test_every_record_of_a_name_is_tried(cluster: HostCluster, test_hosts: Network, tmp_path: Path) -> None:
    """A name whose first records lead nowhere (a host that is gone) still reaches the control node."""
    dns, a, b, c = hosts(test_hosts, "dns", "a", "b", "c")
    name = "control.lucidity.test"
    gone = ["10.77.0.200", "fd00:77::200"]  # on the hosts' network, but no host has them
    server = test_hosts.start_dns(dns, {name: [*gone, a.ipv4, a.ipv6]})
    test_hosts.use_dns(server)
    cluster.start_control(a, "tcp://[::]:3030")
    cluster.control_address, cluster.control_host = name, a
    cluster.start_node(b, name, bind="tcp://[::]:0")
    cluster.wait_for(["b"], workers_per_node=2, via=c, timeout=40)
    out = run_client(c, cluster, [script(tmp_path, "map", MAP), name, 8], client_env(cluster, cluster.secret_file),
                     timeout=60)
    assert out["results"] == [x * x for x in range(8)]
