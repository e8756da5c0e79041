"""A failure the node reports for a task names what the task carried: for a map chunk, the items running.

Issue 9, point 5: ``WorkerCrashed`` (and the limit errors, and ``NodeLost``) raised for a chunk of a map
says "while running items 40..49 of map(f, ...)" or "item 7 of imap(f, ...)", not only the client's
internal task number, and carries the chunk's input positions as ``error.items``.

The first tests build real `Task` objects and node reports and check `failure_error` alone (pure, no
processes); the rest crash real workers through each face. Task functions live at module level, because
workers import this module by name (the embedded cluster's workers inherit ``sys.path``).
"""

from __future__ import annotations

import os
import pickle
import time
from typing import Any, Callable, Iterator, Optional

import pytest

import lucidity
from lucidity import job
from lucidity.links import failure_error
from lucidity.task import FunctionRef, Task

pytestmark = pytest.mark.timeout(120)

#: Seconds any blocking call here may wait for an outcome that is expected to come.
RESULT_TIMEOUT = 60.0
#: Workers of each embedded cluster (the machine has two cores).
WORKERS = 2
#: The input position whose item kills its worker.
FATAL = 7


def exit_on_fatal(x: int) -> int:
    if x == FATAL:
        os._exit(3)
    return x


def exit_on_fatal_pair(x: int, y: int) -> int:
    return exit_on_fatal(x) + y


def sleep_on_fatal(x: int) -> int:
    if x == FATAL:
        time.sleep(RESULT_TIMEOUT)
    return x


@job(timeout=1.0)
def sleepy_job(x: int) -> int:
    return sleep_on_fatal(x)


# -- failure_error alone: real tasks, the reports a node sends ------------------------------------------

FUNCTION = FunctionRef("digest", b"", "work, defined in app.py:12")


def make_task(**options: Any) -> Task:
    return Task(17, FUNCTION, "map", [], lambda succeeded, value: None, **options)


def crash_report(task_id: int = 17) -> dict[str, Any]:
    return {"task": task_id, "pid": 4121, "node": "n1", "worker": "4121", "reason": "crashed", "exit_code": None,
            "signal": 11, "stderr": "", "message": f"worker 4121 on node n1 died with SIGSEGV while running task {task_id}"}


@pytest.mark.parametrize("options, expected", [
    ({"made_by": "map", "items": range(40, 50)}, "items 40..49 of map(work, defined in app.py:12) (task 17)"),
    ({"made_by": "imap", "items": range(7, 8)}, "item 7 of imap(work, defined in app.py:12) (task 17)"),
    ({"made_by": "submit"}, "submit(work, defined in app.py:12) (task 17)"),
    ({}, "task 17 (work, defined in app.py:12)"),
])
def test_a_task_describes_what_it_carries(options: dict[str, Any], expected: str) -> None:
    assert make_task(**options).description == expected


def test_a_crash_names_the_items_that_were_running() -> None:
    error = failure_error(make_task(made_by="map", items=range(40, 50)), "n1", crash_report())
    assert isinstance(error, lucidity.WorkerCrashed)
    assert str(error) == ("worker 4121 on node n1 died with SIGSEGV while running items 40..49 of "
                          "map(work, defined in app.py:12) (task 17)")
    assert (error.task, error.items, error.pid, error.node, error.signal) == (17, range(40, 50), 4121, "n1", 11)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.items == range(40, 50)


def test_a_task_number_inside_another_number_is_not_replaced() -> None:
    report = crash_report()
    report["message"] = "worker 4121 on node n1 ran task 170 then died while running task 17"
    error = failure_error(make_task(made_by="map", items=range(3, 4)), "n1", report)
    assert str(error).startswith("worker 4121 on node n1 ran task 170 then died while running item 3 of map(")


def test_a_report_that_does_not_name_the_task_gets_the_description_appended() -> None:
    report = crash_report()
    report["message"] = "worker 4121 on node n1 died with SIGSEGV"
    error = failure_error(make_task(made_by="starmap", items=range(0, 5)), "n1", report)
    assert str(error) == ("worker 4121 on node n1 died with SIGSEGV "
                          "(items 0..4 of starmap(work, defined in app.py:12) (task 17))")


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
    assert error.items == range(8, 12) and error.task == 17


