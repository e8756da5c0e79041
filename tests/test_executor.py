"""lucidity.Executor against CPython's test_concurrent_futures, ported in spirit, with real processes.

The stdlib is the spec: every test taking ``executor`` or ``make_executor`` runs twice, once against
ProcessPoolExecutor (fork) and once against lucidity.Executor, and asserts only what the stdlib defines
(submit, map, shutdown, cancel, ``wait``, ``as_completed``, done callbacks, the asyncio bridges). One test
also runs the same workload on both and compares the outcomes. The deliberate differences written in
``lucidity/executor.py``'s docstring (a crash fails one future, lambdas travel, map reads lazily,
serialization errors raise at submit) are tested for lucidity alone, further down.

Most tests share one executor of each kind for the module (two workers: the machine has two cores). Tests
that shut an executor down, or that need a fresh one, make their own with ``make_executor``.

Nothing here sleeps to wait for an event: tasks that must stay running report to a `Rendezvous`
(helpers.py) and block until the test releases them. Task functions live at module level, here or in
tasks.py, because workers import them by module name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, CancelledError,
                                ProcessPoolExecutor)
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import lucidity
from lucidity.executor import MAP_WINDOW, Executor
from helpers import Rendezvous, hold, wait_until
from tasks import (Boom, Unpicklable, UnpicklableCallable, add, divide, fail_on_three, identity, initialized,
                   make_adder, pow_of, power, raise_boom, remember, sleep_for, square)

#: Seconds any single blocking call in these tests may wait for something that is expected to happen.
RESULT_TIMEOUT = 30.0
#: Seconds a call that must not wait for running tasks may take.
PROMPT_BOUND = 10.0
#: Workers per executor: the machine has two cores.
WORKERS = 2


# -- what the tasks run (besides tasks.py) ----------------------------------------------------------------

def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def exit_hard(code: int) -> None:
    os._exit(code)


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def quick_or_hold(address: tuple[str, int], tag: str) -> str:
    return tag if tag.startswith("quick") else hold(address, tag)


def nested_sum(n: int) -> int:
    """Use an Executor inside a task: it joins the same cluster, and waiting serves queued tasks."""
    with Executor() as inner:
        futures = [inner.submit(square, i) for i in range(n)]
        return sum(f.result(timeout=RESULT_TIMEOUT) for f in futures)


class Payload:
    """An object whose lifetime the stale-reference tests watch."""

    def method(self) -> str:
        return "called"


# -- executors ------------------------------------------------------------------------------------------

def stdlib_executor(max_workers: int = WORKERS, **options: Any) -> ProcessPoolExecutor:
    # fork, as the Pool conformance tests use: spawn and forkserver start helper processes (a resource
    # tracker, a fork server) that outlive the test and would count as leaked.
    return ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context("fork"), **options)


FACTORIES: dict[str, Callable[..., concurrent.futures.Executor]] = {
    "ProcessPoolExecutor": stdlib_executor, "lucidity": Executor}


class ExecutorMaker:
    """Makes executors of one implementation; every one it made is shut down at the end of the test.

    The shutdown does not wait: held tasks are released by the rendezvous fixture, whatever the fixture
    order, and the leak check waits for the executors' processes to go.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.made: list[concurrent.futures.Executor] = []

    def __call__(self, max_workers: int = WORKERS, **options: Any) -> Any:
        self.made.append(FACTORIES[self.kind](max_workers, **options))
        return self.made[-1]

    def __enter__(self) -> "ExecutorMaker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for ex in self.made:
            ex.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(params=sorted(FACTORIES))
def make_executor(request: pytest.FixtureRequest) -> Iterator[ExecutorMaker]:
    with ExecutorMaker(request.param) as maker:
        yield maker


@pytest.fixture
def make_lucidity_executor() -> Iterator[ExecutorMaker]:
    with ExecutorMaker("lucidity") as maker:
        yield maker


@pytest.fixture(scope="module")
def shared_executors() -> Iterator[dict[str, Any]]:
    """One executor of each kind for the module, each with its workers started before any test counts processes.

    The stdlib's forks its workers first, before lucidity's client starts its threads.
    """
    made: dict[str, Any] = {}
    try:
        for kind in sorted(FACTORIES):
            made[kind] = FACTORIES[kind](WORKERS)
            # The stdlib starts its workers on the first submit (under fork, all of them at once).
            assert made[kind].submit(square, 2).result(timeout=RESULT_TIMEOUT) == 4
        yield made
    finally:
        for ex in made.values():
            ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(params=sorted(FACTORIES))
def executor(request: pytest.FixtureRequest, shared_executors: dict[str, Any]) -> Any:
    """The module's executor of either implementation."""
    return shared_executors[request.param]


@pytest.fixture
def lucidity_executor(shared_executors: dict[str, Any]) -> Executor:
    return shared_executors["lucidity"]  # type: ignore[no-any-return]


