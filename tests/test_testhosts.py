"""The test hosts themselves (tests/testhosts.py): reachability, cables, blackholes, DNS and a clean teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from testhosts import NETNS_ETC, Host, LineReader, Network, NetworkError, NetworkSession, ip, remove_leftovers

#: A TCP echo server on port 7 of every address of its host (dual stack), and a UDP one on port 9 that
#: prints each datagram's text. It prints its pid once both listen.
SERVER = r"""
import os, socket, threading
tcp = socket.socket(socket.AF_INET6)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("::", 7))
tcp.listen()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind(("::", 9))
def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
def datagrams():
    while True:
        data, peer = udp.recvfrom(4096)
        print("udp", data.decode(), flush=True)
threading.Thread(target=datagrams, daemon=True).start()
print(os.getpid(), flush=True)
while True:
    threading.Thread(target=echo, args=(tcp.accept()[0],), daemon=True).start()
"""

#: Connects to argv[1] port 7 within 1 s, sends a word and expects it back; exit status 0 when it did.
PROBE = r"""
import socket, sys
with socket.create_connection((sys.argv[1], 7), timeout=1) as conn:
    conn.sendall(b"ping")
    assert conn.recv(4) == b"ping"
"""

#: Holds one connection to argv[1] port 7 across a cable pull: echoes one word, says "connected", then
#: echoes a second word when told to on stdin, with up to 20 s for the answer (TCP retransmits meanwhile).
HOLDER = r"""
import socket, sys
with socket.create_connection((sys.argv[1], 7), timeout=1) as conn:
    conn.sendall(b"one"); assert conn.recv(3) == b"one"
    print("connected", flush=True)
    sys.stdin.readline()
    conn.settimeout(20)
    conn.sendall(b"two"); assert conn.recv(3) == b"two"
    print("two", flush=True)
"""

#: Prints the sorted set of addresses argv[1] resolves to, as JSON, or the error's name.
RESOLVE = r"""
import json, socket, sys
try:
    print(json.dumps(sorted({info[4][0] for info in socket.getaddrinfo(sys.argv[1], 3030, type=socket.SOCK_STREAM)})))
except socket.gaierror as exc:
    print(json.dumps(exc.__class__.__name__ + ": " + str(exc)))
