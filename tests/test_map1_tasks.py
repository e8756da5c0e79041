"""The map path made cheaper per task (issue 13, the chunksize=1 map): what it must still do.

A map's chunks are made by `Task.siblings` (one positional call per task, the options read once) after every
chunk is serialized (`MapCall.payloads`, with a short cut for a list, tuple or range in chunks of one), and
the client takes a batch of results out of its worker's window under one lock, sends that worker its next
tasks, then delivers the batch (`Client._finish_all`). These tests pin what a cheaper path could lose: every
option of the pool on every task, positions and order for every shape of input, a failure in its place, the
callbacks run before `wait_idle` and `join` return, and the progress counted.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Iterator

import pytest

import lucidity
from lucidity.client import Client
from lucidity.cluster import LocalCluster
from lucidity.feed import MapCall
from lucidity.messages import TaskMode
from lucidity.options import TaskOptions
from lucidity.task import FunctionRef, Task, TaskState

#: Seconds any blocking call here may wait for something expected to happen.
RESULT_TIMEOUT = 60.0
WORKERS = 2

FUNCTION = FunctionRef("digest-of-work", b"", "work, defined in app.py:12")
INITIALIZER = FunctionRef("digest-of-setup", b"", "setup, defined in app.py:3")


class Boom(Exception):
    pass


def square(x: int) -> int:
    return x * x


def fail_on_multiples_of_seven(x: int) -> int:
    if x and x % 7 == 0:
        raise Boom(x)
    return x


_greeting = "not initialized"


def set_greeting(text: str) -> None:
    global _greeting
    _greeting = text


def greeting_and(x: int) -> tuple[str, int]:
    return _greeting, x


def worker_pid(_: Any) -> int:
    return os.getpid()


def never(succeeded: bool, value: Any) -> None:
    raise AssertionError("a template's on_done is never called")


# -- Task.siblings: pure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {},
    {"pool": "p1", "initializer": INITIALIZER, "max_tasks": 3, "node": "n2", "retries": 2, "lost_retries": 1,
     "memory": 2 ** 30, "timeout": 4.5, "cpu_time": 1.5, "made_by": "starmap"},
])
def test_a_sibling_is_its_template_but_for_id_payload_on_done_and_items(options: dict[str, Any]) -> None:
    template = Task(1, FUNCTION, TaskMode.MAP, [], never, **options)
    make = template.siblings(itertools.count(40))

    def on_done(succeeded: bool, value: Any) -> None:
        pass

    first, second = make([b"a"], on_done, range(0, 2)), make([b"b"], on_done, None)
    assert (first.id, second.id) == (40, 41)
    assert first.frames == [b"a"] and first.on_done is on_done and first.items == range(0, 2)
    assert second.frames == [b"b"] and second.items is None
    for name in Task.__dataclass_fields__:
        if name not in ("id", "frames", "on_done", "items"):
            assert getattr(first, name) == getattr(template, name), name
    assert first.state is TaskState.PENDING and first.history == () and first.sends == 0
    # A sibling is a task of its own: moving it moves neither the template nor another sibling.
    first.move(TaskState.SENT)
    assert template.state is TaskState.PENDING and second.state is TaskState.PENDING
    assert first.spec()._replace(id=0) == template.spec()._replace(id=0)


# -- on a real cluster -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(processes=WORKERS) as started:
        yield started


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    opened = Client(cluster.address)
    yield opened
    opened.shutdown(cancel=True)


@pytest.fixture
def pool(cluster: LocalCluster) -> Iterator[lucidity.Pool]:
    opened = lucidity.Pool(address=cluster.address)
    yield opened
    opened.terminate()
    opened.join()


def test_map_call_makes_tasks_with_the_faces_options_and_distinct_ids(client: Client) -> None:
    options = TaskOptions(pool="p9", max_tasks=5, memory=2 ** 28, timeout=30.0)
    call = MapCall(client, options, client.function(square), TaskMode.MAP, "map")
    ended: list[tuple[int, bool, Any]] = []
    tasks = call.tasks(call.payloads(range(5), 2), 2, 5, lambda number, ok, value: ended.append((number, ok, value)))
    assert [task.items for task in tasks] == [range(0, 2), range(2, 4), range(4, 5)]
    assert len({task.id for task in tasks}) == 3
    alone = options.new_task(client, call.function, TaskMode.MAP, [], never, made_by="map")
    for task in tasks:
        assert (task.pool, task.max_tasks, task.memory, task.timeout, task.lost_retries, task.made_by) == (
            alone.pool, alone.max_tasks, alone.memory, alone.timeout, alone.lost_retries, "map")
    tasks[2].on_done(True, [16])
    assert ended == [(2, True, [16])]


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("shape", ["list", "tuple", "range", "dict keys", "generator"])
def test_map_keeps_positions_and_order_for_every_shape_of_input(pool: lucidity.Pool, shape: str,
                                                                chunksize: int) -> None:
    numbers = list(range(801))
    inputs: Any = {"list": numbers, "tuple": tuple(numbers), "range": range(801),
                   "dict keys": dict.fromkeys(numbers).keys(), "generator": (n for n in numbers)}[shape]
    assert pool.map(square, inputs, chunksize=chunksize) == [n * n for n in numbers]


def test_a_failed_task_of_a_chunksize_one_map_fails_the_map_and_only_its_item_in_imap(pool: lucidity.Pool) -> None:
    with pytest.raises(Boom) as raised:
        pool.map(fail_on_multiples_of_seven, range(50), chunksize=1)
    assert raised.value.args[0] % 7 == 0
    seen = []
    iterator = pool.imap(fail_on_multiples_of_seven, range(30))
    for _ in range(30):
        try:
            seen.append(iterator.next(timeout=RESULT_TIMEOUT))
        except Boom as exc:
            seen.append(("failed", exc.args[0]))
    assert seen == [("failed", n) if n and n % 7 == 0 else n for n in range(30)]
    # Every other task of the failed map ran; the pool goes on serving.
    assert pool.map(square, range(20), chunksize=1) == [n * n for n in range(20)]


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle Unpicklable")


@pytest.mark.parametrize("chunksize, named", [(1, "item 2 of map(square"), (2, "items 2..3 of map(square")])
def test_an_item_that_cannot_travel_is_named_and_nothing_of_the_map_is_sent(pool: lucidity.Pool, chunksize: int,
                                                                           named: str) -> None:
    # (A chunksize=1 map serializes its items without naming them first, and again, naming them, if one fails.)
    with pytest.raises(TypeError, match="Unpicklable") as raised:
        pool.map(square, [1, 2, Unpicklable(), 4, 5], chunksize=chunksize)
    assert any(named in note and "nothing was sent" in note for note in raised.value.__notes__)
    assert not pool._cache  # (the stdlib's name for the results not ready yet)
    assert pool.map(square, [1, 2, 3], chunksize=chunksize) == [1, 4, 9]


def test_the_pools_initializer_reaches_every_task_of_a_chunksize_one_map(cluster: LocalCluster) -> None:
    with lucidity.Pool(address=cluster.address, initializer=set_greeting, initargs=("hello",)) as pool:
        assert pool.map(greeting_and, range(200), chunksize=1) == [("hello", n) for n in range(200)]


def test_max_tasks_per_child_holds_for_a_chunksize_one_map(cluster: LocalCluster) -> None:
    with lucidity.Pool(address=cluster.address, maxtasksperchild=5) as pool:
        pids = pool.map(worker_pid, range(40), chunksize=1)
    counts: dict[int, int] = {}
    for pid in pids:
        counts[pid] = counts.get(pid, 0) + 1
    assert max(counts.values()) <= 5 and len(counts) >= 40 // 5


def test_map_async_callbacks_run_before_join_returns(pool: lucidity.Pool) -> None:
    delivered: list[int] = []
    for start in range(0, 2000, 500):
        pool.map_async(square, range(start, start + 500), chunksize=1,
                       callback=lambda values: delivered.append(len(values)))
    pool.close()
    pool.join()
    assert delivered == [500] * 4


def test_wait_idle_returns_after_every_results_callback_returned(client: Client) -> None:
    call = MapCall(client, TaskOptions(), client.function(square), TaskMode.MAP, "map")
    lock = threading.Lock()
    delivered: list[int] = []

    def on_done(number: int, succeeded: bool, value: Any) -> None:
        assert succeeded
        with lock:
            delivered.append(number)

    client.submit(call.tasks(call.payloads(range(3000), 1), 1, 3000, on_done))
    assert client.wait_idle(RESULT_TIMEOUT)
    with lock:
        assert sorted(delivered) == list(range(3000))


def test_progress_counts_every_item_of_a_chunksize_one_map(pool: lucidity.Pool) -> None:
    seen: list[tuple[int, Any]] = []
    assert pool.map(square, range(500), chunksize=1, progress=lambda done, total: seen.append((done, total))) == [
        n * n for n in range(500)]
    assert seen[-1] == (500, 500)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
