"""Test hosts: Linux network namespaces on one bridge, so that tests cross a real network on one machine.

Owns the `test_hosts` fixture (a `Network` per test), its hosts, their cables, blackhole routes, processes
and DNS, and `HostCluster`, which starts lucidity daemons on those hosts through the CLI. It does not own
what the tests check: tests/test_testhosts.py tests this module, tests/test_hosts.py uses it.

Layout of one `Network` (names carry the pytest pid and a serial, so parallel runs never collide)::

    switch namespace  lt<pid>-<n>-sw    br0 ─┬─ v1 ─┬─ v2 ─┬─ v3 ...       (no STP: ports forward at once)
                                             │      │      │   veth pairs
    host namespaces   lt<pid>-<n>-a    eth0 10.77.0.1/24  fd00:77::1/64
                      lt<pid>-<n>-b    eth0 10.77.0.2/24  fd00:77::2/64  ...

Nothing here touches the root namespace, where the machine's own interfaces live: the bridge sits in the
switch namespace, and each veth pair is created there with its other end sent straight into its host
(``ip -n SW link add vN type veth peer name eth0 netns HOST``). So 10.77.0.0/24 cannot clash with the
machine's networks, and the machine's routes are never seen. The flip side: the test process, in the root
namespace, cannot reach the hosts. Every client of a cluster on test hosts runs inside one, as a subprocess
(`Host.popen`, `Host.run`).

What ``ip netns exec NS argv`` does (iproute2 6.1, checked by tests/test_testhosts.py): it enters the
namespace, unshares a mount namespace, remounts /sys, bind-mounts every file of /etc/netns/NS/ over the
file of that name in /etc, and then execs argv. So the pid `Host.popen` returns is the program's own pid,
and a program run this way sees /etc/netns/NS/resolv.conf as /etc/resolv.conf. The target must exist in
/etc for the bind mount (it does: /etc/resolv.conf is a regular file here). With nsswitch's
``hosts: files dns``, Python's `socket.getaddrinfo` reads /etc/hosts first and then asks the nameserver of
that resolv.conf, so names absent from /etc/hosts go to our dnsmasq.

IPv6: addresses are added with ``nodad``, so they are usable at once (otherwise they stay "tentative" for
about a second of duplicate address detection). The kernel flushes a link's IPv6 addresses when the link
goes down (``keep_addr_on_down`` is 0 by default in each new namespace), which would make a pulled cable
lose its IPv6 address for good; `Network.add_host` sets it to 1 on eth0, so both families survive a pull.

Teardown (`Network.close`, run whatever the outcome, also after a setup step failed half-way): stop the DNS
servers, SIGKILL every process still in each namespace (``ip netns pids``) and reap the ones that are our
children, delete the namespaces (which destroys their veths), and remove the /etc/netns/NS directories made
here. /etc/netns itself is left in place, as ``ip netns add`` leaves /run/netns. The session fixture also
removes namespaces with our prefix whose pytest process is gone (a crashed or SIGKILLed earlier run).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional, Sequence, Union

import psutil
import pytest

from helpers import stop_process

TESTS = os.path.dirname(os.path.abspath(__file__))

#: Every namespace name made here starts with this, then the pytest pid and a dash.
PREFIX = "lt"
#: Host N gets SUBNET4 + N /24 and SUBNET6 + N /64: a private and a unique-local range that exist only inside
#: the namespaces, so they cannot clash with the machine's own networks.
SUBNET4 = "10.77.0."
SUBNET6 = "fd00:77::"
PREFIX4_BITS = 24
PREFIX6_BITS = 64
#: Host names: short, so that namespace names stay readable (interface names live in the switch: vN).
HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,7}")
MAX_HOSTS = 250
#: Debian's dnsmasq (package dnsmasq-base), the DNS server of the tests that resolve names.
DNSMASQ = "/usr/sbin/dnsmasq"
#: Where `ip netns exec` looks for per-namespace files to bind-mount over /etc.
NETNS_ETC = Path("/etc/netns")

#: Bounds, in seconds: one `ip` command; a plugged cable becoming usable; processes dying after SIGKILL;
#: dnsmasq starting or reloading; a daemon stopping on SIGTERM.
IP_TIMEOUT = 10.0
LINK_TIMEOUT = 5.0
KILL_TIMEOUT = 10.0
DNS_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
#: Pause between two checks of a link's state, in seconds (the first check nearly always passes).
LINK_CHECK_INTERVAL = 0.01
#: Pause between two looks for processes left in a namespace after SIGKILL, in seconds.
KILL_CHECK_INTERVAL = 0.01
#: Pause between two `lucidity status` runs in `HostCluster.wait_for`, in seconds.
STATUS_INTERVAL = 0.1
#: Lines of each daemon's log shown when a wait fails.
LOG_TAIL_LINES = 30

__all__ = ["Network", "Host", "DnsServer", "HostCluster", "LineReader", "NetworkError", "NetworkSession", "ip",
           "kill_namespace", "remove_leftovers", "test_hosts", "test_hosts_session", "secured_cluster"]


class NetworkError(RuntimeError):
    """An `ip` command (or another step building or tearing down test hosts) failed; the text says which."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its stdout; raise `NetworkError` with its stderr when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and done.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed with status {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def namespace_pids(ns: str) -> list[int]:
    """Pids of the live processes in namespace `ns` (none if it does not exist)."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=IP_TIMEOUT)
    return [int(word) for word in done.stdout.split()] if done.returncode == 0 else []


class Host:
    """One test host: a network namespace whose eth0 is cabled to the network's bridge.

    Attributes:
        name: the short name given to `Network.add_host` ("a").
        ns: the namespace's name, unique per pytest run and network ("lt4242-3-a").
        ipv4, ipv6: the host's addresses, without prefix length ("10.77.0.1", "fd00:77::1"); eth0 carries
            them as /24 and /64.
    """

    def __init__(self, network: "Network", name: str, ns: str, index: int) -> None:
        self.network = network
        self.name = name
        self.ns = ns
        self.index = index
        self.ipv4 = f"{SUBNET4}{index}"
        self.ipv6 = f"{SUBNET6}{index}"
        self.port = f"v{index}"  # its end of the cable, in the switch namespace

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, ipv4={self.ipv4!r}, ipv6={self.ipv6!r})"

    def tcp(self, port: int, ipv6: bool = False) -> str:
        """A ZeroMQ address on this host: tcp://10.77.0.1:3030, or tcp://[fd00:77::1]:3030."""
        return f"tcp://[{self.ipv6}]:{port}" if ipv6 else f"tcp://{self.ipv4}:{port}"

    def popen(self, argv: Sequence[Union[str, os.PathLike[str]]], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in this host's namespace, in a new session; teardown kills and reaps it.

        ``ip netns exec`` execs the program, so the returned pid is the program's. Keyword arguments go to
        `subprocess.Popen`.
        """
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.ns, *map(str, argv)], **kwargs)
        self.network.adopt(proc)
        return proc

    def run(self, argv: Sequence[Union[str, os.PathLike[str]]], timeout: float,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a short command in this host's namespace and return it finished, stdout and stderr as text.

        Raises:
            subprocess.TimeoutExpired: it ran longer than `timeout` seconds (it is killed first, with its
                process group, and the output so far is attached).
        """
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = self.popen(argv, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(exc.cmd, timeout, out, err) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def pull_cable(self) -> None:
        """Take eth0 down inside the host: nothing leaves or arrives, established connections stay open
        (no RST, no FIN), and both addresses stay on eth0."""
        ip("-n", self.ns, "link", "set", "eth0", "down")

    def plug_cable(self) -> None:
        """Bring eth0 back up and return once the link carries traffic again.

        veth carrier and the bridge port's forwarding state follow the `ip link set up` synchronously
        (measured: already usable at the first check), so the loop below is a guard with a bound, not a wait.

        Raises:
            NetworkError: the link is not usable within `LINK_TIMEOUT`; the text shows what was missing.
        """
        ip("-n", self.ns, "link", "set", "eth0", "up")
        deadline = time.monotonic() + LINK_TIMEOUT
        while True:
            missing = self.link_problems()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise NetworkError(f"{self.name}: cable plugged back, but after {LINK_TIMEOUT:g} s: {missing}")
            time.sleep(LINK_CHECK_INTERVAL)

    def link_problems(self) -> list[str]:
        """What keeps this host's cable from carrying traffic: [] when eth0 and its bridge port are up,
        the port forwards, and the on-link routes of both families are back."""
        problems = []
        eth0 = json.loads(ip("-j", "-n", self.ns, "link", "show", "eth0"))[0]
        if eth0.get("operstate") != "UP":
            problems.append(f"eth0 is {eth0.get('operstate')}")
        port = json.loads(ip("-j", "-n", self.network.switch, "link", "show", self.port))[0]
        if port.get("operstate") != "UP":
            problems.append(f"switch port {self.port} is {port.get('operstate')}")
        bridge = json.loads(subprocess.run(["bridge", "-j", "-n", self.network.switch, "link", "show", "dev", self.port],
                                           capture_output=True, text=True, timeout=IP_TIMEOUT).stdout or "[{}]")
        if bridge and bridge[0].get("state") != "forwarding":
            problems.append(f"bridge port {self.port} is {bridge[0].get('state')}")
        routes4 = {r.get("dst") for r in json.loads(ip("-j", "-n", self.ns, "-4", "route", "show", "dev", "eth0"))}
        if f"{SUBNET4}0/{PREFIX4_BITS}" not in routes4:
            problems.append(f"no IPv4 route to {SUBNET4}0/{PREFIX4_BITS}")
        routes6 = {r.get("dst") for r in json.loads(ip("-j", "-n", self.ns, "-6", "route", "show", "dev", "eth0"))}
        if f"{SUBNET6}/{PREFIX6_BITS}" not in routes6:
            problems.append(f"no IPv6 route to {SUBNET6}/{PREFIX6_BITS}")
        return problems

    def blackhole(self, other: "Host") -> None:
        """Drop everything this host sends to `other` (both families); `other`'s packets still arrive here,
        and every other host still reaches `other`. A send to it fails at once (EINVAL), as a route to
        nowhere does."""
        ip("-n", self.ns, "-4", "route", "add", "blackhole", f"{other.ipv4}/32")
        ip("-n", self.ns, "-6", "route", "add", "blackhole", f"{other.ipv6}/128")

    def unblackhole(self, other: "Host") -> None:
        """Undo `blackhole(other)`."""
        ip("-n", self.ns, "-4", "route", "del", "blackhole", f"{other.ipv4}/32")
        ip("-n", self.ns, "-6", "route", "del", "blackhole", f"{other.ipv6}/128")

    def pids(self) -> list[int]:
        """Pids of the live processes in this host's namespace."""
        return namespace_pids(self.ns)


class DnsServer:
    """dnsmasq answering A and AAAA records from a hosts file, on one host's IPv4 address, port 53.

    Records are changed with `set_records`: the hosts file is replaced and dnsmasq is sent SIGHUP, which
    makes it clear its cache and re-read the file (``--addn-hosts``); the call returns once dnsmasq logged
    the re-read, so the next query sees the new records. Answers carry TTL 0 (``--local-ttl`` default), and
    nothing on the hosts caches them (no nscd), so a change is visible to the next lookup. A name it does not
    know gets NXDOMAIN at once (``--local=/#/``: no upstream servers are ever asked).
    """

    def __init__(self, host: Host, records: dict[str, list[str]], workdir: Path) -> None:
        self.host = host
        self.address = host.ipv4
        workdir.mkdir(parents=True, exist_ok=True)
        self.hosts_file = workdir / f"dns-{host.name}.hosts"
        self._write(records)
        self.log: list[str] = []
        self._changed = threading.Condition()
        self.proc = host.popen(
            [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             "--local=/#/", "--bind-interfaces", f"--listen-address={self.address}", "--port=53",
             "--user=root", f"--pid-file={workdir / f'dns-{host.name}.pid'}",
             f"--addn-hosts={self.hosts_file}", "--log-facility=-", "--log-queries"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_log, name=f"dnsmasq-log-{host.name}", daemon=True)
        self._reader.start()
        self._wait_for_reads(1, "start")

    def set_records(self, records: dict[str, list[str]]) -> None:
        """Replace every record; returns once dnsmasq has re-read them."""
        reads = self._reads()
        self._write(records)
        self.proc.send_signal(signal.SIGHUP)
        self._wait_for_reads(reads + 1, "reload")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `DNS_TIMEOUT`; reap it and join its log reader."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DNS_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(DNS_TIMEOUT)
        self._reader.join(DNS_TIMEOUT)

    def _write(self, records: dict[str, list[str]]) -> None:
        lines = [f"{address} {name}\n" for name, addresses in records.items() for address in addresses]
        staging = self.hosts_file.with_suffix(".new")
        staging.write_text("".join(lines))
        os.replace(staging, self.hosts_file)  # dnsmasq never reads a half-written file

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.log.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _reads(self) -> int:
        marker = f"read {self.hosts_file}"
        with self._changed:
            return sum(marker in line for line in self.log)

    def _wait_for_reads(self, count: int, what: str) -> None:
        marker = f"read {self.hosts_file}"
        with self._changed:
            done = self._changed.wait_for(
                lambda: sum(marker in line for line in self.log) >= count or self.proc.poll() is not None,
                DNS_TIMEOUT)
            if not done or self.proc.poll() is not None:
                raise NetworkError(f"dnsmasq on {self.host.name} did not {what} within {DNS_TIMEOUT:g} s "
                                   f"(exit status {self.proc.poll()}); its log:\n" + "\n".join(self.log))


class Network:
    """A switch namespace with a bridge, and the hosts cabled to it; `close` removes every trace.

    Args:
        prefix: the start of every namespace name, unique per pytest run and network ("lt4242-3").
        workdir: where DNS files go.
    """

    def __init__(self, prefix: str, workdir: Path) -> None:
        self.prefix = prefix
        self.workdir = workdir
        self.switch = f"{prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []  # in creation order; recorded before each is made
        self.etc_dirs: list[Path] = []
        self.dns_servers: list[DnsServer] = []
        self.nameserver: Optional[str] = None
        self._processes: list[subprocess.Popen[Any]] = []

    def start(self) -> None:
        """Make the switch namespace and its bridge (STP and multicast snooping off: ports forward at once,
        and IPv6 neighbour discovery is flooded like any multicast)."""
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        """Make host `name` (lower-case letters and digits, at most 8) and cable it to the bridge."""
        if not HOST_NAME.fullmatch(name) or name == "sw" or name in self.hosts:
            raise ValueError(f"host name {name!r}: use a new name of 1-8 lower-case letters and digits, not 'sw'")
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise ValueError(f"a test network holds at most {MAX_HOSTS} hosts")
        host = Host(self, name, f"{self.prefix}-{name}", index)
        self._add_namespace(host.ns)
        ip("-n", self.switch, "link", "add", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        # Before the first address: the kernel's default flushes IPv6 addresses when eth0 goes down.
        self._sysctl(host, "net/ipv6/conf/eth0/keep_addr_on_down", "1")
        ip("-n", host.ns, "addr", "add", f"{host.ipv4}/{PREFIX4_BITS}", "dev", "eth0")
        ip("-n", host.ns, "addr", "add", f"{host.ipv6}/{PREFIX6_BITS}", "dev", "eth0", "nodad")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        if self.nameserver is not None:
            self._write_resolv_conf(host)
        return host

    def start_dns(self, host: Host, records: dict[str, list[str]]) -> DnsServer:
        """Start dnsmasq on `host` answering `records` (name -> addresses, IPv4 and IPv6 mixed); see
        `DnsServer` for changing them later. Hosts use it once `use_dns` says so."""
        if not os.path.exists(DNSMASQ):
            pytest.skip(f"{DNSMASQ} is not installed: `apt-get install dnsmasq-base` (.ci/run installs it)")
        server = DnsServer(host, records, self.workdir)
        self.dns_servers.append(server)
        return server

    def use_dns(self, server: Union[DnsServer, Host]) -> None:
        """Make every host, present and future, resolve names through the DNS server on `server`.

        Writes /etc/netns/NS/resolv.conf, which ``ip netns exec`` mounts over /etc/resolv.conf when it starts
        a process: processes started afterwards use it, one started before keeps the machine's resolver.
        """
        self.nameserver = server.address if isinstance(server, DnsServer) else server.ipv4
        for host in self.hosts.values():
            self._write_resolv_conf(host)

    def adopt(self, proc: subprocess.Popen[Any]) -> None:
        """Record a process started in one of our namespaces, so that teardown reaps it."""
        self._processes.append(proc)

    def close(self) -> None:
        """Remove every trace of this network; raise `NetworkError` at the end if anything resisted.

        Every step runs even when an earlier one failed, so one stuck process never leaves a namespace behind.
        """
        problems: list[str] = []
        for server in self.dns_servers:
            try:
                server.stop()
            except Exception as exc:  # the sweep below still kills it
                problems.append(f"dnsmasq on {server.host.name}: {exc!r}")
        for proc in self._processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # by pid: our child, perhaps still in `ip` and not yet in its namespace
        for ns in reversed(self.namespaces):
            try:
                kill_namespace(ns, self._processes)
            except Exception as exc:
                problems.append(str(exc))
        for proc in self._processes:
            try:
                proc.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"process {proc.pid} ({str(proc.args)[:160]}) survived SIGKILL")
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for ns in reversed(self.namespaces):
            try:
                ip("netns", "del", ns)
            except NetworkError as exc:
                if os.path.exists(f"/run/netns/{ns}"):
                    problems.append(str(exc))
        for directory in self.etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
            if directory.exists():
                problems.append(f"could not remove {directory}")
        if problems:
            raise NetworkError(f"teardown of test network {self.prefix}: " + "; ".join(problems))

    def _add_namespace(self, ns: str) -> None:
        self.namespaces.append(ns)  # first, so that a failed `add` is still cleaned up
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _sysctl(self, host: Host, key: str, value: str) -> None:
        # /proc/sys/net belongs to the reader's network namespace, so it is written from inside.
        done = host.run(["sh", "-c", f"echo {value} > /proc/sys/{key}"], timeout=IP_TIMEOUT)
        if done.returncode != 0:
            raise NetworkError(f"{host.name}: could not set {key}={value}: {done.stderr.strip()}")

    def _write_resolv_conf(self, host: Host) -> None:
        directory = NETNS_ETC / host.ns
        if directory not in self.etc_dirs:
            self.etc_dirs.append(directory)  # first, so that a failed write is still cleaned up
        directory.mkdir(parents=True, exist_ok=True)
        # Short timeout and few attempts: a test that breaks DNS should fail in seconds, not in 20.
        (directory / "resolv.conf").write_text(f"nameserver {self.nameserver}\noptions timeout:1 attempts:2\n")


def kill_namespace(ns: str, children: Iterable[subprocess.Popen[Any]] = ()) -> None:
    """SIGKILL every process in namespace `ns` until none is left; reap those among `children`.

    Loops because a process may fork while it is being killed. Processes that are not our children are
    reaped by their parent or by init; they leave the namespace's list as soon as they die (a zombie is in
    no namespace), so waiting for their reaping is not needed, and init here can take seconds to do it.

    Raises:
        NetworkError: processes are still in `ns` after `KILL_TIMEOUT`.
    """
    ours = {proc.pid: proc for proc in children}
    deadline = time.monotonic() + KILL_TIMEOUT
    while True:
        pids = namespace_pids(ns)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise NetworkError(f"processes {pids} in namespace {ns} survived SIGKILL for {KILL_TIMEOUT:g} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            if pid in ours:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    ours[pid].wait(max(0.0, deadline - time.monotonic()))
        if not set(pids) <= set(ours):
            time.sleep(KILL_CHECK_INTERVAL)  # no event tells when another's process has died


def remove_leftovers() -> list[str]:
    """Remove the namespaces (and /etc/netns directories) of earlier runs whose pytest process is gone, or
    that carry our own pid (a crashed run whose pid we reuse). Returns their names.

    Call it only while this process has no network of its own: the session fixture calls it first thing.
    """
    pattern = re.compile(rf"{PREFIX}(\d+)-")
    removed = []
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    if NETNS_ETC.is_dir():
        names += [p.name for p in NETNS_ETC.iterdir() if p.name not in names]
    for ns in names:
        match = pattern.match(ns)
        if not match:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _is_alive(pid):
            continue  # a live run's, perhaps in parallel with this one
        kill_namespace(ns)
        ip("netns", "del", ns, check=False)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        removed.append(ns)
    return removed


def _is_alive(pid: int) -> bool:
    # A SIGKILLed pytest stays a zombie until its parent (perhaps init) reaps it: that run is over.
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class NetworkSession:
    """What every `test_hosts` network of this pytest run shares: the serial in namespace names."""

    def __init__(self) -> None:
        self.serial = itertools.count(1)
        self.leftovers_removed: list[str] = []

    def new_prefix(self) -> str:
        return f"{PREFIX}{os.getpid()}-{next(self.serial)}"


@pytest.fixture(scope="session")
def test_hosts_session() -> Iterator[NetworkSession]:
    """Check that network namespaces can be made here (skip with the reason when not), and sweep away the
    namespaces of crashed earlier runs."""
    if os.geteuid() != 0:
        pytest.skip("test hosts need root to make network namespaces (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("test hosts need iproute2's `ip` command")
    session = NetworkSession()
    probe = f"{PREFIX}{os.getpid()}-probe"
    ip("netns", "del", probe, check=False)
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if done.returncode != 0:
        pytest.skip(f"`ip netns add` is refused here: {done.stderr.strip()}")
    ip("netns", "del", probe)
    session.leftovers_removed = remove_leftovers()
    yield session


@pytest.fixture
def test_hosts(test_hosts_session: NetworkSession, tmp_path: Path) -> Iterator[Network]:
    """A `Network` of test hosts with no host yet: ``a = test_hosts.add_host("a")``. Torn down after the
    test whatever happened, leaving no namespace, veth, /etc/netns directory or process."""
    network = Network(test_hosts_session.new_prefix(), tmp_path / "network")
    try:
        network.start()
        yield network
    finally:
        network.close()


def secured_cluster(test_hosts: Network, tmp_path: Path) -> Iterator["HostCluster"]:
    """A `HostCluster` with a cluster secret in tmp_path and no daemon yet; its daemons are stopped after the
    test. Test files make it their ``cluster`` fixture: ``cluster = pytest.fixture(name="cluster")(secured_cluster)``."""
    from lucidity.security import write_secret_file

    secret = tmp_path / "secret"
    write_secret_file(str(secret))
    hosts = HostCluster(test_hosts, tmp_path, secret)
    try:
        yield hosts
    finally:
        hosts.close()


class HostCluster:
    """lucidity daemons on test hosts, started through the CLI as an operator would (the counterpart of
    conftest's `CliCluster`), each with its log file in `workdir`.

    Args:
        network: the hosts' network.
        workdir: where the logs go.
        secret_file: the cluster secret every daemon and `status` uses; None starts them without one.
    """

    def __init__(self, network: Network, workdir: Path, secret_file: Optional[Path] = None) -> None:
        self.network = network
        self.workdir = workdir
        self.secret_file = secret_file
        self.control_address: Optional[str] = None
        self.control_host: Optional[Host] = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
        for variable in ("LUCIDITY_ADDRESS", "LUCIDITY_SECRET", "LUCIDITY_SECRET_FILE"):
            self.env.pop(variable, None)

    def lucidity(self, *args: str, secret_file: Optional[Path] = None) -> list[str]:
        """The argv of ``lucidity ARGS``, with the cluster's (or the given) secret file."""
        secret = secret_file or self.secret_file
        return [sys.executable, "-m", "lucidity", *args, *(["--secret-file", str(secret)] if secret else [])]

    def start_control(self, host: Host, bind: str, secret_file: Optional[Path] = None,
                      extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start ``lucidity control --bind BIND`` on `host`; `wait_for` tells when it answers."""
        self.control_address, self.control_host = bind, host
        return self._start("control", host, self.lucidity("control", "--bind", bind, *extra, secret_file=secret_file))

    def start_node(self, host: Host, control_address: Optional[str] = None, bind: Optional[str] = None,
                   processes: int = 2, name: Optional[str] = None, secret_file: Optional[Path] = None,
                   extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start ``lucidity node CONTROL --bind BIND --processes N --name NAME`` on `host`.

        Defaults: the control started here, a free port on the host's IPv4 address, the host's name.
        """
        control = control_address or self.control_address
        if control is None:
            raise ValueError("start_node needs a control address: start_control first, or pass one")
        name = name or host.name
        argv = self.lucidity("node", control, "--bind", bind or host.tcp(0), "--processes", str(processes),
                             "--name", name, *extra, secret_file=secret_file)
        return self._start(name, host, argv)

    def status(self, via: Optional[Host] = None, timeout: float = 1.0) -> dict[str, Any]:
        """``lucidity status --json`` run on `via` (default: the control's host), parsed.

        Raises:
            NetworkError: status failed (no answer, a bad secret); the text has its stderr.
        """
        host = via or self.control_host
        if host is None or self.control_address is None:
            raise ValueError("status needs a running control: start_control first")
        done = host.run(self.lucidity("status", "--json", "--timeout", f"{timeout:.2f}", self.control_address),
                        timeout=timeout * 10 + 10, env=self.env)
        if done.returncode != 0:
            raise NetworkError(f"`lucidity status` on {host.name} exited {done.returncode}: {done.stderr.strip()}")
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def wait_for(self, nodes: Union[int, Iterable[str]], workers_per_node: Optional[int] = None,
                 via: Optional[Host] = None, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until `lucidity status` on `via` lists exactly these nodes (a count, or names), each
        answering and, if given, with `workers_per_node` workers; return that report.

        Raises:
            TimeoutError: not within `timeout` seconds; the text has the last report and the daemons' logs.
            RuntimeError: a daemon started here exited meanwhile (its status and the logs are in the text).
        """
        names = None if isinstance(nodes, int) else sorted(nodes)
        count = nodes if isinstance(nodes, int) else len(names or [])
        deadline = time.monotonic() + timeout
        last: Union[dict[str, Any], str] = "none yet"
        while time.monotonic() < deadline:
            exited = {key: proc.returncode for key, proc in self.processes.items() if proc.poll() is not None}
            if exited:
                raise RuntimeError(f"daemons exited while waiting for nodes {nodes}: {exited}\n{self.describe_logs()}")
            try:
                report = self.status(via, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            except (NetworkError, subprocess.TimeoutExpired, ValueError) as exc:
                last = str(exc)
            else:
                last = report
                listed = report.get("nodes", [])
                good = [n for n in listed if "error" not in n
                        and (workers_per_node is None or len(n["workers"]) == workers_per_node)]
                if len(good) == count == len(listed) and (names is None or sorted(n["name"] for n in good) == names):
                    return report
            time.sleep(STATUS_INTERVAL)
        raise TimeoutError(f"cluster at {self.control_address} did not reach nodes {nodes} in {timeout:g} s; "
                           f"last status {last}\n{self.describe_logs()}")

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal daemon `key` ("control" or a node's name), wait for it and return its exit status; SIGKILL
        its process group if it outlives `timeout` (and raise TimeoutExpired)."""
        return stop_process(self.processes.pop(key), sig, timeout)

    def close(self) -> None:
        """Stop the nodes, then the control (SIGTERM each, bounded); the network's teardown kills the rest."""
        for key in sorted(self.processes, key=lambda k: k == "control"):
            with contextlib.suppress(Exception):
                self.stop(key)

    def describe_logs(self) -> str:
        """The last lines of every daemon's log, for assertion messages."""
        parts = []
        for key, path in self.logs.items():
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"--- {key} ({path}), last {LOG_TAIL_LINES} lines:\n" + "\n".join(lines[-LOG_TAIL_LINES:]))
        return "\n".join(parts)

    def _start(self, key: str, host: Host, argv: list[str]) -> subprocess.Popen[bytes]:
        if key in self.processes:
            raise ValueError(f"a daemon {key!r} is already running in this cluster")
        log = self.workdir / f"{key}.log"
        self.logs[key] = log
        with open(log, "ab") as out:
            proc: subprocess.Popen[bytes] = host.popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                        stderr=subprocess.STDOUT, env=self.env)
        self.processes[key] = proc
        return proc


class LineReader:
    """Reads a subprocess's text pipe on a thread, so that a test can wait for its next line with a deadline.

    A thread and a queue rather than select: a buffered text stream may hold several lines after one read,
    and select would not wake for the ones already buffered.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="line-reader", daemon=True)
        self._thread.start()

    def next(self, deadline: float) -> Optional[str]:
        """The next line without its newline, or None at end of file.

        Raises:
            TimeoutError: no line before `deadline` (a `time.monotonic()` value).
        """
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("no line from the subprocess before the deadline") from None
        if line is None:
            self.lines.put(None)  # end of file stays end of file
        return line

    def join(self, timeout: float) -> None:
        """Wait for end of file (the process exited and closed its end)."""
        self._thread.join(timeout)

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)
