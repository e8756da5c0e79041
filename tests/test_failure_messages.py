"""A failure the node reports for a task names what the task carried: for a map chunk, the items running.

Issue 9, point 5: ``WorkerCrashed`` (and the limit errors, and ``NodeLost``) raised for a chunk of a map
says "while running items 40..49 of map(f, ...)" or "item 7 of imap(f, ...)", not only the client's
internal task number, and carries the chunk's input positions as ``error.items``.

Here real workers crash through each face; `failure_error` and `Task.description` alone, with real tasks and
the reports a node sends, are tested in the fast tier (tests/unit/test_links.py, tests/unit/test_task.py).
Task functions live at module level, because workers import this module by name (the embedded cluster's
workers inherit ``sys.path``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, Optional

import pytest

import lucidity
from lucidity import job

from helpers import connected

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
    with lucidity.LocalCluster(processes=WORKERS) as cluster, connected(cluster.address):
        yield


def test_a_job_timeout_in_a_fanout_names_the_item(on_embedded: None) -> None:
    with pytest.raises(lucidity.JobTimeout) as caught:
        sleepy_job.remote_fanout(range(FATAL + 2))
    assert f"item {FATAL} of remote_fanout(" in str(caught.value) and "wall-time limit" in str(caught.value)
    assert caught.value.items == range(FATAL, FATAL + 1)
