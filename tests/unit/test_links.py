"""lucidity.links without sockets: what a client knows of a node for placement, and the exception for a task
its node reported failed (`failure_error`). The window of tasks in flight is tested with the task table."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import lucidity
from lucidity import links
from lucidity.links import NodeInfo
from lucidity.messages import FailureReport
from lucidity.task import FunctionRef, Task

FUNCTION = FunctionRef("digest", b"", "work, defined in app.py:12")


def make_task(task_id: int = 17, **options: Any) -> Task:
    return Task(task_id, FUNCTION, "map", [], lambda succeeded, value: None, **options)


def test_a_nodes_load_is_its_tasks_per_worker() -> None:
    assert NodeInfo("n1", "h", workers=2, running=1, ours=3).load == 2.0
    assert NodeInfo("n2", "h", workers=0, running=0, ours=1).load == 1.0  # no workers yet: no division by zero


# -- failure_error: real tasks, the reports a node sends ----------------------------------------------------

def failure_error(task: Task, node: str, report: dict[str, Any]) -> lucidity.LucidityError:
    """`links.failure_error` of a report as it arrives (checked by `FailureReport.from_meta`, as the client does)."""
    return links.failure_error(task, node, FailureReport.from_meta(report))


def crash_report(task_id: int = 17, **fields: Any) -> dict[str, Any]:
    report = {"task": task_id, "pid": 4121, "node": "n1", "worker": "4121", "reason": "crashed", "exit_code": None,
              "signal": 11, "stderr": "",
              "message": f"worker 4121 on node n1 died with SIGSEGV while running task {task_id}"}
    report.update(fields)
    return report


def test_a_crash_names_the_items_that_were_running() -> None:
    error = failure_error(make_task(made_by="map", items=range(40, 50)), "n1", crash_report())
    assert isinstance(error, lucidity.WorkerCrashed)
    assert str(error) == ("worker 4121 on node n1 died with SIGSEGV while running items 40..49 of "
                          "map(work, defined in app.py:12) (task 17)")
    assert (error.task, error.items, error.pid, error.node, error.signal) == (17, range(40, 50), 4121, "n1", 11)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.items == range(40, 50)


def test_a_task_number_inside_another_number_is_not_replaced() -> None:
    report = crash_report(message="worker 4121 on node n1 ran task 170 then died while running task 17")
    error = failure_error(make_task(made_by="map", items=range(3, 4)), "n1", report)
    assert str(error).startswith("worker 4121 on node n1 ran task 170 then died while running item 3 of map(")


def test_a_report_that_does_not_name_the_task_gets_the_description_appended() -> None:
    report = crash_report(message="worker 4121 on node n1 died with SIGSEGV")
    error = failure_error(make_task(made_by="starmap", items=range(0, 5)), "n1", report)
    assert str(error) == ("worker 4121 on node n1 died with SIGSEGV "
                          "(items 0..4 of starmap(work, defined in app.py:12) (task 17))")


def test_a_crash_shows_the_workers_last_stderr_and_every_earlier_attempt() -> None:
    task = make_task(made_by="submit", retries=0)
    task.failures = ["attempt 1 exited with code 3", "attempt 2 exited with code 3"]
    error = failure_error(task, "n1", crash_report(exit_code=3, signal=None, stderr="Fatal Python error\n\n"))
    assert isinstance(error, lucidity.WorkerCrashed) and error.exit_code == 3 and error.signal is None
    text = str(error)
    assert "it was run 2 times" in text
    assert "attempt 1 exited with code 3" in text and "attempt 2 exited with code 3" in text
    assert text.endswith("last lines of the worker's stderr:\nFatal Python error")


@pytest.mark.parametrize("reason, kind, what", [
    ("memory", lucidity.MemoryLimitExceeded, "memory cap of 100 MiB"),
    ("timeout", lucidity.JobTimeout, "wall-time limit of 1.00 s"),
    ("cpu", lucidity.CpuLimitExceeded, "CPU-time limit of 1.00 s"),
])
def test_a_limit_breach_names_the_items_that_were_running(reason: str, kind: type, what: str) -> None:
    report = {"task": 17, "pid": 4121, "node": "n1", "worker": "4121", "reason": reason, "limit": 1,
              "measured": 2, "peak": 2,
              "message": f"task 17 went over its {what} on node n1 (worker 4121 reached 2); the worker was stopped "
                         "and replaced"}
    error = failure_error(make_task(made_by="imap_unordered", items=range(8, 12)), "n1", report)
    assert isinstance(error, kind)
    assert str(error).startswith(
        f"items 8..11 of imap_unordered(work, defined in app.py:12) (task 17) went over its {what}")
    assert error.items == range(8, 12) and error.task == 17 and error.limit == 1