def assert_remote_traceback(error: BaseException, *fragments: str) -> None:
    cause = error.__cause__
    assert cause is not None, f"{error!r} has no __cause__"
    text = str(cause)
    assert "Traceback" in text, text
    for fragment in fragments:
        assert fragment in text, text


def saturate(ex: concurrent.futures.Executor, rendezvous: Rendezvous) -> list[concurrent.futures.Future[str]]:
    """Occupy every worker of `ex` with a held task, and return once they all run.

    One at a time: each goes to the worker with the fewest tasks in flight, which is an idle one once the
    previous holder runs (submitted together, they may share a worker; see
    test_simultaneous_slow_tasks_spread_over_idle_workers).
    """
    holders = []
    for index in range(WORKERS):
        holders.append(ex.submit(hold, rendezvous.address, f"holder-{index}"))
        rendezvous.started()
    return holders


# -- submit ---------------------------------------------------------------------------------------------

def test_submit_returns_a_real_future_with_the_result(executor: concurrent.futures.Executor) -> None:
    future = executor.submit(power, 2, 8)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=RESULT_TIMEOUT) == 256
    assert future.done() and not future.running() and not future.cancelled()
    assert future.exception(timeout=0) is None


def test_submit_passes_keyword_arguments_even_named_fn_and_self(executor: concurrent.futures.Executor) -> None:
    assert executor.submit(power, 2, exponent=3).result(timeout=RESULT_TIMEOUT) == 8
    future = executor.submit(capture, 1, self=2, fn=3)
    assert future.result(timeout=RESULT_TIMEOUT) == ((1,), {"self": 2, "fn": 3})


def test_result_and_exception_time_out_while_the_task_runs(executor: concurrent.futures.Executor,
                                                           rendezvous: Rendezvous) -> None:
    future = executor.submit(hold, rendezvous.address)
    rendezvous.started()
    assert future.running() and not future.done()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    with pytest.raises(concurrent.futures.TimeoutError):
        future.exception(timeout=0)
    rendezvous.release()
    assert future.result(timeout=RESULT_TIMEOUT) == "held"
    assert not future.running()


def test_done_callbacks_get_the_future_once_it_is_done(executor: concurrent.futures.Executor) -> None:
    called = threading.Event()
    seen: list[Any] = []

    def callback(future: concurrent.futures.Future[Any]) -> None:
        seen.append((future, future.result(timeout=0)))
        called.set()

    future = executor.submit(square, 6)
    future.add_done_callback(callback)
    assert called.wait(RESULT_TIMEOUT)
    assert seen == [(future, 36)]

    # On a future that is done already, the callback runs at once, in this thread.
    late: list[Any] = []
    future.add_done_callback(late.append)
    assert late == [future]

    failed = executor.submit(divide, 1, 0)
    errors: list[Optional[BaseException]] = []
    failed_done = threading.Event()
    failed.add_done_callback(lambda f: (errors.append(f.exception(timeout=0)), failed_done.set()))
    assert failed_done.wait(RESULT_TIMEOUT)
    assert isinstance(errors[0], ZeroDivisionError)


def test_result_returns_while_a_done_callback_still_runs(executor: concurrent.futures.Executor,
                                                       rendezvous: Rendezvous) -> None:
    # Waiters are woken before the done callbacks run: a callback waiting for the waiter does not block it.
    waiter_returned = threading.Event()
    callback_saw: list[bool] = []
    callback_done = threading.Event()

    def callback(_: concurrent.futures.Future[Any]) -> None:
        callback_saw.append(waiter_returned.wait(PROMPT_BOUND))
        callback_done.set()

    future = executor.submit(hold, rendezvous.address)
    future.add_done_callback(callback)
    rendezvous.started()
    rendezvous.release()
    try:
        assert future.result(timeout=RESULT_TIMEOUT) == "held"
    finally:
        waiter_returned.set()
    assert callback_done.wait(RESULT_TIMEOUT)
    assert callback_saw == [True]


def test_no_stale_references_to_arguments_or_results(executor: concurrent.futures.Executor) -> None:
    payload = Payload()
    collected = threading.Event()
    weakref.finalize(payload, collected.set)
    future = executor.submit(identity, payload)
    returned = future.result(timeout=RESULT_TIMEOUT)
    assert isinstance(returned, Payload) and returned is not payload
    del payload
    gc.collect()
    assert collected.wait(RESULT_TIMEOUT)


def test_no_stale_references_to_a_bound_method_submitted(executor: concurrent.futures.Executor) -> None:
    payload = Payload()
    collected = threading.Event()
    weakref.finalize(payload, collected.set)
    assert executor.submit(payload.method).result(timeout=RESULT_TIMEOUT) == "called"
    del payload
    gc.collect()
    assert collected.wait(1.0)


