"""Fixtures: real daemons on 127.0.0.1, and a check that every test reaps every process it started."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Iterator, Optional

import psutil
import pytest

from lucidity.node.cli import query_status
from testhosts import test_hosts, test_hosts_session  # noqa: F401  (fixtures: test hosts in network namespaces)

TESTS = os.path.dirname(os.path.abspath(__file__))
#: How long a test's leftover processes get to exit before they count as leaked, in seconds.
REAP_GRACE = 10.0


#: Every process a test session starts inherits this marker, so that orphans can be recognised as ours.
SESSION_MARKER = "LUCIDITY_TEST_SESSION"
os.environ.setdefault(SESSION_MARKER, uuid.uuid4().hex)  # once: workers that import this keep the session's


def _ours() -> dict[int, psutil.Process]:
    """Our descendants, and processes carrying this session's marker that lost their parent."""
    found = {p.pid: p for p in psutil.Process().children(recursive=True)}
    for proc in psutil.process_iter(["pid", "ppid"]):
        if proc.pid in found or proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(SESSION_MARKER) == os.environ[SESSION_MARKER]:
                found[proc.pid] = proc
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves behind any process it started; kill those first, so the next test is clean.

    Processes started by longer-lived fixtures (a module's cluster replacing a worker) are children of
    processes that existed before the test, and are not counted.
    """
    before = set(_ours())
    yield
    deadline = time.monotonic() + REAP_GRACE
    while True:
        leaked = {}
        for pid, proc in _ours().items():
            if pid in before or not _alive(proc):
                continue
            try:
                parent = proc.ppid()
            except psutil.Error:
                continue
            if parent not in before or parent == os.getpid():
                leaked[pid] = proc
        if not leaked or time.monotonic() > deadline:
            break
        psutil.wait_procs(list(leaked.values()), timeout=0.2)
    if leaked:
        descriptions = [f"{pid} {' '.join(p.cmdline()[:6]) if _alive(p) else '(exited)'}" for pid, p in leaked.items()]
        for proc in leaked.values():
            try:
                proc.kill()
            except psutil.Error:
                pass
        pytest.fail("processes left behind: " + "; ".join(descriptions))


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def free_port() -> int:
    """A free port outside the ephemeral range, so that no daemon's bind to port 0 can take it meanwhile."""
    low, high = (int(p) for p in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    rng = random.Random()
    while True:
        port = rng.randrange(10000, low) if low > 11000 else rng.randrange(high + 1, 65535)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class CliCluster:
    """A control node and node daemons started through the `lucidity` CLI, as an operator would."""

    def __init__(self) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
        self.env.pop("LUCIDITY_ADDRESS", None)

    def _start(self, key: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", *args], env=self.env,
                                start_new_session=True)
        self.processes[key] = proc
        return proc

    def start_control(self) -> subprocess.Popen[bytes]:
        return self._start("control", "control", "--bind", self.address)

    def start_node(self, name: str, processes: int = 2) -> subprocess.Popen[bytes]:
        return self._start(name, "node", self.address, "--processes", str(processes), "--name", name)

    def wait_for(self, nodes: int, workers_per_node: Optional[int] = None, timeout: float = 30.0) -> dict:
        """Wait until `lucidity status` shows `nodes` nodes with their workers ready."""
        deadline = time.monotonic() + timeout
        report: dict = {}
        while time.monotonic() < deadline:
            try:
                report = query_status(self.address, timeout=1.0)
            except Exception:
                time.sleep(0.05)
                continue
            good = [n for n in report["nodes"] if "error" not in n
                    and (workers_per_node is None or len(n["workers"]) == workers_per_node)]
            if len(good) == nodes and len(report["nodes"]) == nodes:
                return report
            time.sleep(0.05)
        raise TimeoutError(f"cluster did not reach {nodes} nodes in {timeout} s; last status {report}")

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        proc = self.processes.pop(key)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise

    def close(self) -> None:
        for key in [k for k in self.processes if k != "control"] + [k for k in self.processes if k == "control"]:
            try:
                self.stop(key)
            except Exception:
                pass


@pytest.fixture
def cli_cluster() -> Iterator[CliCluster]:
    """A real control node and two real node daemons of two workers each, on 127.0.0.1."""
    cluster = CliCluster()
    try:
        cluster.start_control()
        cluster.start_node("n1", 2)
        cluster.start_node("n2", 2)
        cluster.wait_for(2, workers_per_node=2)
        yield cluster
    finally:
        cluster.close()
