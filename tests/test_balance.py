"""benchmarks.balance --trace: where a map's idle worker time went, from when each task started and ended."""

from __future__ import annotations

import re

import pytest

from benchmarks.balance import idle_time
from test_benchmarks import run_benchmark

pytestmark = pytest.mark.timeout(300)


def test_idle_time_is_split_into_before_the_first_task_between_tasks_and_after_the_last() -> None:
    runs = [(1, 10.1, 10.3), (1, 10.4, 10.6), (2, 10.2, 10.9)]  # pid, start, end; the map ran 10.0 -> 11.0
    found = idle_time(runs, 10.0, 11.0)
    assert found["idle_before"] == pytest.approx(0.1 + 0.2)
    assert found["idle_between"] == pytest.approx(0.1)
    assert found["idle_after"] == pytest.approx(0.4 + 0.1)
    assert found["first_start_median"] == pytest.approx(0.15) and found["first_start_last"] == pytest.approx(0.2)


def test_a_traced_round_says_where_its_workers_idled() -> None:
    out = run_benchmark("benchmarks.balance", "--workers", "2", "--tasks", "8", "--shapes", "1x2",
                        "--peers", "lucidity,mp-fork", "--only", "cold", "--rounds", "1", "--trace")
    traced = re.findall(r"\[first starts (\d+)/(\d+) ms; idle worker-s: before ([\d.]+), between ([\d.]+), "
                        r"after ([\d.]+), of ([\d.]+)\]", out)
    assert len(traced) == 2, out  # a round of each peer
    for first_median, first_last, before, between, after, total in traced:
        assert int(first_median) <= int(first_last)
        assert float(before) + float(between) + float(after) < float(total)  # the rest is the tasks' own time
