"""Failover: lost and hung nodes, control restarts, clients that vanish, bounded memory under a flood.

Nothing here sleeps hoping that the cluster got somewhere: each step waits, with a deadline, for what the
nodes report (`lucidity status` asks every node directly) before it kills or stops anything.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import lucidity

from helpers import WAIT, CliCluster, wait_until
from tasks import identity

NODE_TIMEOUT = 2.0
#: The nodes' client timeout: how long a client may be silent before a node drops its work, in seconds.
CLIENT_TIMEOUT = 3.0


def slow_square(x):
    time.sleep(0.2)
    return x * x, lucidity.current_node()


def write_marker_later(path, delay):
    time.sleep(delay)
    with open(path, "w") as marker:
        marker.write("ran")
    return path


@pytest.fixture
def fast_cluster(monkeypatch):
    """Two nodes of two workers whose losses are noticed within about two seconds."""
    monkeypatch.setenv("LUCIDITY_NODE_TIMEOUT", str(NODE_TIMEOUT))
    with CliCluster() as cluster:
        cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
        for name in ("n1", "n2"):
            cluster.start_node(name, 2, "--heartbeat-interval", "0.5", "--client-timeout", str(CLIENT_TIMEOUT))
        cluster.wait_for(2, workers_per_node=2)
        yield cluster


def warm_up(pool):
    """Run a task on every worker first, so that importing this module does not count as work time."""
    pool.map(slow_square, range(8), chunksize=1)


def node_pids(cluster, name):
    return [w["pid"] for w in cluster.node(name)["workers"]]


def running(cluster):
    """Tasks running now on each node, by name."""
    return {n["name"]: n.get("running", 0) for n in cluster.status()["nodes"]}


def test_sigkill_of_a_node_mid_map_loses_no_result(fast_cluster):
    with lucidity.Pool(address=fast_cluster.address) as pool:
        warm_up(pool)
        done_before = fast_cluster.node("n1")["tasks_done"]
        started = time.monotonic()
        result = pool.map_async(slow_square, range(40), chunksize=1)

        def n1_has_finished_some_and_runs_more():
            n1 = fast_cluster.node("n1")
            return n1["tasks_done"] >= done_before + 2 and n1["running"] > 0

        wait_until(n1_has_finished_some_and_runs_more, WAIT, "n1 to finish two tasks of the map and run more")
        fast_cluster.processes["n1"].kill()
        values = result.get(timeout=60)
        elapsed = time.monotonic() - started
    assert [v for v, _ in values] == [x * x for x in range(40)]
    assert {node for _, node in values} == {"n1", "n2"}
    # 40 tasks of 0.2 s on 4 workers is 2 s; the loss costs the timeout and the rest on 2 workers.
    assert elapsed < NODE_TIMEOUT + 40 * 0.2 / 2 + 5


def test_a_hung_node_is_declared_lost_and_its_late_results_are_ignored(fast_cluster):
    workers = node_pids(fast_cluster, "n1")
    daemon = fast_cluster.processes["n1"]
    delivered = collections.Counter()
    lock = threading.Lock()

    def count(value):
        with lock:
            delivered[value[0]] += 1

    with lucidity.Pool(address=fast_cluster.address) as pool:
        warm_up(pool)
        results = [pool.apply_async(slow_square, (x,), callback=count) for x in range(40)]
        wait_until(lambda: running(fast_cluster)["n1"] == 2, WAIT, "both workers of n1 running a task")
        stopped = [daemon.pid, *workers]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            values = [r.get(timeout=60)[0] for r in results]
        finally:
            for pid in reversed(stopped):  # workers first, then their daemon
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        assert values == [x * x for x in range(40)]
        # The resumed node finishes what it had and rejoins; its results must not be delivered again.
        fast_cluster.wait_for(2, workers_per_node=2)
        assert pool.map(identity, range(20), chunksize=1) == list(range(20))
    assert all(count == 1 for count in delivered.values()) and len(delivered) == 40


def test_control_restart_mid_run_completes_and_status_recovers(fast_cluster):
    with lucidity.Pool(address=fast_cluster.address) as pool:
        result = pool.map_async(slow_square, range(40), chunksize=1)
        wait_until(lambda: sum(running(fast_cluster).values()) > 0, WAIT, "the map running on the nodes")
        fast_cluster.stop("control", signal.SIGKILL)
        restarted = time.monotonic()
        fast_cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
        assert [v for v, _ in result.get(timeout=60)] == [x * x for x in range(40)]
        fast_cluster.wait_for(2, workers_per_node=2, timeout=5)
        assert time.monotonic() - restarted < 5 + 2
        assert pool.map(identity, range(10)) == list(range(10))


CLIENT = textwrap.dedent("""
    import sys, lucidity, test_failover
    with lucidity.Pool(address=sys.argv[1]) as pool:
        results = [pool.apply_async(test_failover.write_marker_later, (f"{sys.argv[2]}/{i}", 5.0)) for i in range(12)]
        print("submitted", flush=True)
        sys.stdin.read()
