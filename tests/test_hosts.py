"""A cluster across test hosts (network namespaces, tests/testhosts.py): maps over IPv4 and IPv6, a cable pulled
mid-map, a client with the wrong secret, and daemons that refuse to listen on a network without a secret.

Every client runs on a host of its own, as a script written to tmp_path: the test process lives in the
machine's namespace and cannot reach the hosts. Scripts print JSON that the test reads back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

from lucidity.security import write_secret_file
from testhosts import Host, HostCluster, LineReader, Network, secured_cluster

CONTROL_PORT = 3030
#: Client side: a node silent this long is lost (small, so that a pulled cable costs the map seconds, not more).
NODE_TIMEOUT = 3.0
#: The brief's bound on a plugged-back node being listed again, in seconds.
REJOIN_TIMEOUT = 15.0

MAP = """
import json, sys, time
import lucidity

def square(x):
    time.sleep(0.02)  # long enough that every worker gets some
    return x * x, lucidity.current_node()

if __name__ == "__main__":
    with lucidity.Pool(address=sys.argv[1]) as pool:
        done = pool.map(square, range(int(sys.argv[2])), chunksize=1)
    print(json.dumps({"results": [r for r, _ in done], "nodes": sorted({n for _, n in done})}))
"""

#: Prints each result as it arrives, as [argument, node], then "done".
SLOW_MAP = """
import json, sys, time
import lucidity

def slow(x):
    time.sleep(0.2)
    return x, lucidity.current_node()

if __name__ == "__main__":
    with lucidity.Pool(address=sys.argv[1]) as pool:
        for x, node in pool.imap_unordered(slow, range(int(sys.argv[2]))):
            print(json.dumps([x, node]), flush=True)
    print(json.dumps("done"), flush=True)
"""

#: Tries to run a task that would create the file argv[2]; prints the error the client met.
TOUCH = """
import json, sys
import lucidity

def touch(path):
    open(path, "w").close()

if __name__ == "__main__":
    try:
        with lucidity.Pool(address=sys.argv[1]) as pool:
            pool.apply(touch, (sys.argv[2],))
    except lucidity.AuthenticationError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    else:
        print(json.dumps({"error": None}))
"""


#: No daemon yet, a cluster secret in tmp_path; daemons stopped by SIGTERM after the test.
cluster = pytest.fixture(name="cluster")(secured_cluster)


@pytest.fixture
def abc(test_hosts: Network) -> tuple[Host, Host, Host]:
    """Three hosts: a for the control and a node, b for a node, c for clients."""
    return test_hosts.add_host("a"), test_hosts.add_host("b"), test_hosts.add_host("c")


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def client_env(cluster: HostCluster, secret_file: Optional[Path] = None, **extra: str) -> dict[str, str]:
    """The daemons' environment, with the cluster's secret file (or `secret_file`) for the client."""
    secret = secret_file or cluster.secret_file
    assert secret is not None
    return dict(cluster.env, LUCIDITY_SECRET_FILE=str(secret), **extra)


def run_client(host: Host, cluster: HostCluster, argv: Sequence[Any], env: dict[str, str],
               timeout: float = 30.0) -> Any:
    """Run a client script on `host` and return the JSON of its last line; fail with its stderr and the
    daemons' logs if it did not exit 0."""
    done = host.run([sys.executable, *argv], timeout=timeout, env=env)
    assert done.returncode == 0, f"client exited {done.returncode}:\n{done.stderr}\n{cluster.describe_logs()}"
    return json.loads(done.stdout.splitlines()[-1])


def start_two_nodes(cluster: HostCluster, a: Host, b: Host, ipv6: bool = False) -> tuple[str, dict[str, Any]]:
    """Control and node "a" on a, node "b" on b, two workers each; the control's address and the status."""
    address = a.tcp(CONTROL_PORT, ipv6)
    cluster.start_control(a, address)
    cluster.start_node(a, bind=a.tcp(0, ipv6))
    cluster.start_node(b, bind=b.tcp(0, ipv6))
    return address, cluster.wait_for(["a", "b"], workers_per_node=2, timeout=20)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_a_map_across_nodes_on_two_hosts_from_a_third(cluster: HostCluster, abc: tuple[Host, Host, Host],
                                                      tmp_path: Path, ipv6: bool) -> None:
    a, b, c = abc
    address, report = start_two_nodes(cluster, a, b, ipv6)
    host_of = {"a": a, "b": b}
    for node in report["nodes"]:  # each node advertises the address it bound, in the family asked for
        assert node["address"].startswith(host_of[node["name"]].tcp(0, ipv6)[:-1]), node

    count = 60
    out = run_client(c, cluster, [script(tmp_path, "map", MAP), address, count], client_env(cluster))
    assert out["results"] == [x * x for x in range(count)]
    assert out["nodes"] == ["a", "b"]
    assert cluster.stop("b") == 0 and cluster.stop("a") == 0 and cluster.stop("control") == 0


