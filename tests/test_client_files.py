"""What a client costs in open files as the cluster grows (issue 13, item 3): one per node daemon and one per
worker, whatever the shape of the cluster, because one socket reaches them all (a socket per peer would add
ZeroMQ's mailbox to every connection, and 256 single-worker nodes would not fit under the usual 1,024).

Checked against a real cluster from the CLI, counting the caller's own descriptors in /proc/self/fd before
the pool and once every worker has run a task.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import lucidity

from helpers import CliCluster, wait_until

NODES = 4
WORKERS_PER_NODE = 4
#: The client's fixed cost: the control node's socket and connection, the one socket's mailbox, its monitor,
#: the waker's pipe, ZeroMQ's context (its I/O thread's poller and mailbox, the reaper's).
FIXED = 16


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def pid_of_worker(_: Any) -> int:
    return os.getpid()


@pytest.mark.timeout(120)
def test_a_client_costs_one_open_file_per_node_and_per_worker() -> None:
    with CliCluster() as cluster:
        cluster.start_control()
        for index in range(NODES):
            cluster.start_node(f"n{index}", WORKERS_PER_NODE)
        cluster.wait_for(NODES, WORKERS_PER_NODE)
        before = open_files()
        with lucidity.Pool(address=cluster.address) as pool:
            workers = NODES * WORKERS_PER_NODE
            seen: set[int] = set()

            def every_worker_ran_one() -> bool:
                seen.update(pool.map(pid_of_worker, range(4 * workers), chunksize=1))
                return len(seen) == workers

            wait_until(every_worker_ran_one, 60, f"all {workers} workers running tasks")
            added = open_files() - before
        peers = NODES + workers
        assert added <= peers + FIXED, f"{added} files for {peers} peers (nodes and workers)"
        assert added >= peers, "each peer has its connection"
        assert open_files() <= before + 2, "the pool's files are closed with it"
