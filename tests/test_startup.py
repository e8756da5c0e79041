"""Start-up (issue 13, item 3): workers are forked from a pre-imported template, and are still fresh processes.

Structural facts, not timings (those are in benchmarks/, ``--only startup``): who is whose parent, what a
worker holds and what it does not, that the template holds no ZeroMQ state, and that a node without its
template starts fresh interpreters and keeps serving.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from pathlib import Path
from typing import Iterator

import psutil
import pytest

import lucidity
from lucidity.node.template import WORKER_START_VARIABLE

from helpers import wait_until

#: Bound on every wait, in seconds.
WAIT = 30.0


def _roles(cluster: lucidity.LocalCluster) -> tuple[psutil.Process, psutil.Process, list[psutil.Process]]:
    """The node daemon, its template and its workers (found by parentage, not by command line)."""
    [node] = [psutil.Process(pid) for pid in cluster.pids if "node" in psutil.Process(pid).cmdline()]

    def settled() -> bool:
        return len(node.children()) == cluster.processes + 1

    wait_until(settled, WAIT, "the node's workers and template")
    workers = [child for child in node.children() if child.pid == os.getpgid(child.pid)]
    [template] = [child for child in node.children() if child not in workers]
    return node, template, workers


def _socket_inodes(process: psutil.Process) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{process.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{process.pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:", "anon_inode:")):
            inodes.add(target)
    return inodes


def _eventfds(process: psutil.Process) -> int:
    return sum(1 for inode in _socket_inodes(process) if inode == "anon_inode:[eventfd]")


@pytest.fixture
def cluster() -> Iterator[lucidity.LocalCluster]:
    with lucidity.LocalCluster(processes=2) as local:
        yield local


def test_workers_are_the_nodes_children_in_their_own_sessions(cluster: lucidity.LocalCluster) -> None:
    node, template, workers = _roles(cluster)
    assert len(workers) == 2
    for worker in workers:
        assert worker.ppid() == node.pid  # reparented to the daemon, which reaps it and reads its status
        assert os.getsid(worker.pid) == worker.pid  # a session and a process group of its own
        assert "lucidity.node.worker" in worker.cmdline() and "node" not in worker.cmdline()
        assert "" not in worker.cmdline()  # the old line's rest is not shown as empty arguments
        assert os.readlink(f"/proc/{worker.pid}/fd/0") == os.devnull
    assert template.ppid() == node.pid and os.getsid(template.pid) == os.getsid(node.pid)
    assert template.cmdline()[1:] == ["-m", "lucidity.node.template", "--of-node", "local"]


def test_the_template_holds_no_zeromq_state_and_the_worker_nothing_of_the_templates(
        cluster: lucidity.LocalCluster) -> None:
    node, template, workers = _roles(cluster)
    assert template.num_threads() == 1  # ZeroMQ's I/O threads would show here
    assert _eventfds(template) == 0  # as would a context's mailbox
    assert _eventfds(node) > 0 and all(_eventfds(worker) > 0 for worker in workers)  # each made its own
    held_by_template = _socket_inodes(template)
    for worker in workers:
        assert not held_by_template & _socket_inodes(worker), "a descriptor of the template crossed into a worker"


def test_a_task_sees_a_fresh_process(cluster: lucidity.LocalCluster) -> None:
    with lucidity.Pool(address=cluster.address) as pool:
        # The daemon logs through a root handler; a fresh interpreter has none, and neither has a worker.
        assert pool.apply(_root_handlers) == 0
        environment = pool.apply(_environment, ("LUCIDITY_NODE", "MALLOC_ARENA_MAX", "LUCIDITY_ADDRESS"))
        assert environment == ["local", "2", cluster.address]
        assert pool.apply(_interrupts_as_fresh) is True  # the template ignores SIGINT; a worker must not


def test_a_worker_has_the_open_file_limit_its_daemon_raised() -> None:
    """The daemon raises its soft limit to the hard one (`processes.raise_open_file_limit`), and its workers
    inherited that from it; a template forked before the raise would hand its workers the lower one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard // 2), hard))  # what the daemons inherit
    try:
        with lucidity.LocalCluster(processes=1) as local:
            with lucidity.Pool(address=local.address) as pool:
                assert pool.apply(_open_file_limits) == [hard, hard]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_retiring_worker_exits_as_an_interpreter_does(tmp_path: Path) -> None:
    """Its non-daemon threads are joined and its atexit handlers run (a task's, not the daemon's)."""
    marker = tmp_path / "atexit.txt"
    with lucidity.Pool(1, maxtasksperchild=1) as pool:
        first = pool.apply(_leave_work_for_exit, (str(marker),))
        wait_until(marker.exists, WAIT, "the retired worker's atexit handler")
        assert marker.read_text() == f"{first} thread joined"
        assert pool.apply(os.getpid) != first


def test_a_node_whose_template_died_starts_fresh_workers_and_serves(cluster: lucidity.LocalCluster) -> None:
    node, template, workers = _roles(cluster)
    template.kill()
    workers[0].kill()  # its replacement is asked of the dead template; the node reaps it and starts one fresh

    def replaced() -> bool:
        try:
            children = [child for child in node.children() if child.status() != psutil.STATUS_ZOMBIE]
            # Each in its own session: a replacement caught between Popen's fork and its setsid is not, yet.
            return (len(children) == 2 and {template, workers[0]}.isdisjoint(children)
                    and all(child.pid == os.getpgid(child.pid) for child in children))
        except (psutil.NoSuchProcess, ProcessLookupError):  # a child reaped while we looked: look again
            return False

    wait_until(replaced, WAIT, "a replacement worker in its own session, and no template")
    with lucidity.Pool(address=cluster.address) as pool:
        assert sorted(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_exec_start_has_no_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_START_VARIABLE, "exec")
    with lucidity.LocalCluster(processes=2) as local:
        [node] = [psutil.Process(pid) for pid in local.pids if "node" in psutil.Process(pid).cmdline()]
        wait_until(lambda: len(node.children()) == 2, WAIT, "two workers")
        assert all(child.cmdline()[1:3] == ["-m", "lucidity.node.worker"] and child.pid == os.getpgid(child.pid)
                   for child in node.children())
        with lucidity.Pool(address=local.address) as pool:
            assert pool.apply(abs, (-4,)) == 4


def _leave_work_for_exit(path: str) -> int:
    import atexit
    import threading
    import time

    joined = []

    def late() -> None:
        time.sleep(0.2)  # still running when the worker retires: exit must join it before atexit runs
        joined.append("thread joined")

    thread = threading.Thread(target=late)
    atexit.register(lambda: Path(path).write_text(f"{os.getpid()} {' '.join(joined)}"))
    thread.start()
    return os.getpid()


def _root_handlers() -> int:
    return len(logging.getLogger().handlers)


def _environment(*names: str) -> list[str]:
    return [os.environ.get(name, "") for name in names]


def _open_file_limits() -> list[int]:
    return list(resource.getrlimit(resource.RLIMIT_NOFILE))


def _interrupts_as_fresh() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler
