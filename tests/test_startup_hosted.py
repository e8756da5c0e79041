"""Start-up (issue 13, item 3): the embedded cluster that ``Pool()`` starts is one node daemon that is its
control node too (`lucidity.node.control.HostedControl`), one interpreter fewer than a control daemon and a
node daemon.

Structural facts, not timings (those are in benchmarks/, ``--only startup``): which processes run, that the
membership they serve is the one a separate control node serves (status, a second client, heartbeats past
the node timeout, a cluster secret), and what the hidden options refuse. The caller killed with SIGKILL
(tests/test_embedding.py) and the node daemon killed (tests/test_stale_dirs.py) are tested there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

import lucidity
from lucidity.node.control import NODE_TIMEOUT
from lucidity.status import query_status

from helpers import WAIT, stop_process, wait_until
from test_startup_imports import daemon_code, imported_after

#: A few heartbeats (one a second) past the control node's timeout for a silent node, in seconds.
PAST_NODE_TIMEOUT = NODE_TIMEOUT + 2.5
#: Seconds between two status queries while a node must stay listed.
STATUS_INTERVAL = 0.5
SECRET = "a cluster secret for the hosted control node"


def square(x: int) -> int:
    return x * x


@pytest.fixture
def hosted() -> Iterator[lucidity.LocalCluster]:
    with lucidity.LocalCluster(processes=2, hosted_control=True) as cluster:
        yield cluster


def test_a_pool_starts_one_daemon_that_is_also_its_control_node() -> None:
    me = psutil.Process()
    with lucidity.Pool(2) as pool:
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
        [daemon] = me.children()  # no control daemon beside it
        command = daemon.cmdline()
        assert command[1:3] == ["-m", "lucidity"] and "node" in command and "--serve-control" in command
        runtime = command[command.index("--runtime-dir") + 1]
        assert command[command.index("node") + 1] == f"ipc://{runtime}/control"
        wait_until(lambda: len(daemon.children()) == 3, WAIT, "the node's template and two workers")
        # The node keeps its slots and its workers' sockets in the cluster's directory, not in one of its own.
        assert {"control", "node-1", "slots"} <= set(os.listdir(runtime))
    assert not os.path.exists(runtime)


def test_the_hosted_control_node_lists_its_node_with_its_workers(hosted: lucidity.LocalCluster) -> None:
    [daemon] = hosted.pids
    report = wait_until(lambda: _listed(hosted.address), WAIT, "the node listed with its two workers")
    assert (report["role"], report["address"]) == ("control", hosted.address)
    [node] = report["nodes"]
    assert node["address"] == hosted.address.replace("/control", "/node-1")
    workers = {worker["pid"] for worker in node["workers"]}
    assert workers == {child.pid for child in psutil.Process(daemon).children() if child.pid == os.getpgid(child.pid)}
    with lucidity.Pool(address=hosted.address) as pool:  # a second client, which watches the membership
        assert pool.map(square, range(6), chunksize=1) == [x * x for x in range(6)]


def test_lucidity_status_reads_the_hosted_control_node(hosted: lucidity.LocalCluster) -> None:
    wait_until(lambda: _listed(hosted.address), WAIT, "the node listed with its two workers")
    shown = subprocess.run([sys.executable, "-m", "lucidity", "status", hosted.address, "--json"],
                           capture_output=True, text=True, timeout=WAIT)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert [node["name"] for node in report["nodes"]] == ["local"]


def test_the_node_stays_listed_past_the_node_timeout(hosted: lucidity.LocalCluster) -> None:
    """Its heartbeats (BEAT, then WELCOME) go through its own control socket: were they not answered, or the
    membership not given its turns, the node would be dropped after `NODE_TIMEOUT` of silence."""
    wait_until(lambda: _listed(hosted.address), WAIT, "the node listed with its two workers")
    until = time.monotonic() + PAST_NODE_TIMEOUT
    samples = 0
    while time.monotonic() < until:
        assert _listed(hosted.address), f"the node was no longer listed after {samples} samples"
        samples += 1
        time.sleep(STATUS_INTERVAL)  # sampling a state that must hold throughout, not waiting for an event
    with lucidity.Pool(address=hosted.address) as pool:
        assert pool.apply(square, (7,)) == 49


def test_a_hosted_control_node_takes_a_cluster_secret() -> None:
    with lucidity.Pool(1, secret=SECRET) as pool:
        assert pool.apply(square, (3,)) == 9


def test_only_a_cluster_of_one_node_can_host_its_control_node() -> None:
    with pytest.raises(ValueError, match="one node"):
        lucidity.LocalCluster(nodes=2, processes=1, hosted_control=True)


def test_the_node_command_refuses_a_runtime_dir_that_does_not_hold_the_control_socket(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", "node",
                             f"ipc://{tmp_path}/control", "--bind", f"ipc://{tmp_path}/node-1", "--processes", "1",
                             "--serve-control", "--runtime-dir", str(elsewhere)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 2 and "is not the directory of the ipc:// address" in stderr, stderr
    assert elsewhere.is_dir()


def test_a_node_that_cannot_bind_the_control_address_exits_2(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", "node",
                             f"ipc://{tmp_path}/missing/control", "--bind", f"ipc://{tmp_path}/node-1",
                             "--processes", "1", "--serve-control"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 2 and "cannot bind the control address" in stderr, stderr


def test_the_hosted_node_daemon_imports_no_shutil_or_uuid_to_start() -> None:
    # argparse reads the terminal's width through shutil (with bz2 and lzma) unless lucidity.cli's formatter
    # does; the daemons removed their directories and made their instance ids with shutil and uuid.
    argv = ["--log-level", "WARNING", "node", "ipc:///nowhere/control", "--bind", "ipc:///nowhere/node-1",
            "--processes", "2", "--name", "local", "--no-forward-output", "--serve-control", "--runtime-dir",
            "/nowhere"]
    modules = imported_after(daemon_code(argv, "lucidity.node.daemon"))
    assert "lucidity.node.control" in modules
    assert not modules & {"shutil", "uuid", "tempfile"}, sorted(modules & {"shutil", "uuid", "tempfile"})


def _listed(address: str) -> dict | None:
    """The status report, if it lists node "local" with two ready workers."""
    report = query_status(address, 5.0)
    nodes = [n for n in report["nodes"] if "error" not in n and len(n.get("workers", ())) == 2]
    return report if [n["name"] for n in nodes] == ["local"] else None
