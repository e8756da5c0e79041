"""Shedding, as a user sees it: tasks queued on a worker behind one that runs long are run by other workers
instead of waiting for it (lucidity.node.shedding), and every result still arrives exactly once; and work
stealing: a worker that ran dry takes tasks another still holds queued (lucidity.tasktable.TaskTable.steal),
though none of them is long."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import lucidity
from helpers import Rendezvous, hold, wait_until
from lucidity.node.shedding import SHED_AFTER, SHED_AFTER_FIRST, SHED_FACTOR, Shedder
from tasks import identity

pytestmark = pytest.mark.timeout(120)


def hold_or_echo(item: Any) -> Any:
    """A held task for an address, the item itself otherwise."""
    return hold(item, "long") if isinstance(item, tuple) else item


def test_tasks_queued_behind_a_long_task_run_on_another_worker(rendezvous: Rendezvous) -> None:
    with lucidity.Pool(2) as pool:
        pool.map(identity, range(400), chunksize=1)  # tiny tasks: each worker's window is now many tasks
        results = pool.imap_unordered(hold_or_echo, [rendezvous.address, *range(60)], chunksize=1)
        rendezvous.started(1)
        # The worker holding the long task had others queued behind it: all of them finish while it is held.
        quick = sorted(next(results) for _ in range(60))
        assert quick == list(range(60))
        rendezvous.release()
        assert next(results) == "long"
        with pytest.raises(StopIteration):
            next(results)
        assert pool.map(identity, range(100), chunksize=1) == list(range(100))  # the worker takes work again


def test_results_match_the_stdlib_when_long_and_short_tasks_mix() -> None:
    import multiprocessing

    items = [0.3 if i % 17 == 0 else 0.0 for i in range(120)]
    with lucidity.Pool(3) as pool:
        pool.map(identity, range(200), chunksize=1)
        ours = pool.map(_sleep_then_echo, list(enumerate(items)), chunksize=1)
    with multiprocessing.get_context("fork").Pool(3) as stdlib:
        theirs = stdlib.map(_sleep_then_echo, list(enumerate(items)), chunksize=1)
    assert ours == theirs == list(range(120))


def _slow_first_half(item: int) -> tuple[int, int]:
    import os
    import time

    time.sleep(0.015 if item < 20 else 0.001)  # under SHED_AFTER: no worker sheds these
    return item, os.getpid()


def test_a_worker_that_ran_dry_takes_tasks_another_holds_queued() -> None:
    with lucidity.Pool(2) as pool:
        pool.map(identity, range(600), chunksize=1)  # tiny tasks: each worker's window is now many tasks
        # Each worker gets half of the map: the slow half, and the fast one, done in a few ms.
        ours = pool.map(_slow_first_half, range(40), chunksize=1)
        assert [item for item, _ in ours] == list(range(40))
    slow_ran_by = {pid for item, pid in ours if item < 20}
    assert len(slow_ran_by) == 2, "the worker done with its fast tasks took slow ones the other held"


def _sleep_then_echo(item: tuple[int, float]) -> int:
    import time

    time.sleep(item[1])
    return item[0]


# -- the shedder's policy, with its real thread and lock and plain callables for the worker's queue ----------


class WorkerQueue:
    """What the shedder reaches of a worker: tasks queued, tasks still in the socket, what it gave back."""

    def __init__(self) -> None:
        self.queued: list[int] = []
        self.in_socket: list[int] = []
        self.given_back: list[int] = []

    def receive(self) -> None:
        self.queued += self.in_socket
        self.in_socket = []

    def give_back(self) -> bool:
        self.given_back += self.queued
        had_any, self.queued = bool(self.queued), []
        return had_any


def shedder_for(queue: WorkerQueue) -> tuple[Shedder, threading.RLock]:
    lock = threading.RLock()
    return Shedder(lock, queue.give_back, queue.receive), lock


def test_tasks_that_arrive_while_a_long_task_of_a_stream_runs_are_given_back() -> None:
    queue = WorkerQueue()
    shedder, _ = shedder_for(queue)
    shedder.task_started(queued=True)  # a stream: this task had another behind it
    shedder.task_ended(0.001)
    shedder.task_started(queued=False)  # the next runs long, with nothing queued when it started...
    queue.in_socket = [7, 8]  # ...and tasks arrive meanwhile
    wait_until(lambda: queue.given_back == [7, 8], 10, "the tasks that arrived given back")
    queue.in_socket = [9]  # sent before its client heard the worker is busy: given back too
    wait_until(lambda: queue.given_back == [7, 8, 9], 10, "the later arrival given back")


def test_tasks_that_arrive_behind_a_workers_first_task_are_given_back_if_it_runs_long() -> None:
    """A client that has timed its tasks on other workers sends a second one behind the first."""
    queue = WorkerQueue()
    shedder, _ = shedder_for(queue)
    started = time.monotonic()
    shedder.task_started(queued=False)
    queue.in_socket = [5]
    wait_until(lambda: queue.given_back == [5], 10, "the task behind the first one given back")
    assert time.monotonic() - started >= SHED_AFTER_FIRST  # its pace unknown: not as soon as SHED_AFTER


def test_a_task_is_given_back_only_after_several_typical_task_times() -> None:
    queue = WorkerQueue()
    shedder, _ = shedder_for(queue)
    for _ in range(20):
        shedder.task_ended(0.1)  # this worker's tasks take 100 ms
    shedder.task_ended(1.0)  # one long task hardly changes that (an average would be 280 ms)
    assert shedder.typical_time < 0.2
    queue.queued = [3]
    started = time.monotonic()
    shedder.task_started(queued=True)
    wait_until(lambda: queue.given_back == [3], 10, "the queued task given back")
    assert time.monotonic() - started >= SHED_FACTOR * 0.1 * 0.9  # not at SHED_AFTER: 100 ms tasks are not long


def test_the_shedder_gives_back_nothing_while_the_worker_holds_its_lock() -> None:
    queue = WorkerQueue()
    shedder, lock = shedder_for(queue)
    with lock:  # the worker's own thread, not running the caller's code: it serves its queue itself
        queue.queued = [4]
        shedder.task_started(queued=True)
        threading.Event().wait(3 * SHED_AFTER)  # past the task's deadline, with the lock held throughout
        assert queue.given_back == []