def test_max_workers_must_be_positive(make_executor: ExecutorMaker) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            make_executor(max_workers=bad)


# -- map ------------------------------------------------------------------------------------------------

def test_map_with_several_iterables_stops_at_the_shortest(executor: concurrent.futures.Executor) -> None:
    assert list(executor.map(add, range(10), range(100, 105))) == [100, 102, 104, 106, 108]
    assert list(executor.map(power, range(10), itertools.repeat(3))) == [x ** 3 for x in range(10)]
    assert list(executor.map(square, [])) == []


def test_map_keeps_input_order_when_later_items_finish_first(executor: concurrent.futures.Executor) -> None:
    assert list(executor.map(sleep_for, [0.3, 0.0, 0.0, 0.1])) == [0.3, 0.0, 0.0, 0.1]


@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 100])
def test_map_chunksize_gives_the_same_results(executor: concurrent.futures.Executor, chunksize: int) -> None:
    assert list(executor.map(add, range(40), range(40, 80), chunksize=chunksize)) == [2 * x + 40 for x in range(40)]


def test_map_rejects_chunksize_below_one(executor: concurrent.futures.Executor) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            executor.map(square, range(3), chunksize=bad)


def test_map_raises_a_failed_call_at_its_position_and_stops(executor: concurrent.futures.Executor) -> None:
    for chunksize in (1, 2):
        iterator = executor.map(fail_on_three, range(8), chunksize=chunksize)
        assert [next(iterator) for _ in range(2)] == [0, 1]
        if chunksize == 1:
            assert next(iterator) == 2
        with pytest.raises(Boom) as raised:
            next(iterator)
        assert raised.value.args == ("three", 3)
        assert_remote_traceback(raised.value, "fail_on_three")
        with pytest.raises(StopIteration):
            next(iterator)


def test_map_of_one_iterable_passes_each_item_whole(executor: concurrent.futures.Executor) -> None:
    # lucidity sends one iterable's items as they are (Pool.map's way), several iterables as tuples to unpack.
    assert list(executor.map(identity, [(1, 2), (3,), ()], chunksize=2)) == [(1, 2), (3,), ()]
    assert list(executor.map(square)) == []


def test_map_of_something_not_iterable_raises_from_map(executor: concurrent.futures.Executor) -> None:
    with pytest.raises(TypeError):
        executor.map(square, 5)  # type: ignore[call-overload]


def test_map_hands_each_result_to_the_consumer_alone(executor: concurrent.futures.Executor) -> None:
    # The results of a chunk arrive together; one taken is referenced by the consumer alone (CPython issue
    # 14406), so dropping it frees it before the rest of its chunk is taken.
    iterator = executor.map(identity, [Payload() for _ in range(3)], chunksize=3)
    first = next(iterator)
    collected = threading.Event()
    weakref.finalize(first, collected.set)
    del first
    assert collected.is_set()
    assert [type(rest) for rest in iterator] == [Payload, Payload]


def test_map_closed_midway_hands_over_nothing_more(executor: concurrent.futures.Executor) -> None:
    iterator = executor.map(square, range(10), chunksize=5)
    assert next(iterator) == 0
    iterator.close()  # type: ignore[attr-defined]
    assert list(iterator) == []


def test_map_timeout_raises_timeout_error_from_next_and_ends_the_iterator(executor: concurrent.futures.Executor,
                                                                         rendezvous: Rendezvous) -> None:
    started = time.monotonic()
    iterator = executor.map(quick_or_hold, itertools.repeat(rendezvous.address), ["held", "quick"], timeout=0.5)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(iterator)
    assert 0.5 <= time.monotonic() - started < PROMPT_BOUND
    with pytest.raises(StopIteration):
        next(iterator)


def test_map_timeout_yields_the_results_that_came_in_time(make_executor: ExecutorMaker,
                                                         rendezvous: Rendezvous) -> None:
    ex = make_executor(max_workers=1)
    iterator = ex.map(quick_or_hold, itertools.repeat(rendezvous.address), ["quick-1", "quick-2", "held"],
                      timeout=2.0)
    assert [next(iterator), next(iterator)] == ["quick-1", "quick-2"]
    rendezvous.started()
    with pytest.raises(TimeoutError):
        next(iterator)


def test_results_are_not_held_back_by_a_long_task_behind_them(make_executor: ExecutorMaker,
                                                            rendezvous: Rendezvous) -> None:
    ex = make_executor(max_workers=1)
    assert sum(ex.map(square, range(2000))) > 0  # tiny tasks: the client's window for the worker grows
    futures = [ex.submit(square, 2), ex.submit(square, 3), ex.submit(hold, rendezvous.address)]
    rendezvous.started()
    done, _ = concurrent.futures.wait(futures[:2], timeout=2.0)
    rendezvous.release()
    assert done == set(futures[:2])


