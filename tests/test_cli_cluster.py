"""A cluster started through the CLI, as an operator runs it: control, nodes, status, clean stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import lucidity
from lucidity.status import format_status, query_status

from helpers import CliCluster, free_port


def where(x: int) -> tuple[int, str, int]:
    return x * x, lucidity.current_node() or "", os.getpid()


def test_map_of_200_tasks_uses_both_nodes(cli_cluster: CliCluster) -> None:
    with lucidity.Pool(address=cli_cluster.address) as pool:
        results = pool.map(where, range(200), chunksize=1)
    assert [r[0] for r in results] == [x * x for x in range(200)]
    nodes = {r[1] for r in results}
    assert nodes == {"n1", "n2"}
    assert len({r[2] for r in results}) == 4  # every worker of both nodes took part


def span(x: float) -> tuple[float, float]:
    started = time.monotonic()  # CLOCK_MONOTONIC is shared by every process of the machine
    time.sleep(x)
    return started, time.monotonic()


@pytest.mark.parametrize("cap", [1, 3])
def test_processes_caps_tasks_running_at_once_on_a_running_cluster(cli_cluster: CliCluster, cap: int) -> None:
    with lucidity.Pool(cap, address=cli_cluster.address) as pool:
        spans = pool.map(span, [0.3] * (3 * cap), chunksize=1)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == cap


def test_address_from_environment(cli_cluster: CliCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDITY_ADDRESS", cli_cluster.address)
    with lucidity.Pool() as pool:
        assert pool.apply(where, (3,))[1] in {"n1", "n2"}


def test_status_lists_nodes_workers_and_task_counts(cli_cluster: CliCluster) -> None:
    with lucidity.Pool(address=cli_cluster.address) as pool:
        pool.map(where, range(20), chunksize=1)
    report = query_status(cli_cluster.address)
    assert sorted(n["name"] for n in report["nodes"]) == ["n1", "n2"]
    assert sum(n["tasks_done"] for n in report["nodes"]) == 20
    for node in report["nodes"]:
        assert len(node["workers"]) == 2
        for worker in node["workers"]:
            assert psutil.pid_exists(worker["pid"]) and worker["rss"] > 0
    printed = subprocess.run([sys.executable, "-m", "lucidity", "status", cli_cluster.address],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert printed == format_status(query_status(cli_cluster.address)) + "\n" or "node n1" in printed
    as_json = subprocess.run([sys.executable, "-m", "lucidity", "status", "--json", cli_cluster.address],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert {n["name"] for n in json.loads(as_json)["nodes"]} == {"n1", "n2"}


def test_status_of_an_absent_cluster_fails_clearly() -> None:
    done = subprocess.run([sys.executable, "-m", "lucidity", "status", "--timeout", "0.5",
                           f"tcp://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "no answer" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_node_stops_cleanly_and_takes_its_workers(cli_cluster: CliCluster, sig: int) -> None:
    worker_pids = [w["pid"] for n in query_status(cli_cluster.address)["nodes"] if n["name"] == "n1"
                   for w in n["workers"]]
    assert cli_cluster.stop("n1", sig) == 0
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in worker_pids if psutil.pid_exists(p)], timeout=5)
    assert not alive
    report = cli_cluster.wait_for(1)
    assert [n["name"] for n in report["nodes"]] == ["n2"]  # it left; the control node knows at once


def test_replaced_worker_and_the_pool_keeps_serving(cli_cluster: CliCluster) -> None:
    with lucidity.Pool(address=cli_cluster.address) as pool:
        victim = pool.apply(where, (1,))[2]
        os.kill(victim, signal.SIGKILL)
        cli_cluster.wait_for(2, workers_per_node=2)
        assert pool.map(abs, range(-50, 0), chunksize=1) == list(range(50, 0, -1))
    pids = {w["pid"] for n in query_status(cli_cluster.address)["nodes"] for w in n["workers"]}
    assert victim not in pids and len(pids) == 4


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "lucidity", "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == f"lucidity {lucidity.__version__}"


def test_control_on_a_port_in_use_exits_with_an_error(cli_cluster: CliCluster) -> None:
    second = CliCluster()
    second.address = cli_cluster.address
    proc = second.start_control()
    assert proc.wait(30) == 2
    node_port = query_status(cli_cluster.address)["nodes"][0]["address"]
    taken = second.start_node("taken", 1, "--bind", node_port)
    assert taken.wait(30) == 2