""")


def test_a_vanished_client_has_its_work_dropped_and_stopped(fast_cluster, tmp_path):
    env = dict(fast_cluster.env)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, fast_cluster.address, str(tmp_path)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert client.stdout.readline().strip() == b"submitted"
        wait_until(lambda: sum(running(fast_cluster).values()) == 4, WAIT, "the client's tasks on all four workers")
        busy = {w["pid"] for n in fast_cluster.status()["nodes"] for w in n["workers"] if w["state"] == "busy"}
        client.kill()
        client.wait(10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)

    # The nodes notice within their client timeout, kill the running tasks (which would write their markers
    # 5 s after they started) and drop the queued ones: no node knows the client any more, nothing runs, and
    # every worker that ran one of its tasks is gone. From then on, nothing can write a marker.
    def client_forgotten():
        nodes = fast_cluster.status()["nodes"]
        workers = {w["pid"] for n in nodes for w in n["workers"]}
        return all(n["clients"] == 0 and n["running"] == 0 for n in nodes) and not busy & workers

    wait_until(client_forgotten, CLIENT_TIMEOUT + WAIT, "the nodes to drop the vanished client and its tasks")
    assert list(tmp_path.iterdir()) == []
    fast_cluster.wait_for(2, workers_per_node=2)


def test_when_every_node_is_lost_waiting_work_fails_within_the_bound(fast_cluster, monkeypatch):
    monkeypatch.setenv("LUCIDITY_WAIT_FOR_NODES", "3")
    with lucidity.Pool(address=fast_cluster.address) as pool:
        assert pool.apply(identity, (1,)) == 1
        fast_cluster.stop("n1", signal.SIGKILL)
        fast_cluster.stop("n2", signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(lucidity.NodeLost):
            pool.map(slow_square, range(8), chunksize=1)
        assert time.monotonic() - started < NODE_TIMEOUT + 3 + 5


def test_a_node_that_joins_late_gets_the_waiting_work(fast_cluster):
    with lucidity.Pool(address=fast_cluster.address) as pool:
        fast_cluster.stop("n1", signal.SIGKILL)
        fast_cluster.stop("n2", signal.SIGKILL)
        result = pool.map_async(slow_square, range(6), chunksize=1)
        fast_cluster.start_node("n3", 2)
        assert {node for _, node in result.get(timeout=60)} == {"n3"}


@pytest.mark.timeout(600)
def test_a_million_items_through_imap_unordered_in_bounded_memory():
    """One task per item, read lazily from a generator: the client stays small and the daemons flat."""
    me = psutil.Process()
    peak = 0
    daemon_samples = []
    with lucidity.Pool(2) as pool:
        daemons = [p for p in me.children() if "node" in p.cmdline() or "control" in p.cmdline()]
        assert len(daemons) == 1  # the node daemon, the control node too
        total = 0
        for index, value in enumerate(pool.imap_unordered(identity, (i for i in range(1_000_000)))):
            total += value
            if index % 50_000 == 0:
                peak = max(peak, me.memory_info().rss)
                daemon_samples.append(sum(d.memory_info().rss for d in daemons))
    assert total == sum(range(1_000_000))
    assert peak < 300 * 2**20, f"client RSS peaked at {peak / 2**20:.0f} MiB"
    settled = daemon_samples[2:]  # after start-up
    assert max(settled) < 1.2 * min(settled), f"daemon RSS grew: {[s // 2**20 for s in settled]} MiB"