def test_closing_a_timed_out_map_cancels_the_calls_not_sent(make_executor: ExecutorMaker,
                                                            rendezvous: Rendezvous, tmp_path: Path) -> None:
    ex = make_executor()
    holders = saturate(ex, rendezvous)
    paths = [str(tmp_path / f"item-{i}") for i in range(20)]
    iterator = ex.map(touch, paths, timeout=0.1)
    with pytest.raises(TimeoutError):
        next(iterator)
    rendezvous.release()
    assert [h.result(timeout=RESULT_TIMEOUT) for h in holders] == ["holder-0", "holder-1"]
    ex.shutdown(wait=True)
    # Only what was already on its way to a worker (a window of a few tasks) ran.
    assert not any(os.path.exists(p) for p in paths[10:])


def test_simultaneous_slow_tasks_spread_over_idle_workers(make_executor: ExecutorMaker,
                                                         rendezvous: Rendezvous) -> None:
    ex = make_executor()
    iterator = ex.map(hold, itertools.repeat(rendezvous.address), [f"held-{i}" for i in range(WORKERS)])
    try:
        assert len(rendezvous.started(WORKERS, timeout=3.0)) == WORKERS
    finally:
        rendezvous.close()
        iterator.close()


# -- cancel ---------------------------------------------------------------------------------------------

def test_cancel_of_a_queued_task_returns_true_and_it_never_runs(make_executor: ExecutorMaker,
                                                                rendezvous: Rendezvous, tmp_path: Path) -> None:
    ex = make_executor()
    holders = saturate(ex, rendezvous)
    # The client keeps a window of a few tasks per worker in flight; the rest wait in the client.
    queued = [ex.submit(touch, str(tmp_path / f"queued-{i}")) for i in range(20)]
    last = queued[10:]
    assert all(f.cancel() for f in last)
    assert all(f.cancel() for f in last)  # cancelling again still says cancelled
    for future in last:
        assert future.cancelled() and future.done() and not future.running()
        with pytest.raises(CancelledError):
            future.result(timeout=0)
        with pytest.raises(CancelledError):
            future.exception(timeout=0)

    rendezvous.release()
    assert [h.result(timeout=RESULT_TIMEOUT) for h in holders] == ["holder-0", "holder-1"]
    for future in queued[:10]:
        assert os.path.exists(future.result(timeout=RESULT_TIMEOUT))
    ex.shutdown(wait=True)
    assert not any((tmp_path / f"queued-{i}").exists() for i in range(10, 20))


def test_cancel_of_a_running_task_returns_false(executor: concurrent.futures.Executor, rendezvous: Rendezvous) -> None:
    future = executor.submit(hold, rendezvous.address)
    rendezvous.started()
    assert future.running()
    assert not future.cancel()
    assert future.running() and not future.cancelled()
    rendezvous.release()
    assert future.result(timeout=RESULT_TIMEOUT) == "held"
    assert not future.cancel() and not future.cancelled()


def test_done_callback_runs_on_cancel(make_executor: ExecutorMaker, rendezvous: Rendezvous) -> None:
    ex = make_executor()
    saturate(ex, rendezvous)
    queued = [ex.submit(square, i) for i in range(20)]
    seen: list[bool] = []
    queued[-1].add_done_callback(lambda f: seen.append(f.cancelled()))
    assert queued[-1].cancel()
    assert seen == [True]


# -- wait and as_completed ------------------------------------------------------------------------------

def test_wait_first_completed(executor: concurrent.futures.Executor, rendezvous: Rendezvous) -> None:
    held = executor.submit(hold, rendezvous.address)
    rendezvous.started()
    quick = executor.submit(square, 3)
    done, not_done = concurrent.futures.wait([held, quick], timeout=RESULT_TIMEOUT, return_when=FIRST_COMPLETED)
    assert done == {quick} and not_done == {held}
    rendezvous.release()


def test_wait_first_completed_with_some_already_done(executor: concurrent.futures.Executor,
                                                     rendezvous: Rendezvous) -> None:
    finished = executor.submit(square, 2)
    finished.result(timeout=RESULT_TIMEOUT)
    held = executor.submit(hold, rendezvous.address)
    done, not_done = concurrent.futures.wait([finished, held], timeout=RESULT_TIMEOUT,
                                             return_when=FIRST_COMPLETED)
    assert done == {finished} and not_done == {held}
    rendezvous.started()
    rendezvous.release()


def test_wait_first_exception(executor: concurrent.futures.Executor, rendezvous: Rendezvous) -> None:
    quick = executor.submit(square, 21)
    quick.result(timeout=RESULT_TIMEOUT)
    held = executor.submit(hold, rendezvous.address)
    rendezvous.started()
    failing = executor.submit(raise_boom, "first", 1)
    done, not_done = concurrent.futures.wait([quick, failing, held], timeout=RESULT_TIMEOUT,
                                             return_when=FIRST_EXCEPTION)
    assert done == {quick, failing} and not_done == {held}
    assert isinstance(failing.exception(timeout=0), Boom)
    rendezvous.release()