"""


def start_server(host: Host) -> tuple[subprocess.Popen[str], LineReader]:
    """The SERVER on `host`, once it listens, and the reader of its output."""
    proc = host.popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = LineReader(proc.stdout)
    line = lines.next(time.monotonic() + 10)
    # `ip netns exec` execs the program: the pid Popen knows is the server's own, in the host's namespace.
    assert line == str(proc.pid)
    assert proc.pid in host.pids()
    return proc, lines


def reaches(source: Host, address: str) -> bool:
    return source.run([sys.executable, "-c", PROBE, address], timeout=10).returncode == 0


def root_links() -> set[str]:
    return {link["ifname"] for link in json.loads(ip("-j", "link", "show"))}


@pytest.mark.timeout(60)
def test_hosts_reach_each_other_over_ipv4_and_ipv6(test_hosts: Network) -> None:
    before = root_links()
    a, b, c = (test_hosts.add_host(name) for name in "abc")
    assert (a.ipv4, b.ipv6) == ("10.77.0.1", "fd00:77::2")
    assert root_links() == before  # the machine's own namespace gained nothing: no veth, no bridge
    for host in (a, b, c):
        start_server(host)
    for source, target in ((a, b), (b, c), (c, a)):
        assert reaches(source, target.ipv4), f"{source.name} -> {target.name} over IPv4"
        assert reaches(source, target.ipv6), f"{source.name} -> {target.name} over IPv6"
    assert {link["ifname"] for link in json.loads(ip("-j", "-n", a.ns, "link", "show"))} == {"lo", "eth0"}


@pytest.mark.timeout(60)
def test_a_pulled_cable_stops_traffic_and_plugging_it_back_restores_it(test_hosts: Network) -> None:
    a, b = test_hosts.add_host("a"), test_hosts.add_host("b")
    start_server(b)
    holder = a.popen([sys.executable, "-c", HOLDER, b.ipv4], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     text=True)
    assert holder.stdin is not None and holder.stdout is not None
    lines = LineReader(holder.stdout)
    assert lines.next(time.monotonic() + 10) == "connected"

    b.pull_cable()
    assert not reaches(a, b.ipv4) and not reaches(a, b.ipv6)
    assert not reaches(b, a.ipv4)
    addresses = ip("-n", b.ns, "addr", "show", "dev", "eth0")
    assert f"{b.ipv4}/24" in addresses and f"{b.ipv6}/64" in addresses  # both families survive the pull
    holder.stdin.write("go\n")
    holder.stdin.flush()  # the second word leaves a, and is lost while the cable is out

    plugged = time.monotonic()
    b.plug_cable()
    assert b.link_problems() == []
    assert reaches(a, b.ipv4) and reaches(a, b.ipv6)
    # The connection opened before the pull carries on: TCP retransmits once the link is back.
    assert lines.next(plugged + 20) == "two"
    assert holder.wait(10) == 0


@pytest.mark.timeout(60)
def test_a_blackhole_from_a_to_b_blocks_only_a_to_b(test_hosts: Network) -> None:
    a, b, c = (test_hosts.add_host(name) for name in "abc")
    _, lines = start_server(a)
    start_server(b)
    start_server(c)
    a.blackhole(b)
    assert not reaches(a, b.ipv4) and not reaches(a, b.ipv6)
    assert reaches(a, c.ipv4) and reaches(c, b.ipv4) and reaches(c, b.ipv6)
    # b's packets still arrive at a (a TCP connect from b would not complete: a's answers are dropped).
    sent = b.run([sys.executable, "-c", "import socket, sys\n"
                  "for family, address in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):\n"
                  "    socket.socket(family, socket.SOCK_DGRAM).sendto(b'from-b', (address, 9))",
                  a.ipv4, a.ipv6], timeout=10)
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 10
    assert [lines.next(deadline), lines.next(deadline)] == ["udp from-b", "udp from-b"]
    a.unblackhole(b)
    assert reaches(a, b.ipv4) and reaches(a, b.ipv6)


@pytest.mark.timeout(60)
def test_dnsmasq_answers_names_and_takes_new_records(test_hosts: Network) -> None:
    a, b = test_hosts.add_host("a"), test_hosts.add_host("b")
    dns = test_hosts.start_dns(a, {"control.test": [a.ipv4, a.ipv6], "node.test": [b.ipv4]})
    test_hosts.use_dns(dns)
    c = test_hosts.add_host("c")  # a host added afterwards resolves through it too

    def resolve(host: Host, name: str) -> object:
        done = host.run([sys.executable, "-c", RESOLVE, name], timeout=20)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # `ip netns exec` mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf; getaddrinfo goes there.
    assert b.run(["cat", "/etc/resolv.conf"], timeout=10).stdout.startswith(f"nameserver {a.ipv4}\n")
    assert resolve(b, "control.test") == sorted([a.ipv4, a.ipv6])
    assert resolve(c, "node.test") == [b.ipv4]
    assert "Name or service not known" in str(resolve(c, "absent.test"))  # NXDOMAIN at once, no upstream

    dns.set_records({"control.test": [c.ipv4], "node.test": [b.ipv4, b.ipv6]})
    assert resolve(b, "control.test") == [c.ipv4]
    assert resolve(a, "node.test") == sorted([b.ipv4, b.ipv6])


@pytest.mark.timeout(60)
def test_run_kills_a_command_that_outlives_its_timeout(test_hosts: Network) -> None:
    a = test_hosts.add_host("a")
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        a.run([sys.executable, "-c", "print('begun', flush=True); import time; time.sleep(60)"], timeout=1)
    assert time.monotonic() - started < 10
    assert a.pids() == []


def _traces(network: Network) -> list[str]:
    """What is left of `network` on this machine: namespaces, their /etc/netns directories, veths."""
    found = [ns for ns in network.namespaces if os.path.exists(f"/run/netns/{ns}")]
    found += [str(d) for d in network.etc_dirs if d.exists()]
    found += [f"{ns}: {ip('netns', 'pids', ns, check=False)}" for ns in network.namespaces
              if ip("netns", "pids", ns, check=False).strip()]
    return found


@pytest.mark.timeout(60)
def test_teardown_leaves_no_namespace_veth_etc_dir_or_process(test_hosts_session: NetworkSession, tmp_path: Path) -> None:
    before = root_links()
    network = Network(test_hosts_session.new_prefix(), tmp_path)
    network.start()
    a, b = network.add_host("a"), network.add_host("b")
    pids = [start_server(a)[0].pid, start_server(b)[0].pid]
    # A process in its own session that forks a grandchild and exits: the grandchild is no child of ours.
    spawner = b.popen([sys.executable, "-c", "import os, subprocess, sys\n"
                       "child = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
                       "print(child.pid, flush=True)"], stdout=subprocess.PIPE, text=True)
    assert spawner.stdout is not None
    orphan = int(spawner.stdout.readline())
    spawner.wait(10)
    pids.append(orphan)
    dns = network.start_dns(a, {"x.test": [a.ipv4]})
    network.use_dns(dns)
    pids.append(dns.proc.pid)
    assert all(psutil.pid_exists(pid) for pid in pids)
    assert all(directory.is_dir() for directory in network.etc_dirs)

    network.close()
    assert _traces(network) == []
    assert root_links() == before
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    assert not alive
    assert not any(ns.startswith(network.prefix) for ns in ip("netns", "list").split())
    assert not any(path.name.startswith(network.prefix) for path in NETNS_ETC.iterdir())


@pytest.mark.timeout(60)
def test_teardown_after_a_setup_step_failed_half_way(test_hosts_session: NetworkSession, tmp_path: Path) -> None:
    network = Network(test_hosts_session.new_prefix(), tmp_path)
    try:
        network.start()
        network.add_host("a")
        # Something already holds b's switch port name: b's namespace is made, then its cable fails.
        ip("-n", network.switch, "link", "add", "v2", "type", "bridge")
        with pytest.raises(NetworkError, match="v2"):
            network.add_host("b")
        assert f"{network.prefix}-b" in network.namespaces
    finally:
        network.close()
    assert _traces(network) == []


@pytest.mark.timeout(60)
def test_leftovers_of_a_crashed_run_are_removed(test_hosts_session: NetworkSession) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)  # a pid that was a process and is no more: the crashed run's
    ns = f"lt{gone.pid}-1-a"
    ip("netns", "add", ns)
    try:
        (NETNS_ETC / ns).mkdir(parents=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", "echo in; exec sleep 600"],
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert sleeper.stdout is not None and sleeper.stdout.readline() == "in\n"
        assert ns in remove_leftovers()
        sleeper.wait(10)
        sleeper.stdout.close()
        assert not psutil.pid_exists(sleeper.pid)
        assert not os.path.exists(f"/run/netns/{ns}") and not (NETNS_ETC / ns).exists()
    finally:
        ip("netns", "del", ns, check=False)
