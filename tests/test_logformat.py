"""`--log-format json` on both daemons: every line of their logs is one JSON object (docs/monitoring.md).

A CLI cluster logs at INFO in JSON to files while it lives through a node joining, a task writing to its
worker's stderr, a worker that exits under a task, and a task the watchdog kills over its memory cap. Every
line of both logs must parse, carry the common fields, and the lines about a worker or a task must name
the worker's pid, the task and the client.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import lucidity
from helpers import WAIT, CliCluster, Rendezvous, hold, wait_until

COMMON = {"time", "level", "daemon", "pid", "logger", "message"}
CLIENT_ID = re.compile(r"^[0-9a-f]{32}$")


def write_then_hold(address: tuple[str, int], text: str) -> str:
    """Write a line to stderr, then stay running until the test has seen the line in the node's log: the
    line names the task its worker runs when the daemon reads it, so the task must still be running."""
    print(text, file=sys.stderr, flush=True)
    return hold(address, text)


def take_shared(size: int = 400_000_000) -> str:
    """MAP_SHARED memory, which RLIMIT_DATA does not count: only the watchdog stops it."""
    region = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    for offset in range(0, size, mmap.PAGESIZE):
        region[offset] = 1
    return "survived"


def read_log(path: Path) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
        assert isinstance(entry, dict) and COMMON <= set(entry), f"{path.name}:{number} lacks {COMMON - set(entry)}"
        entries.append(entry)
    return entries


def one(entries: list[dict[str, Any]], pattern: str, **fields: Any) -> dict[str, Any]:
    found = [e for e in entries if re.search(pattern, e["message"]) and all(e.get(k) == v for k, v in fields.items())]
    assert found, f"no line matching {pattern!r} with {fields} in {[e['message'] for e in entries]}"
    return found[0]


@pytest.mark.timeout(90)
def test_both_daemons_log_one_json_object_per_line_with_worker_task_and_client(tmp_path: Path) -> None:
    with CliCluster() as cluster:
        cluster.log_dir = str(tmp_path)
        json_logs = ("--log-level", "INFO", "--log-format", "json")
        cluster.start_control(*json_logs)
        cluster.start_node("n1", 1, *json_logs, "--memory-limit", "200MB")
        cluster.wait_for(1, 1)
        with lucidity.Pool(address=cluster.address) as pool, Rendezvous() as rendezvous:
            result = pool.apply_async(write_then_hold, (rendezvous.address, "a line from a task"))
            rendezvous.started(1)
            wait_until(lambda: "a line from a task" in (tmp_path / "n1.log").read_text(), WAIT, "the task's line")
            rendezvous.release()
            assert result.get(WAIT) == "a line from a task"
            with pytest.raises(lucidity.WorkerCrashed):
                pool.apply(os._exit, (3,))
            with pytest.raises(lucidity.MemoryLimitExceeded):
                pool.apply(take_shared)
    # Closed: both daemons exited, so their logs are whole.
    control = read_log(tmp_path / "control.log")
    node = read_log(tmp_path / "n1.log")
    assert {e["daemon"] for e in control} == {"control"} and {e["daemon"] for e in node} == {"node"}
    assert {e.get("node") for e in node} == {"n1"}, "every node line names its node"
    one(control, r"^node n1 joined from tcp://127\.0\.0\.1:\d+ with 1 workers$", level="INFO")
    one(node, r"^node n1 listening at", level="INFO", logger="lucidity.node.daemon")
    printed = one(node, r"^a line from a task$", logger="lucidity.worker", level="WARNING")
    crashed = one(node, r"exited with code 3 while running task", level="WARNING")
    killed = one(node, r"^node n1 killed worker \d+ running task \d+: memory", level="WARNING")
    reported = one(node, r"went over its memory cap", level="WARNING")
    for entry in (printed, crashed, killed, reported):
        assert isinstance(entry["worker_pid"], int) and isinstance(entry["task_id"], int), entry
        assert CLIENT_ID.match(entry["client_id"]), entry
    assert printed["client_id"] == crashed["client_id"] == killed["client_id"], "one pool, one client"
    assert (killed["worker_pid"], killed["task_id"]) == (reported["worker_pid"], reported["task_id"])
    assert crashed["worker_pid"] != killed["worker_pid"], "the crashed worker was replaced"
    one(node, r"^node n1 stopped; every worker reaped$")