def test_wait_first_exception_with_one_already_failed(executor: concurrent.futures.Executor,
                                                      rendezvous: Rendezvous) -> None:
    failed = executor.submit(divide, 1, 0)
    assert isinstance(failed.exception(timeout=RESULT_TIMEOUT), ZeroDivisionError)
    held = executor.submit(hold, rendezvous.address)
    done, not_done = concurrent.futures.wait([failed, held], timeout=RESULT_TIMEOUT, return_when=FIRST_EXCEPTION)
    assert done == {failed} and not_done == {held}
    rendezvous.started()
    rendezvous.release()


def test_wait_all_completed(executor: concurrent.futures.Executor) -> None:
    futures = [executor.submit(square, i) for i in range(5)] + [executor.submit(divide, 1, 0)]
    done, not_done = concurrent.futures.wait(futures, timeout=RESULT_TIMEOUT, return_when=ALL_COMPLETED)
    assert done == set(futures) and not not_done


def test_wait_timeout_leaves_the_running_task_not_done(executor: concurrent.futures.Executor,
                                                       rendezvous: Rendezvous) -> None:
    quick = executor.submit(square, 5)
    quick.result(timeout=RESULT_TIMEOUT)
    held = executor.submit(hold, rendezvous.address)
    done, not_done = concurrent.futures.wait([quick, held], timeout=0.1)
    assert done == {quick} and not_done == {held}
    rendezvous.started()
    rendezvous.release()
    assert held.result(timeout=RESULT_TIMEOUT) == "held"


def test_wait_with_duplicate_futures(executor: concurrent.futures.Executor) -> None:
    future = executor.submit(square, 4)
    done, not_done = concurrent.futures.wait([future, future], timeout=RESULT_TIMEOUT)
    assert done == {future} and not not_done


def test_as_completed_yields_each_future_as_it_finishes(executor: concurrent.futures.Executor,
                                                        rendezvous: Rendezvous) -> None:
    finished = [executor.submit(square, i) for i in range(3)]
    concurrent.futures.wait(finished, timeout=RESULT_TIMEOUT)
    held = executor.submit(hold, rendezvous.address)
    rendezvous.started()
    # One task at a time goes to the worker with fewest tasks in flight: the one not holding.
    quick = executor.submit(square, 5)
    iterator = concurrent.futures.as_completed([held, quick, *finished], timeout=RESULT_TIMEOUT)
    # Those done already come first, then quick (which may be done already too); held waits to be released.
    assert {next(iterator) for _ in range(len(finished) + 1)} == {quick, *finished}
    rendezvous.release()
    assert next(iterator) is held
    with pytest.raises(StopIteration):
        next(iterator)


def test_as_completed_zero_timeout_yields_what_is_done_then_times_out(executor: concurrent.futures.Executor,
                                                                      rendezvous: Rendezvous) -> None:
    succeeded = executor.submit(square, 2)
    failed = executor.submit(divide, 1, 0)
    concurrent.futures.wait([succeeded, failed], timeout=RESULT_TIMEOUT)
    plain: concurrent.futures.Future[int] = concurrent.futures.Future()
    plain.set_result(1)
    held = executor.submit(hold, rendezvous.address)
    completed = set()
    with pytest.raises(TimeoutError, match=r"1 \(of 4\) futures unfinished"):
        for future in concurrent.futures.as_completed([succeeded, failed, plain, held], timeout=0):
            completed.add(future)
    assert completed == {succeeded, failed, plain}
    rendezvous.started()
    rendezvous.release()


def test_as_completed_yields_duplicate_futures_once(executor: concurrent.futures.Executor) -> None:
    future = executor.submit(square, 3)
    assert list(concurrent.futures.as_completed([future, future], timeout=RESULT_TIMEOUT)) == [future]


# -- asyncio --------------------------------------------------------------------------------------------

def test_asyncio_wrap_future_and_run_in_executor(executor: concurrent.futures.Executor) -> None:
    async def main() -> tuple[int, int, list[int]]:
        loop = asyncio.get_running_loop()
        wrapped = await asyncio.wait_for(asyncio.wrap_future(executor.submit(square, 7)), RESULT_TIMEOUT)
        ran = await asyncio.wait_for(loop.run_in_executor(executor, square, 8), RESULT_TIMEOUT)
        gathered = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(executor, power, 2, i) for i in range(4))), RESULT_TIMEOUT)
        return wrapped, ran, list(gathered)

    assert asyncio.run(main()) == (49, 64, [1, 2, 4, 8])


def test_asyncio_sees_the_task_exception_with_its_type(executor: concurrent.futures.Executor) -> None:
    async def main() -> None:
        with pytest.raises(Boom) as raised:
            await asyncio.wait_for(asyncio.wrap_future(executor.submit(raise_boom, "async", 5)), RESULT_TIMEOUT)
        assert raised.value.args == ("async", 5)

    asyncio.run(main())


