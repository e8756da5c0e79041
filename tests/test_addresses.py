"""Every form of address people write, on loopback: parsed the same everywhere, or refused in one line.

What crosses a network (wildcard binds, what a node advertises, names that move) is in
tests/test_hosts_addresses.py, on test hosts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Iterator

import pytest

import lucidity
from lucidity import addresses
from lucidity.addresses import Endpoint, parse
from lucidity.status import query_status

from conftest import CliCluster, free_port


def node_name(_: object = None) -> str:
    return os.environ.get("LUCIDITY_NODE", "")


@pytest.mark.parametrize("text, expected", [
    ("tcp://10.0.0.2:3030", "tcp://10.0.0.2:3030"),
    ("10.0.0.2:3030", "tcp://10.0.0.2:3030"),
    ("10.0.0.2", "tcp://10.0.0.2:3030"),
    ("http://10.0.0.2:3030/", "tcp://10.0.0.2:3030"),
    ("http://10.0.0.2:4000", "tcp://10.0.0.2:4000"),
    ("[fd00::2]:3031", "tcp://[fd00::2]:3031"),
    ("tcp://[fd00::2]:3031", "tcp://[fd00::2]:3031"),
    ("[fd00::2]", "tcp://[fd00::2]:3030"),
    ("fd00::2", "tcp://[fd00::2]:3030"),
    ("control.internal", "tcp://control.internal:3030"),
    ("_api.internal:4280", "tcp://_api.internal:4280"),
    ("tcp://Control.Example.com.:1", "tcp://Control.Example.com:1"),
    ("  localhost:7 ", "tcp://localhost:7"),
    ("ipc:///tmp/x/control", "ipc:///tmp/x/control"),
])
def test_every_form_people_write(text: str, expected: str) -> None:
    assert parse(text).zmq == expected


@pytest.mark.parametrize("text, says", [
    ("tcp://127.0.0.1:0;0.0.0.0:3032", "is not an address"),  # libzmq's source;destination form
    ("127.0.0.1:0;eth0", "not a number"),
    ("10.0.0.2:99999", "out of range"),
    ("10.0.0.2:0", "out of range"),
    ("10.0.0.2:http", "not a number"),
    ("https://10.0.0.2:3030/", "unknown scheme"),
    ("udp://10.0.0.2:3030", "unknown scheme"),
    ("[fd00::2:3031", "closing ']'"),
    ("[10.0.0.2]:3031", "not an IPv6"),
    ("fd00::zz", "is not an address"),
    ("bad host:1", "not a host name"),
    ("", "empty"),
    ("ipc://", "no usable path"),
])
def test_what_is_not_an_address_is_one_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse(text)
    assert "\n" not in str(caught.value)


def test_binds_take_port_zero_and_names() -> None:
    assert parse("127.0.0.1:0", allow_port_zero=True).port == 0
    assert addresses.bind_endpoint("localhost", default_port=0) == Endpoint("tcp", "127.0.0.1", 0)
    assert addresses.bind_endpoint("*:3031", default_port=0).is_wildcard
    with pytest.raises(ValueError, match="cannot resolve"):
        addresses.bind_endpoint("no-such-host.invalid", default_port=0)


def test_port_ranges() -> None:
    assert addresses.parse_port_range("40000-40099") == (40000, 40099)
    assert addresses.parse_port_range("5000") == (5000, 5000)
    for bad in ("40099-40000", "0-10", "1-70000", "a-b", "10-"):
        with pytest.raises(ValueError):
            addresses.parse_port_range(bad)


def test_what_a_daemon_advertises(monkeypatch: pytest.MonkeyPatch) -> None:
    wildcard, control = parse("[::]:3031"), parse("127.0.0.1:3030")
    assert addresses.advertised_host(wildcard, control) == "127.0.0.1"  # the route to a control on loopback
    assert addresses.advertised_host(parse("127.0.0.5:0", allow_port_zero=True), control) == "127.0.0.5"
    monkeypatch.setenv("FLY_MACHINE_ID", "e2865013")
    monkeypatch.setenv("FLY_APP_NAME", "crunch")
    assert addresses.advertised_host(wildcard, control, "$FLY_MACHINE_ID.vm.${FLY_APP_NAME}.internal") == \
        "e2865013.vm.crunch.internal"
    monkeypatch.delenv("FLY_APP_NAME")
    with pytest.raises(ValueError, match="not set"):
        addresses.advertised_host(wildcard, control, "$FLY_MACHINE_ID.vm.$FLY_APP_NAME.internal")


def test_names_resolve_to_every_record() -> None:
    records = addresses.resolve(parse("localhost:3030"))
    assert records and all(r.is_literal and r.port == 3030 for r in records)
    assert addresses.resolve(parse("10.0.0.2")) == [parse("10.0.0.2")]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidity", *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    ["node", "tcp://127.0.0.1:0;0.0.0.0:3032"],
    ["node", "127.0.0.1:3030", "--bind", "tcp://127.0.0.1:0;0.0.0.0:3032"],
    ["node", "127.0.0.1:99999"],
    ["node", "127.0.0.1", "--worker-ports", "9-1"],
    ["node", "127.0.0.1", "--processes", "4", "--worker-ports", "40000-40001"],
    ["node", "127.0.0.1", "--advertise", "$NO_SUCH_VARIABLE_HERE"],
    ["control", "--bind", "tcp://127.0.0.1:3030;0.0.0.0:3030"],
    ["status", "http://[::1"],
])
def test_cli_refuses_a_bad_address_in_one_line(args: list[str]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lucidity "), done.stderr
    assert "Traceback" not in done.stderr


def test_the_api_refuses_a_bad_address_with_valueerror(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="out of range"):
        lucidity.Pool(address="127.0.0.1:99999")
    with pytest.raises(ValueError, match="is not an address"):
        lucidity.connect("tcp://127.0.0.1:0;0.0.0.0:3032")
    monkeypatch.setenv("LUCIDITY_ADDRESS", "tcp://[::1:3030")
    with pytest.raises(ValueError, match=r"\$LUCIDITY_ADDRESS"):
        lucidity.Pool()


@pytest.fixture
def bare_cluster() -> Iterator[CliCluster]:
    """A control node on loopback and no node yet."""
    cluster = CliCluster()
    try:
        cluster.start_control()
        yield cluster
    finally:
        cluster.close()


@pytest.mark.timeout(90)
def test_the_original_projects_forms_join_and_connect(bare_cluster: CliCluster) -> None:
    """`lucidity node HOST:PORT` and `lucidity node http://HOST:PORT/` join; Pool takes the same forms."""
    port = bare_cluster.address.rsplit(":", 1)[1]
    bare_cluster._start("one", "node", f"127.0.0.1:{port}", "--processes", "1", "--name", "one")
    bare_cluster._start("two", "node", f"http://127.0.0.1:{port}/", "--processes", "1", "--name", "two")
    bare_cluster.wait_for(2, 1)
    with lucidity.Pool(address=f"http://localhost:{port}/") as pool:
        assert set(pool.map(node_name, range(8), chunksize=1)) <= {"one", "two"}
        assert pool._processes == 2


@pytest.mark.timeout(90)
def test_worker_ports_stay_in_their_range(bare_cluster: CliCluster) -> None:
    first = free_port()
    bare_cluster._start("ranged", "node", bare_cluster.address, "--processes", "2", "--name", "ranged",
                        "--worker-ports", f"{first}-{first + 2}")
    report = bare_cluster.wait_for(1, 2)
    ports = [int(w["address"].rsplit(":", 1)[1]) for w in report["nodes"][0]["workers"]]
    assert all(first <= port <= first + 2 for port in ports), ports
    with lucidity.Pool(address=bare_cluster.address) as pool:
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
    assert json.dumps(query_status(bare_cluster.address))  # the status of a ranged node is plain JSON


@pytest.mark.timeout(60)
def test_a_client_tries_every_record_of_the_control_nodes_name(bare_cluster: CliCluster,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The name's first record leads nowhere (127.0.0.3 holds no control node): the client moves on to the
    next record once the first stays silent, instead of waiting on it until the connect timeout.

    The records come from the resolver, replaced for one name, because the order of real DNS answers is
    the resolver's to choose (tests/test_hosts_addresses.py resolves through a real DNS server)."""
    import socket

    port = int(bare_cluster.address.rsplit(":", 1)[1])
    bare_cluster.start_node("n", 1)
    bare_cluster.wait_for(1, 1)
    real = socket.getaddrinfo
    asked = []

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        if host != "control.lucidity.test":
            return real(host, *args, **kwargs)  # type: ignore[arg-type]
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in ("127.0.0.3", "127.0.0.1")]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with lucidity.Pool(address=f"control.lucidity.test:{port}", connect_timeout=20) as pool:
        assert pool.map(node_name, range(4)) == ["n"] * 4
    assert asked, "the name was never resolved"


@pytest.mark.timeout(60)
def test_a_pool_is_ready_while_every_worker_is_busy(bare_cluster: CliCluster) -> None:
    """A worker counts as reachable once its connection is made, which its busy Python does not delay: a
    second pool starts while the only worker runs the first pool's long task, and queues behind it."""
    import time

    bare_cluster.start_node("n", 1)
    bare_cluster.wait_for(1, 1)
    with lucidity.Pool(address=bare_cluster.address) as first:
        long = first.apply_async(time.sleep, (8,))
        time.sleep(0.5)  # the task has started: the worker's Python is busy for 7.5 s more
        with lucidity.Pool(address=bare_cluster.address) as second:
            assert not long.ready()
            queued = second.apply_async(abs, (-3,))
            assert queued.get(30) == 3
        assert long.ready()