# -- real crashes, through each face ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool() -> Iterator[lucidity.Pool]:
    shared = lucidity.Pool(WORKERS)
    try:
        yield shared
    finally:
        shared.terminate()
        shared.join()


@pytest.fixture(scope="module")
def executor() -> Iterator[lucidity.Executor]:
    with lucidity.Executor(WORKERS) as shared:
        yield shared


POOL_CALLS: list[tuple[str, Callable[[lucidity.Pool], Any], str, Optional[range]]] = [
    ("map", lambda p: p.map(exit_on_fatal, range(20), chunksize=5), "items 5..9 of map(exit_on_fatal", range(5, 10)),
    ("map_async", lambda p: p.map_async(exit_on_fatal, range(20), chunksize=4).get(RESULT_TIMEOUT),
     "items 4..7 of map_async(exit_on_fatal", range(4, 8)),
    ("starmap", lambda p: p.starmap(exit_on_fatal_pair, [(x, 0) for x in range(20)], chunksize=3),
     "items 6..8 of starmap(exit_on_fatal_pair", range(6, 9)),
    ("imap", lambda p: list(p.imap(exit_on_fatal, range(20))), f"item {FATAL} of imap(exit_on_fatal", range(7, 8)),
    ("imap chunked", lambda p: list(p.imap(exit_on_fatal, range(20), chunksize=10)),
     "items 0..9 of imap(exit_on_fatal", range(0, 10)),
    ("imap_unordered", lambda p: list(p.imap_unordered(exit_on_fatal, range(20), chunksize=2)),
     "items 6..7 of imap_unordered(exit_on_fatal", range(6, 8)),
    ("apply", lambda p: p.apply(exit_on_fatal, (FATAL,)), "while running apply(exit_on_fatal", None),
    ("apply_async", lambda p: p.apply_async(exit_on_fatal, (FATAL,)).get(RESULT_TIMEOUT),
     "while running apply_async(exit_on_fatal", None),
]


@pytest.mark.parametrize("call, expected, items", [case[1:] for case in POOL_CALLS],
                         ids=[case[0] for case in POOL_CALLS])
def test_a_crash_in_a_pool_call_names_the_items_running(pool: lucidity.Pool, call: Callable[[lucidity.Pool], Any],
                                                        expected: str, items: Optional[range]) -> None:
    with pytest.raises(lucidity.WorkerCrashed) as caught:
        call(pool)
    error = caught.value
    assert expected in str(error)
    assert "exited with code 3" in str(error) and f"(task {error.task})" in str(error)
    assert error.items == items
    assert pool.map(exit_on_fatal, range(FATAL)) == list(range(FATAL))  # and the pool keeps serving


def test_a_crash_in_an_executor_map_names_the_items_running(executor: lucidity.Executor) -> None:
    with pytest.raises(lucidity.WorkerCrashed) as caught:
        list(executor.map(exit_on_fatal, range(20), chunksize=4))
    assert "while running items 4..7 of map(exit_on_fatal" in str(caught.value)
    assert caught.value.items == range(4, 8)


def test_a_crash_in_an_executor_submit_names_the_call(executor: lucidity.Executor) -> None:
    error = executor.submit(exit_on_fatal, FATAL).exception(timeout=RESULT_TIMEOUT)
    assert isinstance(error, lucidity.WorkerCrashed)
    assert "while running submit(exit_on_fatal" in str(error) and error.items is None


@pytest.fixture
def on_embedded() -> Iterator[None]:
    with lucidity.LocalCluster(processes=WORKERS) as cluster:
        lucidity.connect(cluster.address)
        try:
            yield
        finally:
            lucidity.connect(None)


def test_a_job_timeout_in_a_fanout_names_the_item(on_embedded: None) -> None:
    with pytest.raises(lucidity.JobTimeout) as caught:
        sleepy_job.remote_fanout(range(FATAL + 2))
    assert f"item {FATAL} of remote_fanout(" in str(caught.value) and "wall-time limit" in str(caught.value)
    assert caught.value.items == range(FATAL, FATAL + 1)