def test_asyncio_cancellation_reaches_the_task(make_executor: ExecutorMaker,
                                              rendezvous: Rendezvous) -> None:
    ex = make_executor()
    holders = saturate(ex, rendezvous)
    queued = [ex.submit(square, i) for i in range(20)]

    async def main() -> None:
        for future in (queued[-1], holders[0]):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(future), 0.05)

    asyncio.run(main())
    assert queued[-1].cancelled()  # still queued: cancelling the asyncio side withdrew it
    assert not holders[0].cancelled() and holders[0].running()  # running: it goes on
    rendezvous.release()
    assert holders[0].result(timeout=RESULT_TIMEOUT) == "holder-0"


# -- exceptions -----------------------------------------------------------------------------------------

def test_task_exception_reraises_with_its_type_args_and_remote_traceback(executor: concurrent.futures.Executor) -> None:
    future = executor.submit(raise_boom, "bad", 7)
    error = future.exception(timeout=RESULT_TIMEOUT)
    assert type(error) is Boom and error.args == ("bad", 7)
    with pytest.raises(Boom) as raised:
        future.result(timeout=RESULT_TIMEOUT)
    assert_remote_traceback(raised.value, "raise_boom", "raise Boom(message, code)")

    with pytest.raises(ZeroDivisionError) as builtin:
        executor.submit(divide, 1, 0).result(timeout=RESULT_TIMEOUT)
    assert_remote_traceback(builtin.value, "divide", "return a / b")
    assert executor.submit(square, 3).result(timeout=RESULT_TIMEOUT) == 9


# -- shutdown -------------------------------------------------------------------------------------------

def test_submit_and_map_after_shutdown_raise_runtime_error(make_executor: ExecutorMaker) -> None:
    ex = make_executor()
    assert ex.submit(square, 2).result(timeout=RESULT_TIMEOUT) == 4
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 2)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.map(square, range(3))
    ex.shutdown()  # a second shutdown is harmless


def test_shutdown_waits_for_every_task(make_executor: ExecutorMaker) -> None:
    ex = make_executor()
    futures = [ex.submit(sleep_for, 0.2) for _ in range(2 * WORKERS)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == [0.2] * (2 * WORKERS)


def test_context_manager_shuts_down_and_waits(make_executor: ExecutorMaker) -> None:
    with make_executor() as ex:
        futures = [ex.submit(sleep_for, 0.1) for _ in range(3)]
        assert ex.submit(square, 3).result(timeout=RESULT_TIMEOUT) == 9
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)


def test_shutdown_without_wait_returns_at_once_and_the_work_still_finishes(
        make_executor: ExecutorMaker, rendezvous: Rendezvous) -> None:
    ex = make_executor()
    held = ex.submit(hold, rendezvous.address)
    rendezvous.started()
    started = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - started < PROMPT_BOUND
    assert not held.done()
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    rendezvous.release()
    assert held.result(timeout=RESULT_TIMEOUT) == "held"
    # The executor tears its cluster down in the background now; the leak check waits for its processes.


def test_shutdown_cancel_futures_cancels_the_queued_ones(make_executor: ExecutorMaker,
                                                         rendezvous: Rendezvous) -> None:
    ex = make_executor()
    holders = saturate(ex, rendezvous)
    queued = [ex.submit(square, i) for i in range(50)]
    ex.shutdown(wait=False, cancel_futures=True)
    # The stdlib cancels from its manager thread, soon after shutdown returns; lucidity before it returns.
    wait_until(lambda: all(f.cancelled() for f in queued[10:]), RESULT_TIMEOUT, "the queued futures cancelled")
    assert not any(h.cancelled() for h in holders)
    rendezvous.release()
    assert [h.result(timeout=RESULT_TIMEOUT) for h in holders] == ["holder-0", "holder-1"]
    for index, future in enumerate(queued):
        if not future.cancelled():
            assert future.result(timeout=RESULT_TIMEOUT) == index * index


def test_shutdown_submits_the_rest_of_a_started_map(make_executor: ExecutorMaker) -> None:
    ex = make_executor()
    items = 3 * MAP_WINDOW
    iterator = ex.map(square, iter(range(items)))
    ex.shutdown(wait=True)
    assert list(iterator) == [x * x for x in range(items)]


def test_an_unreferenced_executor_finishes_its_work_then_tears_down(rendezvous: Rendezvous) -> None:
    ex = Executor(max_workers=WORKERS)
    collected = threading.Event()
    weakref.finalize(ex, collected.set)
    future = ex.submit(hold, rendezvous.address)
    del ex
    gc.collect()
    assert not collected.is_set()  # its pending future keeps it alive
    rendezvous.started()
    rendezvous.release()
    assert future.result(timeout=RESULT_TIMEOUT) == "held"
    assert collected.wait(RESULT_TIMEOUT)
    # Its finalizer stops the embedded cluster; the leak check waits for those processes to go.


