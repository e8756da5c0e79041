"""The pure parts of the daemons' metrics and logs: the text exposition format, the slots' tally, JSON lines.

lucidity.node.metrics renders Prometheus' text format 0.0.4 itself (no client library); these pin down what
Prometheus' parser relies on. tests/test_metrics.py checks the same text with promtool and a real server.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys

import pytest

from lucidity.node.logformat import JsonFormatter, context
from lucidity.node.metrics import Family, Sample, counter, gauge, histogram, render
from lucidity.node.slots import DURATION_BUCKETS, SLOT_SIZE, TALLY_FIELDS, SlotState, SlotTable, Tally
from lucidity.node import slots as slots_module


def test_a_gauge_and_a_counter_have_help_type_and_one_line_per_label_value() -> None:
    text = render([gauge("lucidity_workers", "Worker processes by state", {"idle": 3, "busy": 1}, label="state"),
                   counter("lucidity_tasks_total", "Tasks", 7)])
    assert text == ("# HELP lucidity_workers Worker processes by state\n"
                    "# TYPE lucidity_workers gauge\n"
                    'lucidity_workers{state="idle"} 3\n'
                    'lucidity_workers{state="busy"} 1\n'
                    "# HELP lucidity_tasks_total Tasks\n"
                    "# TYPE lucidity_tasks_total counter\n"
                    "lucidity_tasks_total 7\n")


def test_a_counter_must_be_named_total_and_several_values_need_a_label() -> None:
    with pytest.raises(ValueError, match="_total"):
        counter("lucidity_tasks", "Tasks", 1)
    with pytest.raises(ValueError, match="label"):
        gauge("lucidity_workers", "Workers", {"idle": 1})


def test_a_histogram_is_cumulative_with_le_labels_an_inf_bucket_a_sum_and_a_count() -> None:
    text = render([histogram("lucidity_task_duration_seconds", "Run time", (0.1, 1.0), [2, 0, 5], 12.5)])
    assert text.splitlines()[2:] == [
        'lucidity_task_duration_seconds_bucket{le="0.1"} 2',
        'lucidity_task_duration_seconds_bucket{le="1"} 2',
        'lucidity_task_duration_seconds_bucket{le="+Inf"} 7',
        "lucidity_task_duration_seconds_sum 12.5",
        "lucidity_task_duration_seconds_count 7",
    ]
    with pytest.raises(ValueError, match="counts"):
        histogram("h", "h", (0.1, 1.0), [1, 2], 0.0)


def test_label_values_and_help_are_escaped_and_special_numbers_spelled_as_prometheus_does() -> None:
    family = Family("lucidity_x", "gauge", 'a \\ b\nc', (
        Sample("", (("node", 'say "hi"\\\n'),), math.inf),
        Sample("", (("node", "nan"),), math.nan),
        Sample("", (("node", "small"),), 0.25),
        Sample("", (("node", "big"),), 2.0 ** 60),
    ))
    lines = render([family]).splitlines()
    assert lines[0] == "# HELP lucidity_x a \\\\ b\\nc"
    assert lines[2] == 'lucidity_x{node="say \\"hi\\"\\\\\\n"} +Inf'
    assert lines[3:] == ['lucidity_x{node="nan"} NaN', 'lucidity_x{node="small"} 0.25',
                         f'lucidity_x{{node="big"}} {float(2 ** 60)!r}']


def test_the_tally_fits_its_slot_and_a_reset_clears_it(tmp_path: os.PathLike[str]) -> None:
    assert slots_module._BUCKETS_OFFSET + slots_module._BUCKETS.size <= SLOT_SIZE
    assert slots_module._LAYOUT.size <= slots_module._TALLY_OFFSET
    table = SlotTable(os.path.join(tmp_path, "slots"), 3, create=True)
    try:
        table.begin(1, 42, b"c" * 16, 0)
        counts, duration_sum, buckets = table.counters(1)
        for position in range(len(TALLY_FIELDS)):
            counts[position] += position + 1
        duration_sum[0] += 2.5
        buckets[3] += 9
        buckets[len(DURATION_BUCKETS)] += 1
        tally = table.tally(1)
        assert tally[:len(TALLY_FIELDS)] == tuple(range(1, len(TALLY_FIELDS) + 1)) and tally.duration_sum == 2.5
        assert tally.buckets[3] == 9 and tally.buckets[-1] == 1 and sum(tally.buckets) == 10
        assert table.read(1).task_id == 42, "the tally must not overwrite the current task"
        assert table.tally(0) == Tally() and table.tally(2) == Tally(), "neighbouring slots untouched"
        assert tally.plus(tally).buckets[3] == 18 and tally.plus(Tally()) == tally
        table.reset(1)
        assert table.tally(1) == Tally() and table.read(1).state is SlotState.IDLE and table.read(1).task_id == -1
        counts.release(), duration_sum.release(), buckets.release()
    finally:
        table.close()


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("lucidity.node.daemon").makeRecord(
        "lucidity.node.daemon", logging.WARNING, __file__, 1, message, ("n1",), None, extra=extra)
    return record


def test_a_json_line_has_the_fields_and_only_the_context_that_applies() -> None:
    formatter = JsonFormatter("node", "n1")
    line = formatter.format(_record("worker of %s died", **context(4121, 17, "ab" * 16)))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["time"].endswith("Z") and entry["level"] == "WARNING" and entry["daemon"] == "node"
    assert (entry["node"], entry["message"], entry["logger"]) == ("n1", "worker of n1 died", "lucidity.node.daemon")
    assert (entry["worker_pid"], entry["task_id"], entry["client_id"]) == (4121, 17, "ab" * 16)
    bare = json.loads(JsonFormatter("control").format(_record("control at %s", **context())))
    assert not {"node", "worker_pid", "task_id", "client_id"} & set(bare)


def test_a_json_line_carries_a_traceback_on_one_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = _record("failed %s")
        record.exc_info = sys.exc_info()
    line = JsonFormatter("node", "n1").format(record)
    assert "\n" not in line and "RuntimeError: boom" in json.loads(line)["exception"]
