"""The benchmarks run and report, at tiny sizes: a smoke test of the harness, never a timing test.

Each benchmark module runs as its user runs it (``python -m benchmarks.balance ...``), in a session of its
own, with sizes that take seconds; the test checks that every peer produced a number, that no cell is an
error, and that the numbers are the right kind (a percentage of ideal above 0, more open files after a pool
than before it). Timing targets live in the benchmarks' own tables, not here. A run that overstays its bound
is stopped with SIGTERM, which each module turns into its own cleanup (its clusters and peer processes),
and conftest's leak check finds any process it left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from helpers import TESTS, stop_process

REPOSITORY = os.path.dirname(TESTS)
sys.path.insert(0, REPOSITORY)

from benchmarks import report  # noqa: E402 - needs the repository on the path

#: Seconds one tiny benchmark run may take (they take 5-20 s here, more on a loaded machine).
RUN_TIMEOUT = 150.0

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 60)


def run_benchmark(*args: str) -> str:
    """``python -m ARGS`` from the repository; its stdout, after checking that it exited 0."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    env.pop("LUCIDITY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPOSITORY, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGTERM, 60.0)
        pytest.fail(f"{' '.join(args)} did not finish within {RUN_TIMEOUT:.0f} s")
    assert proc.returncode == 0, f"{' '.join(args)} exited with {proc.returncode}:\n{out}"
    assert "note:" not in out, out
    return out


def table_row(out: str, starts: str) -> list[str]:
    """The cells after the label of the first text-table row whose label starts with `starts`."""
    for line in out.splitlines():
        if line.startswith(starts):
            return re.split(r"\s{2,}", line.strip())[1:]
    raise AssertionError(f"no row starting {starts!r} in:\n{out}")


def test_balance_reports_every_peer_as_a_share_of_ideal() -> None:
    out = run_benchmark("benchmarks.balance", "--workers", "2", "--tasks", "8", "--shapes", "1x2,2x1",
                        "--rounds", "1")
    for peer in ("lucidity", "cli-1x2", "cli-2x1", "mp-fork"):
        assert f"round 1/1  {peer}" in out, out
    for workload in ("cold map 8 × 20 ms", "tail 8 (1 × 500 ms, 7 × 5 ms)"):
        cells = table_row(out, f"{workload}: % of ideal")
        assert len(cells) == 4 + 3, cells  # four peers, three ratios against mp-fork
        assert all(cell.endswith("%") and 0 < float(cell[:-1]) <= 100 for cell in cells[:4]), cells
        assert table_row(out, f"{workload}: workers that ran tasks") == ["2", "2", "2", "2"]
    assert "error" not in out, out


def test_footprint_counts_a_clients_files_and_the_control_cpu() -> None:
    out = run_benchmark("benchmarks.footprint", "--workers", "2", "--per-node", "1", "--nodes", "2",
                        "--seconds", "0.5", "--rounds", "1")
    after, before = table_row(out, "open files ↓"), table_row(out, "open files before the pool")
    assert int(after[0]) > int(before[0]) and int(after[1]) > int(before[1]), (after, before)
    assert float(table_row(out, "RSS (MiB)")[0]) > 0
    assert float(table_row(out, "control daemon, % of one core ↓")[0]) >= 0
    assert "2 workers: under 1,024 open files (the usual limit)" in out, out


def test_latency_group_runs_its_workloads_with_ratios_against_the_stdlib() -> None:
    out = run_benchmark("benchmarks", "--quick", "--only", "latency", "--peers", "lucidity-exec,mp-fork,PPE")
    for row in ("apply no-op p50", "map 20,000 tiny, default chunks", "map 2,000 tiny, chunksize=1", "submit 2,000"):
        cells = table_row(out, row)
        assert "error" not in cells and "—" not in cells[:3], (row, cells)
    header = next(line for line in out.splitlines() if line.startswith("workload (unit)"))
    assert "lucidity-exec ÷ PPE" in header and "lucidity-exec ÷ mp-fork" in header, header


def test_targets_apply_only_to_the_peers_they_name() -> None:
    rows = report.make_rows(100, 10, 10, report.MIB)
    samples = {"lucidity": {"map_throughput": [10.0]}, "lucidity-exec": {"map_throughput": [4.0]},
               "mp-fork": {"map_throughput": [5.0]}}
    results = report.Results(["lucidity", "lucidity-exec", "mp-fork"], rows, samples, {})
    header, body = results.target_table()
    cells = {line[0]: dict(zip(header[1:], line[1:])) for line in body}
    executor_map = cells["Executor.map ≥ 0.9× mp-fork's Pool.map, same chunks"]
    assert executor_map == {"lucidity": "n/a", "lucidity-exec": "0.80×: NOT met"}
    assert cells["default-chunk map throughput ≥ 0.7× mp-fork's"] == {"lucidity": "2.00×: met",
                                                                       "lucidity-exec": "n/a"}


def test_percall_reports_cpu_per_task_of_caller_and_worker_against_the_stdlib() -> None:
    out = run_benchmark("benchmarks.percall", "--quick")
    for row in ("apply caller cpu us", "apply worker cpu us", "apply wall us", "map-chunk1 caller cpu us",
                "map-chunk1 worker cpu us", "map-chunk1 wall us"):
        cells = table_row(out, row)
        assert len(cells) == 2 and all(float(cell) >= 0 for cell in cells), (row, cells)
    assert float(table_row(out, "apply wall us")[0]) > 0, out
