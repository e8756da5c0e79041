"""A flood of connections (no secret needed to open one) cannot stop a node daemon or its worker starts
(issue 11): the daemon raises its open-file limit to the hard limit, and a worker start that finds no
descriptor is tried again, with back-off, instead of ending the daemon.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

from lucidity.status import query_status

from conftest import CliCluster

CONNECTIONS = 1100


def limited(soft: int, hard: int):  # type: ignore[no-untyped-def]
    def preexec() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


@pytest.fixture
def enough_descriptors_here() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CONNECTIONS + 200:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_node(cluster: CliCluster, soft: int, hard: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", "node", cluster.address,
                             "--processes", "1", "--name", "n"], env=cluster.env, preexec_fn=limited(soft, hard))
    cluster.processes["n"] = proc
    return proc


def flood(address: str) -> list[socket.socket]:
    host, port = address[len("tcp://"):].rsplit(":", 1)
    held = []
    for _ in range(CONNECTIONS):
        sock = socket.socket()
        sock.settimeout(0.2)
        try:
            sock.connect((host, int(port)))
        except OSError:
            sock.close()  # the backlog is full: the daemon has stopped accepting
            continue
        held.append(sock)
    return held


def the_worker(cluster: CliCluster) -> dict:
    return query_status(cluster.address, timeout=2.0)["nodes"][0]["workers"][0]


def wait_for_new_worker(cluster: CliCluster, old: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            worker = the_worker(cluster)
        except Exception:
            worker = {}
        if worker.get("pid") not in (None, old) and worker.get("state") == "ready":
            return worker
        time.sleep(0.1)
    raise AssertionError(f"no new worker within {timeout} s")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hard", [8192, 1024], ids=["raised", "at-hard-limit"])
def test_a_flood_of_connections_does_not_stop_worker_restarts(enough_descriptors_here: None, hard: int) -> None:
    cluster = CliCluster()
    held: list[socket.socket] = []
    try:
        cluster.start_control()
        node = start_node(cluster, 1024, hard)
        cluster.wait_for(1, 1)
        report = query_status(cluster.address)["nodes"][0]
        worker = report["workers"][0]
        held = flood(report["address"])
        os.kill(worker["pid"], signal.SIGKILL)
        if hard > CONNECTIONS + 100:
            # Its soft limit raised to the hard one, the daemon holds every connection and still starts workers.
            assert len(held) >= CONNECTIONS - 10, len(held)
            wait_for_new_worker(cluster, worker["pid"], 30)
        else:
            time.sleep(3)  # the daemon meets EMFILE for a while: it must live through it
            assert node.poll() is None, "the node daemon died while its descriptors were used up"
        for sock in held:
            sock.close()
        held = []
        wait_for_new_worker(cluster, worker["pid"], 30)
        assert node.poll() is None
    finally:
        for sock in held:
            sock.close()
        cluster.close()
