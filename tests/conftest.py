"""Fixtures: real daemons on 127.0.0.1, a rendezvous for held tasks, and a check that every test reaps every
process it started. The classes behind the fixtures are in helpers.py (CliCluster, free_port and Rendezvous
stay importable from here too).

Tests under tests/unit form the fast tier (`pytest tests/unit`, or `-m unit`): no process, no socket. They
are marked `unit` here and each has a short timeout; the leak check applies to them as to every test.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Iterator

import psutil
import pytest

from helpers import TESTS, CliCluster, Rendezvous, free_port  # noqa: F401  (importable from here, as before)
from testhosts import test_hosts, test_hosts_session  # noqa: F401  (fixtures: test hosts in network namespaces)

#: How long a test's leftover processes get to exit before they count as leaked, in seconds.
REAP_GRACE = 10.0
#: The fast tier: its directory, and the most one of its tests may take, in seconds.
UNIT_TESTS = os.path.join(TESTS, "unit")
UNIT_TIMEOUT = 5.0


#: Every process a test session starts inherits this marker, so that orphans can be recognised as ours.
SESSION_MARKER = "LUCIDITY_TEST_SESSION"
os.environ.setdefault(SESSION_MARKER, uuid.uuid4().hex)  # once: workers that import this keep the session's


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: the fast tier under tests/unit (no process, no socket)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(UNIT_TESTS + os.sep):
            item.add_marker(pytest.mark.unit)
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))


#: One process as the leak check sees it: its parent's pid, and when it started (clock ticks since boot).
Seen = tuple[int, int]


def _processes() -> dict[int, Seen]:
    """Every process on the machine that is not a zombie, read from /proc directly.

    The leak check looks twice per test, and psutil objects for every process cost ten times as much:
    the fast tier runs hundreds of tests in a few seconds, on a machine where other suites run too.
    """
    found: dict[int, Seen] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(b")") + 2:].split()  # after "pid (command) ": state, ppid, ... starttime
        if fields[0] != b"Z":
            found[int(name)] = (int(fields[1]), int(fields[19]))
    return found


def _carries_marker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            variables = environ.read().split(b"\0")
    except OSError:
        return False
    return f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}".encode() in variables


def _leaked(before: dict[int, Seen]) -> list[int]:
    """Processes a test left behind: started during it, ours (our descendants, or orphans carrying this
    session's marker), and not started by a process of ours that existed before the test (a module's
    cluster replacing a worker), unless that process is this one."""
    now = _processes()
    me = os.getpid()
    ours: dict[int, bool] = {me: True}

    def is_ours(pid: int) -> bool:
        if pid not in ours:
            parent = now[pid][0] if pid in now else 0
            ours[pid] = _carries_marker(pid) or (parent > 1 and is_ours(parent))
        return ours[pid]

    def is_new(pid: int) -> bool:
        return pid in now and before.get(pid) != now[pid]

    leaked = []
    for pid, (parent, _) in now.items():
        if pid != me and is_new(pid) and is_ours(pid):
            if parent == me or parent not in now or is_new(parent) or not is_ours(parent):
                leaked.append(pid)
    return leaked


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves behind any process it started; kill those first, so the next test is clean.

    Processes started by longer-lived fixtures (a module's cluster replacing a worker) are children of
    processes that existed before the test, and are not counted.
    """
    before = _processes()
    yield
    deadline = time.monotonic() + REAP_GRACE
    leaked = _leaked(before)
    while leaked and time.monotonic() < deadline:
        psutil.wait_procs(_handles(leaked), timeout=0.2)
        leaked = _leaked(before)
    if leaked:
        descriptions = []
        for pid in leaked:
            try:
                proc = psutil.Process(pid)
                descriptions.append(f"{pid} {' '.join(proc.cmdline()[:6])}")
                proc.kill()
            except psutil.Error:
                descriptions.append(f"{pid} (exited)")
        pytest.fail("processes left behind: " + "; ".join(descriptions))


def _handles(pids: list[int]) -> list[psutil.Process]:
    handles = []
    for pid in pids:
        try:
            handles.append(psutil.Process(pid))
        except psutil.Error:  # gone meanwhile
            pass
    return handles


@pytest.fixture
def cli_cluster() -> Iterator[CliCluster]:
    """A real control node and two real node daemons of two workers each, on 127.0.0.1."""
    with CliCluster() as cluster:
        cluster.start_control()
        cluster.start_node("n1", 2)
        cluster.start_node("n2", 2)
        cluster.wait_for(2, workers_per_node=2)
        yield cluster


@pytest.fixture
def rendezvous() -> Iterator[Rendezvous]:
    """Where `helpers.hold` tasks report that they run and wait to be released; closed, releasing all, at the end."""
    with Rendezvous() as point:
        yield point