@pytest.mark.timeout(60)
def test_a_cable_pulled_mid_map_loses_no_result_and_the_node_comes_back(
        cluster: HostCluster, abc: tuple[Host, Host, Host], tmp_path: Path) -> None:
    a, b, c = abc
    address, _ = start_two_nodes(cluster, a, b)
    count = 40
    with open(tmp_path / "client.err", "wb") as err:
        client = c.popen([sys.executable, script(tmp_path, "slow_map", SLOW_MAP), address, str(count)],
                         stdout=subprocess.PIPE, stderr=err, text=True,
                         env=client_env(cluster, LUCIDITY_NODE_TIMEOUT=str(NODE_TIMEOUT)))
    assert client.stdout is not None
    lines = LineReader(client.stdout)
    deadline = time.monotonic() + 30
    delivered: list[tuple[int, str]] = []
    pulled_after = None
    while (line := lines.next(deadline)) is not None and (item := json.loads(line)) != "done":
        delivered.append((item[0], item[1]))
        # Pull b's cable once it has delivered something, so that tasks are surely running there.
        if pulled_after is None and len(delivered) >= 6 and any(node == "b" for _, node in delivered):
            b.pull_cable()
            pulled_after = len(delivered)
    assert client.wait(10) == 0, (tmp_path / "client.err").read_text() + cluster.describe_logs()
    assert pulled_after is not None and pulled_after < count, f"the map ended before the pull: {delivered}"
    assert sorted(x for x, _ in delivered) == list(range(count))  # every result, each exactly once
    assert any(node == "a" for _, node in delivered[pulled_after:])  # a finished what b could not send

    plugged = time.monotonic()
    b.plug_cable()
    report = cluster.wait_for(["a", "b"], workers_per_node=2, via=c, timeout=REJOIN_TIMEOUT)
    assert time.monotonic() - plugged < REJOIN_TIMEOUT
    assert {n["name"] for n in report["nodes"]} == {"a", "b"}


@pytest.mark.timeout(60)
def test_a_client_with_the_wrong_secret_is_refused(cluster: HostCluster, abc: tuple[Host, Host, Host],
                                                   tmp_path: Path) -> None:
    a, b, c = abc
    address, _ = start_two_nodes(cluster, a, b)
    wrong = tmp_path / "wrong-secret"
    write_secret_file(str(wrong))
    marker = tmp_path / "ran"
    out = run_client(c, cluster, [script(tmp_path, "touch", TOUCH), address, marker],
                     client_env(cluster, wrong))
    assert out["error"] == "AuthenticationError", out
    assert "secret" in out["message"]
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_daemons_refuse_to_listen_on_a_host_address_without_a_secret(test_hosts: Network,
                                                                     tmp_path: Path) -> None:
    a, b = test_hosts.add_host("a"), test_hosts.add_host("b")
    cluster = HostCluster(test_hosts, tmp_path, secret_file=None)
    try:
        control = a.run(cluster.lucidity("control", "--bind", a.tcp(CONTROL_PORT)), timeout=30, env=cluster.env)
        assert control.returncode == 2, control.stderr
        assert f"refuses to listen on {a.tcp(CONTROL_PORT)} without a cluster secret" in control.stderr
        assert "--insecure" in control.stderr
        node = b.run(cluster.lucidity("node", a.tcp(CONTROL_PORT), "--bind", b.tcp(0)), timeout=30, env=cluster.env)
        assert node.returncode == 2, node.stderr
        assert "without a cluster secret" in node.stderr

        cluster.start_control(a, a.tcp(CONTROL_PORT), extra=["--insecure"])
        cluster.start_node(b, bind=b.tcp(0), extra=["--insecure"])
        cluster.wait_for(["b"], workers_per_node=2, via=b, timeout=20)
        assert "WITHOUT A CLUSTER SECRET" in cluster.logs["control"].read_text()
        assert cluster.stop("b") == 0 and cluster.stop("control") == 0
    finally:
        cluster.close()