IMPORTS = {"ProcessPoolExecutor": "from concurrent.futures import ProcessPoolExecutor as Executor",
           "lucidity": "from lucidity.executor import Executor"}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_interpreter_exit_waits_for_work_of_an_executor_never_shut_down(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "written"
    script = textwrap.dedent(f"""
        import time
        {IMPORTS[kind]}

        def write_later(path):
            time.sleep(0.3)
            with open(path, "w") as f:
                f.write("done")

        executor = Executor(max_workers=1)
        executor.submit(write_later, {str(marker)!r})
        """)
    completed = subprocess.run([sys.executable, "-c", script], timeout=RESULT_TIMEOUT, capture_output=True)
    assert completed.returncode == 0, completed.stderr.decode()
    assert marker.read_text() == "done"


# -- lucidity alone: the documented differences ---------------------------------------------------------

def test_a_crashed_worker_fails_only_its_own_future(lucidity_executor: Executor, rendezvous: Rendezvous) -> None:
    held = lucidity_executor.submit(hold, rendezvous.address)
    rendezvous.started()
    crashed = lucidity_executor.submit(exit_hard, 3)
    error = crashed.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(error, lucidity.WorkerCrashed), repr(error)
    assert "exit_hard" in str(error)
    with pytest.raises(lucidity.WorkerCrashed):
        crashed.result(timeout=0)
    assert not held.done()  # unlike ProcessPoolExecutor, nothing else breaks
    rendezvous.release()
    assert held.result(timeout=RESULT_TIMEOUT) == "held"
    assert list(lucidity_executor.map(square, range(6))) == [0, 1, 4, 9, 16, 25]
    assert lucidity_executor.submit(square, 12).result(timeout=RESULT_TIMEOUT) == 144


def test_lambdas_and_closures_work(lucidity_executor: Executor) -> None:
    assert lucidity_executor.submit(lambda x: x + 1, 1).result(timeout=RESULT_TIMEOUT) == 2
    assert list(lucidity_executor.map(make_adder(10), range(3))) == [10, 11, 12]
    assert list(lucidity_executor.map(lambda a, b: a * b, [2, 4], [3, 5], chunksize=2)) == [6, 20]
    assert lucidity_executor.submit(pow_of, lambda: 3).result(timeout=RESULT_TIMEOUT) == 9


def test_serialization_error_raises_at_submit_and_nothing_is_sent(lucidity_executor: Executor) -> None:
    with socket.socket() as unpicklable_socket:
        submissions: list[Callable[[], Any]] = [
            lambda: lucidity_executor.submit(identity, unpicklable_socket),
            lambda: lucidity_executor.submit(identity, (x for x in range(3))),
            lambda: lucidity_executor.submit(power, 2, exponent=Unpicklable()),
            lambda: lucidity_executor.submit(UnpicklableCallable(), 1),
            lambda: lucidity_executor.map(UnpicklableCallable(), [1, 2]),
        ]
        for submit in submissions:
            # The pickler's own exception, as ProcessPoolExecutor raises it (from the future there).
            with pytest.raises(TypeError):
                submit()
    # An item of a map that cannot travel fails at its position.
    iterator = lucidity_executor.map(identity, [1, Unpicklable(), 3])
    assert next(iterator) == 1
    with pytest.raises(TypeError):
        next(iterator)
    assert lucidity_executor.submit(square, 4).result(timeout=RESULT_TIMEOUT) == 16


def test_an_executor_inside_a_task_does_not_deadlock(lucidity_executor: Executor) -> None:
    # Every worker runs a task that waits for tasks of its own: they are served while it waits.
    assert list(lucidity_executor.map(nested_sum, [3] * WORKERS)) == [5] * WORKERS


def test_an_executor_cannot_be_pickled(lucidity_executor: Executor) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(lucidity_executor)


def test_map_reads_a_huge_input_lazily_a_window_ahead(lucidity_executor: Executor) -> None:
    read = [0]

    def numbers() -> Iterator[int]:
        for number in range(1_000_000):
            read[0] += 1
            yield number

    iterator = lucidity_executor.map(square, numbers())
    assert read[0] == MAP_WINDOW  # submitted by the call itself, before iteration
    assert [next(iterator) for _ in range(10)] == [x * x for x in range(10)]
    assert read[0] == MAP_WINDOW + 10
    iterator.close()  # cancels what has not been sent yet
    chunked = lucidity_executor.map(square, numbers(), chunksize=10)
    assert read[0] == MAP_WINDOW + 10 + 10 * MAP_WINDOW
    assert next(chunked) == 0
    chunked.close()
    assert list(itertools.islice(lucidity_executor.map(square, itertools.count()), 5)) == [0, 1, 4, 9, 16]


def test_map_raises_an_error_of_the_input_at_its_position(lucidity_executor: Executor) -> None:
    def failing_input() -> Iterator[int]:
        yield from range(3)
        raise Boom("input", 3)

    iterator = lucidity_executor.map(square, failing_input())
    assert [next(iterator) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(Boom):
        next(iterator)


def test_shutdown_cancel_futures_stops_reading_a_started_map(make_lucidity_executor: ExecutorMaker) -> None:
    ex = make_lucidity_executor()
    iterator = ex.map(square, iter(range(3 * MAP_WINDOW)))
    ex.shutdown(wait=True, cancel_futures=True)
    results = []
    with pytest.raises(CancelledError):
        for value in iterator:
            results.append(value)
    assert results == [x * x for x in range(len(results))] and len(results) < 3 * MAP_WINDOW


def test_wait_and_as_completed_count_cancelled_futures_as_done_at_once(make_lucidity_executor: ExecutorMaker,
                                                                      rendezvous: Rendezvous) -> None:
    # The stdlib's wait() and as_completed() count a cancelled future only once its executor has noticed
    # the cancel (CANCELLED_AND_NOTIFIED), when its queue reaches it; lucidity's futures are notified at once.
    ex = make_lucidity_executor()
    saturate(ex, rendezvous)
    queued = [ex.submit(square, i) for i in range(20)]
    last = queued[10:]
    assert all(f.cancel() for f in last)
    done, not_done = concurrent.futures.wait(last, timeout=0)
    assert done == set(last) and not not_done
    assert set(concurrent.futures.as_completed(last, timeout=0)) == set(last)


# -- the stdlib as the spec -----------------------------------------------------------------------------

def workload(ex: concurrent.futures.Executor) -> dict[str, Any]:
    """What both executors must agree on, outcome by outcome."""
    outcome: dict[str, Any] = {
        "submit": ex.submit(power, 3, 4).result(timeout=RESULT_TIMEOUT),
        "keywords": ex.submit(capture, 1, 2, key="value").result(timeout=RESULT_TIMEOUT),
        "map": list(ex.map(add, range(20), range(20, 35))),
        "map_chunked": list(ex.map(power, range(30), itertools.repeat(2), chunksize=4)),
        "map_empty": list(ex.map(square, [])),
    }
    error = ex.submit(raise_boom, "spec", 11).exception(timeout=RESULT_TIMEOUT)
    outcome["exception"] = (type(error), error.args if error else None, "raise_boom" in str(error.__cause__))
    iterator = ex.map(fail_on_three, range(6), chunksize=1)
    seen: list[Any] = []
    try:
        for value in iterator:
            seen.append(value)
    except Boom as exc:
        seen.append(("raised", exc.args))
    outcome["map_failure"] = seen
    done, not_done = concurrent.futures.wait([ex.submit(square, i) for i in range(4)], timeout=RESULT_TIMEOUT)
    outcome["wait"] = (sorted(f.result() for f in done), len(not_done))
    completed = concurrent.futures.as_completed([ex.submit(square, i) for i in range(4)], timeout=RESULT_TIMEOUT)
    outcome["as_completed"] = sorted(f.result() for f in completed)
    ex.shutdown(wait=True)
    try:
        ex.submit(square, 1)
    except RuntimeError as exc:
        outcome["after_shutdown"] = str(exc)
    return outcome


def test_same_outcomes_as_process_pool_executor(make_lucidity_executor: ExecutorMaker) -> None:
    expected = workload(stdlib_executor())
    assert workload(make_lucidity_executor()) == expected


def test_initializer_runs_on_every_worker_before_its_tasks(make_executor: ExecutorMaker) -> None:
    ex = make_executor(initializer=remember, initargs=("set",))
    results = [ex.submit(initialized).result(timeout=RESULT_TIMEOUT) for _ in range(4)]
    assert all(values == ["set"] for values, _ in results)  # every worker ran the initializer, once
    assert initialized()[0] == []  # and this process did not
    with pytest.raises(TypeError):
        make_executor(initializer="not callable")
    with pytest.raises(ValueError):
        make_executor(max_tasks_per_child=0)


def test_max_tasks_per_child_gives_each_task_a_fresh_worker(make_lucidity_executor: ExecutorMaker) -> None:
    # Lucidity alone: the stdlib refuses max_tasks_per_child under fork, and its other start methods leave
    # helper processes behind (see stdlib_executor).
    ex = make_lucidity_executor(initializer=remember, initargs=("set",), max_tasks_per_child=1)
    results = [ex.submit(initialized).result(timeout=60) for _ in range(4)]
    assert all(values == ["set"] for values, _ in results)  # every worker ran the initializer, once
    assert len({pid for _, pid in results}) == 4  # one task per worker, as max_tasks_per_child=1 asks
