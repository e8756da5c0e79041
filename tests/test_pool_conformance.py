"""Pool conformance: one test body runs against multiprocessing.Pool (the spec) and lucidity.Pool.

Every test taking ``make_pool`` or ``pool`` runs twice, once per implementation, and asserts only what the
standard library defines. The deliberate differences written in ``lucidity/pool.py``'s docstring are tested
at the end of the module, for lucidity alone.

Task functions and exception classes live at module level: lucidity's workers import this module by name
(the embedded cluster's workers inherit ``sys.path``), and the stdlib's forked workers already have it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import itertools
import multiprocessing
import operator
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import lucidity
from tasks import (Boom, Unpicklable, UnpicklableCallable, add, divide, fail_on_three, identity, make_adder, pid_of,
                   pow_of, power, raise_boom, sleep_for, square)

#: Seconds any single blocking call in these tests may wait for a result that is expected to come.
RESULT_TIMEOUT = 30.0
#: Seconds a call waits when the test expects nothing to be ready.
NOT_READY_TIMEOUT = 0.05
#: Seconds a task waits for its gate file before giving up; far longer than any test should need.
GATE_TIMEOUT = 60.0
#: Seconds leaving a pool's ``with`` block may take while a task is still running (it must not wait for it).
EXIT_BOUND = 10.0
#: Workers per pool: the machine has two cores.
WORKERS = 2


# -- what the tasks run (besides tasks.py) ----------------------------------------------------------------

def increment_in_place(array: Any) -> Any:
    array += 1
    return array


def wait_for_file(path: str) -> str:
    """Return once `path` exists: the test opens this gate when it wants the task to finish."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)
    return path


def pid_of_pair(a: object, b: object) -> int:
    return os.getpid()


def unpicklable_at_two(x: int) -> object:
    return Unpicklable() if x == 2 else x


def make_unpicklable() -> Unpicklable:
    return Unpicklable()


def raise_carrying_unpicklable(x: int) -> None:
    raise ValueError("carrying", Unpicklable())


def generate(n: int) -> Iterator[int]:
    """An input without __len__."""
    yield from range(n)


def generate_then_fail(n: int) -> Iterator[int]:
    yield from range(n)
    raise Boom("input", n)


_remembered: Optional[str] = None


def remember(value: str) -> None:
    global _remembered
    _remembered = value


def remembered(_: object = None) -> Optional[str]:
    return _remembered


def node_of_task(_: object = None) -> Optional[str]:
    return lucidity.current_node()


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def scale(self, x: int) -> int:
        return x * self.factor

    @staticmethod
    def negate(x: int) -> int:
        return -x

    @classmethod
    def label(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"


# -- pools ----------------------------------------------------------------------------------------------

def stdlib_pool(*args: Any, **kwargs: Any) -> Any:
    return multiprocessing.get_context("fork").Pool(*args, **kwargs)


FACTORIES: dict[str, Callable[..., Any]] = {"multiprocessing": stdlib_pool, "lucidity": lucidity.Pool}


class PoolMaker:
    """Makes pools of one implementation; every pool it made is terminated and joined at the end of the test."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pools: list[Any] = []

    def __call__(self, processes: Optional[int] = WORKERS, **options: Any) -> Any:
        pool = FACTORIES[self.kind](processes, **options)
        self.pools.append(pool)
        return pool

    def __enter__(self) -> "PoolMaker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for pool in self.pools:
            pool.terminate()
            pool.join()


@pytest.fixture(params=sorted(FACTORIES))
def make_pool(request: pytest.FixtureRequest) -> Iterator[PoolMaker]:
    with PoolMaker(request.param) as maker:
        yield maker


@pytest.fixture
def pool(make_pool: PoolMaker) -> Any:
    """A running pool of two workers, of either implementation."""
    return make_pool()


@pytest.fixture
def lucidity_pool() -> Iterator[lucidity.Pool]:
    with PoolMaker("lucidity") as make:
        yield make()


# -- helpers --------------------------------------------------------------------------------------------

def outcomes(iterator: Any) -> list[Any]:
    """Drain an imap iterator: its values, and the type of each exception it raised, until StopIteration."""
    seen: list[Any] = []
    timed = getattr(iterator, "next", None)  # chunked imaps return a plain generator, without next(timeout)
    while True:
        try:
            seen.append(timed(timeout=RESULT_TIMEOUT) if timed else next(iterator))
        except StopIteration:
            return seen
        except Exception as exc:
            seen.append(type(exc))


def runs(values: list[Any]) -> list[int]:
    """Lengths of the runs of equal neighbours: [7, 7, 9, 4, 4] -> [2, 1, 2]."""
    return [len(list(group)) for _, group in itertools.groupby(values)]


def assert_remote_traceback(error: BaseException, function_name: str, raise_line: str) -> None:
    cause = error.__cause__
    assert isinstance(cause, RemoteTraceback), f"__cause__ is {cause!r}"
    text = str(cause)
    assert function_name in text and raise_line in text, text


# -- submitting and results -----------------------------------------------------------------------------

def test_apply_passes_args_and_kwds(pool: Any) -> None:
    assert pool.apply(power, (3,)) == 9
    assert pool.apply(power, (2,), {"exponent": 10}) == 1024
    assert pool.apply(power, kwds={"base": 5, "exponent": 3}) == 125
    assert pool.apply(power, [4, 3]) == 64
    assert pool.apply(pid_of) != os.getpid()


def test_apply_async_result_reports_ready_successful_and_value(pool: Any) -> None:
    result = pool.apply_async(add, (2, 3))
    assert result.get(timeout=RESULT_TIMEOUT) == 5
    assert result.ready() and result.successful()
    assert result.wait(timeout=0) is None
    assert result.get(timeout=0) == 5
    keyword = pool.apply_async(power, (2,), {"exponent": 5})
    assert keyword.get(timeout=RESULT_TIMEOUT) == 32


def test_map_and_map_async_keep_order_for_every_chunksize(pool: Any) -> None:
    expected = [x * x for x in range(50)]
    for chunksize in (None, 1, 3, 7, 50, 1000):
        assert pool.map(square, range(50), chunksize) == expected, chunksize
        assert pool.map(square, generate(50), chunksize=chunksize) == expected, chunksize
        assert pool.map_async(square, range(50), chunksize).get(timeout=RESULT_TIMEOUT) == expected, chunksize
        assert pool.map_async(square, generate(50), chunksize).get(timeout=RESULT_TIMEOUT) == expected, chunksize
    assert pool.map(square, range(1000)) == [x * x for x in range(1000)]
    assert pool.map(square, "") == []
    assert pool.map(len, ["a", "bb", "ccc"]) == [1, 2, 3]


def test_starmap_and_starmap_async_unpack_items_in_order(pool: Any) -> None:
    pairs = [(x, x + 1) for x in range(30)]
    expected = [a + b for a, b in pairs]
    for chunksize in (None, 1, 4, 30, 100):
        assert pool.starmap(add, pairs, chunksize) == expected, chunksize
        assert pool.starmap(add, iter(pairs), chunksize=chunksize) == expected, chunksize
        assert pool.starmap_async(add, pairs, chunksize).get(timeout=RESULT_TIMEOUT) == expected, chunksize
        assert pool.starmap_async(add, iter(pairs), chunksize).get(timeout=RESULT_TIMEOUT) == expected, chunksize


def test_imap_keeps_order_and_imap_unordered_yields_everything(pool: Any) -> None:
    expected = [x * x for x in range(40)]
    assert list(pool.imap(square, range(40))) == expected
    assert sorted(pool.imap_unordered(square, range(40))) == expected
    for chunksize in (1, 2, 5, 40, 1000):
        assert list(pool.imap(square, range(40), chunksize)) == expected, chunksize
        assert list(pool.imap(square, generate(40), chunksize=chunksize)) == expected, chunksize
        assert sorted(pool.imap_unordered(square, range(40), chunksize)) == expected, chunksize
        assert sorted(pool.imap_unordered(square, generate(40), chunksize=chunksize)) == expected, chunksize


def test_imap_runs_far_ahead_of_a_consumer_and_behind_it(pool: Any) -> None:
    many = 3000  # more than lucidity's read-ahead window of chunks
    assert list(pool.imap(square, range(many))) == [x * x for x in range(many)]
    assert sorted(pool.imap_unordered(square, generate(many))) == [x * x for x in range(many)]
    ordered = pool.imap(square, range(many))
    assert [ordered.next(timeout=RESULT_TIMEOUT) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert list(ordered) == [x * x for x in range(5, many)]


def test_imap_keeps_order_when_later_items_finish_first(pool: Any) -> None:
    delays = [0.3, 0.2, 0.1, 0.0, 0.0]
    assert list(pool.imap(sleep_for, delays)) == delays
    assert sorted(pool.imap_unordered(sleep_for, delays)) == sorted(delays)


def test_empty_inputs_give_empty_results(pool: Any) -> None:
    assert pool.map(square, []) == []
    assert pool.map(square, generate(0)) == []
    assert pool.map(square, [], chunksize=3) == []
    assert pool.starmap(add, []) == []
    assert pool.starmap(add, iter([])) == []
    empty = pool.map_async(square, [])
    assert empty.ready() and empty.successful() and empty.get(timeout=0) == []
    assert pool.starmap_async(add, iter([])).get(timeout=RESULT_TIMEOUT) == []
    for chunksize in (1, 3):
        assert list(pool.imap(square, [], chunksize)) == []
        assert list(pool.imap(square, generate(0), chunksize)) == []
        assert list(pool.imap_unordered(square, [], chunksize)) == []
        assert list(pool.imap_unordered(square, generate(0), chunksize)) == []


def test_results_not_ready_time_out_with_multiprocessing_timeout_error(pool: Any, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    single = pool.apply_async(wait_for_file, (gate,))
    mapped = pool.map_async(wait_for_file, [gate] * 3, chunksize=1)
    ordered = pool.imap(wait_for_file, [gate] * 2)
    unordered = pool.imap_unordered(wait_for_file, [gate] * 2)
    for result in (single, mapped):
        assert not result.ready()
        with pytest.raises(ValueError):
            result.successful()
        assert result.wait(timeout=NOT_READY_TIMEOUT) is None
        with pytest.raises(multiprocessing.TimeoutError) as waited:
            result.get(timeout=NOT_READY_TIMEOUT)
        assert type(waited.value) is multiprocessing.TimeoutError
    for iterator in (ordered, unordered):
        with pytest.raises(multiprocessing.TimeoutError) as waited:
            iterator.next(timeout=NOT_READY_TIMEOUT)
        assert type(waited.value) is multiprocessing.TimeoutError

    Path(gate).touch()
    assert single.get(timeout=RESULT_TIMEOUT) == gate and single.successful()
    assert mapped.get(timeout=RESULT_TIMEOUT) == [gate] * 3 and mapped.successful()
    for iterator in (ordered, unordered):
        assert [iterator.next(timeout=RESULT_TIMEOUT), iterator.next(timeout=RESULT_TIMEOUT)] == [gate, gate]
        with pytest.raises(StopIteration):
            iterator.next(timeout=RESULT_TIMEOUT)


def test_values_round_trip_with_their_types(pool: Any) -> None:
    values = [None, True, 3, 2.5, 1 + 2j, "text", b"bytes", bytearray(b"mutable"), (1, (2, 3)), [1, [2]],
              {"a": {1, 2}}, frozenset({4}), Point(1, 2), ValueError("as a value"), b"\x00" * 5_000_000,
              bytearray(3_000_000), list(range(100_000))]
    for value in values:
        echoed = pool.apply(identity, (value,))
        assert type(echoed) is type(value)
        if isinstance(value, Exception):
            assert echoed.args == value.args
        else:
            assert echoed == value
    assert pool.map(identity, values[:13], chunksize=4) == values[:13]


def test_numpy_arrays_arrive_writable_and_come_back_writable(pool: Any) -> None:
    numpy = pytest.importorskip("numpy")
    for array in (numpy.arange(10), numpy.arange(2_000_000, dtype=numpy.float64).reshape(1000, 2000)):
        incremented = pool.apply(increment_in_place, (array,))
        assert incremented.dtype == array.dtype and incremented.shape == array.shape
        assert (incremented == array + 1).all()
        assert array.flat[0] == 0  # the task changed its own copy
        echoed = pool.apply(identity, (array,))
        assert echoed.flags.writeable
        echoed.flat[0] = 7
        assert array.flat[0] == 0


def test_functions_that_pickle_by_reference(pool: Any) -> None:
    assert pool.map(abs, [-1, 2, -3]) == [1, 2, 3]
    assert pool.map(str.upper, ["a", "b"]) == ["A", "B"]
    assert pool.starmap(operator.mul, [(2, 3), (4, 5)]) == [6, 20]
    assert pool.map(functools.partial(power, exponent=3), [2, 3]) == [8, 27]
    assert pool.map(Scaler(3).scale, [1, 2]) == [3, 6]
    assert pool.map(Scaler.negate, [1, 2]) == [-1, -2]
    assert pool.apply(Scaler.label, (7,)) == "Scaler:7"


def test_pool_serves_several_threads_at_once(pool: Any) -> None:
    results: dict[int, Any] = {}

    def use_pool(start: int) -> None:
        results[start] = (pool.map(square, range(start, start + 100), chunksize=7),
                          pool.apply_async(add, (start, 1)).get(timeout=RESULT_TIMEOUT),
                          list(pool.imap(square, range(start, start + 50))))

    threads = [threading.Thread(target=use_pool, args=(start,)) for start in range(0, 400, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RESULT_TIMEOUT)
        assert not thread.is_alive()
    assert results == {start: ([x * x for x in range(start, start + 100)], start + 1,
                               [x * x for x in range(start, start + 50)]) for start in range(0, 400, 100)}


# -- callbacks ------------------------------------------------------------------------------------------

def test_apply_async_calls_callback_with_value_or_error_callback_with_exception(pool: Any) -> None:
    values: list[Any] = []
    errors: list[BaseException] = []
    good = pool.apply_async(square, (6,), callback=values.append, error_callback=errors.append)
    assert good.get(timeout=RESULT_TIMEOUT) == 36
    assert values == [36] and errors == []  # the callback has run by the time the result is ready

    bad = pool.apply_async(raise_boom, ("callback", 1), callback=values.append, error_callback=errors.append)
    bad.wait(timeout=RESULT_TIMEOUT)
    assert bad.ready() and not bad.successful()
    assert values == [36]
    assert [(type(e), e.args) for e in errors] == [(Boom, ("callback", 1))]
    with pytest.raises(Boom) as raised:
        bad.get(timeout=0)
    assert raised.value is errors[0]


def test_map_async_calls_callback_with_the_list_or_error_callback_with_exception(pool: Any) -> None:
    values: list[Any] = []
    errors: list[BaseException] = []
    good = pool.map_async(square, range(10), 3, callback=values.append, error_callback=errors.append)
    assert good.get(timeout=RESULT_TIMEOUT) == [x * x for x in range(10)]
    assert values == [[x * x for x in range(10)]] and errors == []

    bad = pool.map_async(fail_on_three, range(10), 2, callback=values.append, error_callback=errors.append)
    bad.wait(timeout=RESULT_TIMEOUT)
    assert bad.ready() and not bad.successful()
    assert len(values) == 1
    assert [(type(e), e.args) for e in errors] == [(Boom, ("three", 3))]
    with pytest.raises(Boom) as raised:
        bad.get(timeout=0)
    assert raised.value is errors[0]

    starred = pool.starmap_async(add, [(1, 2), (3, 4)], callback=values.append)
    assert starred.get(timeout=RESULT_TIMEOUT) == [3, 7]
    assert values[-1] == [3, 7]


# -- errors raised by tasks -----------------------------------------------------------------------------

def test_task_exception_reraises_with_its_type_args_and_remote_traceback(pool: Any) -> None:
    with pytest.raises(Boom) as applied:
        pool.apply(raise_boom, ("bad", 7))
    assert type(applied.value) is Boom and applied.value.args == ("bad", 7)
    assert_remote_traceback(applied.value, "raise_boom", "raise Boom(message, code)")

    with pytest.raises(Boom) as asynchronous:
        pool.apply_async(raise_boom, ("async", 8)).get(timeout=RESULT_TIMEOUT)
    assert asynchronous.value.args == ("async", 8)
    assert_remote_traceback(asynchronous.value, "raise_boom", "raise Boom(message, code)")

    for chunksize in (None, 1, 4):
        with pytest.raises(Boom) as mapped:
            pool.map(fail_on_three, range(10), chunksize)
        assert mapped.value.args == ("three", 3)
        assert_remote_traceback(mapped.value, "fail_on_three", 'raise Boom("three", x)')

    with pytest.raises(Boom) as starred:
        pool.starmap(raise_boom, [("star", 9)])
    assert starred.value.args == ("star", 9)
    assert_remote_traceback(starred.value, "raise_boom", "raise Boom(message, code)")

    with pytest.raises(ZeroDivisionError) as builtin:
        pool.apply(divide, (1, 0))
    assert_remote_traceback(builtin.value, "divide", "return a / b")

    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]  # the pool still serves


def test_imap_raises_a_failed_item_in_its_place(pool: Any) -> None:
    # One item at a time, iteration goes on past the failure; with chunks, the generator ends there.
    assert outcomes(pool.imap(fail_on_three, range(6))) == [0, 1, 2, Boom, 4, 5]
    assert outcomes(pool.imap(fail_on_three, range(6), 2)) == [0, 1, Boom]
    unordered = outcomes(pool.imap_unordered(fail_on_three, range(6)))
    assert sorted(x for x in unordered if x is not Boom) == [0, 1, 2, 4, 5] and unordered.count(Boom) == 1

    iterator = pool.imap(fail_on_three, [3])
    with pytest.raises(Boom) as raised:
        iterator.next(timeout=RESULT_TIMEOUT)
    assert raised.value.args == ("three", 3)
    assert_remote_traceback(raised.value, "fail_on_three", 'raise Boom("three", x)')


def test_input_generator_that_raises(pool: Any) -> None:
    # map and starmap read the whole input first: the error comes from the call itself.
    with pytest.raises(Boom) as mapped:
        pool.map(square, generate_then_fail(3))
    assert mapped.value.args == ("input", 3)
    with pytest.raises(Boom):
        pool.map_async(square, generate_then_fail(3))
    with pytest.raises(Boom):
        pool.starmap(add, ((x, x) for x in generate_then_fail(3)))
    # imap fails at the position where the input broke, after the items before it.
    assert outcomes(pool.imap(square, generate_then_fail(3))) == [0, 1, 4, Boom]
    assert outcomes(pool.imap(square, generate_then_fail(5), 2)) == [0, 1, 4, 9, Boom]
    unordered = outcomes(pool.imap_unordered(square, generate_then_fail(3)))
    assert sorted(x for x in unordered if x is not Boom) == [0, 1, 4] and unordered.count(Boom) == 1
    failing = pool.imap(square, generate_then_fail(0))
    with pytest.raises(Boom) as raised:
        failing.next(timeout=RESULT_TIMEOUT)
    assert raised.value.args == ("input", 0)
    assert pool.apply(square, (3,)) == 9


def test_unpicklable_result_fails_that_task_alone_with_maybe_encoding_error(pool: Any) -> None:
    with pytest.raises(MaybeEncodingError) as applied:
        pool.apply(make_unpicklable)
    assert "cannot pickle Unpicklable" in str(applied.value)
    with pytest.raises(MaybeEncodingError):
        pool.apply_async(make_unpicklable).get(timeout=RESULT_TIMEOUT)
    with pytest.raises(MaybeEncodingError):
        pool.map(unpicklable_at_two, range(6), chunksize=1)
    assert outcomes(pool.imap(unpicklable_at_two, range(5))) == [0, 1, MaybeEncodingError, 3, 4]
    assert pool.map(square, range(6)) == [0, 1, 4, 9, 16, 25]


def test_unpicklable_exception_fails_that_task_alone_with_maybe_encoding_error(pool: Any) -> None:
    # The stdlib wraps whatever it cannot send back, an exception included, in MaybeEncodingError.
    with pytest.raises(MaybeEncodingError) as applied:
        pool.apply(raise_carrying_unpicklable, (1,))
    assert "cannot pickle Unpicklable" in str(applied.value)
    with pytest.raises(MaybeEncodingError):
        pool.map(raise_carrying_unpicklable, range(3))
    assert pool.apply(square, (5,)) == 25


# -- lifecycle and misuse -------------------------------------------------------------------------------

def test_close_then_join_finishes_work_already_submitted(pool: Any) -> None:
    slow = pool.apply_async(sleep_for, (0.3,))
    mapped = pool.map_async(square, range(20), chunksize=3)
    ordered = pool.imap(square, range(3000))
    unordered = pool.imap_unordered(square, generate(20), 4)
    pool.close()
    pool.close()  # closing twice is allowed
    pool.join()
    assert slow.ready() and slow.get(timeout=0) == 0.3
    assert mapped.ready() and mapped.get(timeout=0) == [x * x for x in range(20)]
    assert list(ordered) == [x * x for x in range(3000)]
    assert sorted(unordered) == [x * x for x in range(20)]
    pool.join()  # and joining twice


def test_closed_pool_refuses_every_submission(pool: Any) -> None:
    pool.close()
    submissions: list[Callable[[], Any]] = [
        lambda: pool.apply(square, (1,)),
        lambda: pool.apply_async(square, (1,)),
        lambda: pool.map(square, [1]),
        lambda: pool.map_async(square, [1]),
        lambda: pool.imap(square, [1]),
        lambda: pool.imap_unordered(square, [1]),
        lambda: pool.starmap(add, [(1, 2)]),
        lambda: pool.starmap_async(add, [(1, 2)]),
        lambda: pool.__enter__(),
    ]
    for submit in submissions:
        with pytest.raises(ValueError, match="^Pool not running$"):
            submit()
    pool.join()


def test_join_on_a_running_pool_raises_value_error(pool: Any) -> None:
    with pytest.raises(ValueError, match="^Pool is still running$"):
        pool.join()
    assert pool.apply(square, (2,)) == 4  # and the pool still serves


def test_context_manager_terminates_on_exit_without_waiting_for_tasks(make_pool: PoolMaker, tmp_path: Path) -> None:
    pool = make_pool()
    with pool as entered:
        assert entered is pool
        assert entered.apply(square, (3,)) == 9
        entered.apply_async(wait_for_file, (str(tmp_path / "never"),))
        exit_started = time.monotonic()
    pool.join()  # after close() instead of terminate(), this would wait for the task
    assert time.monotonic() - exit_started < EXIT_BOUND
    with pytest.raises(ValueError, match="^Pool not running$"):
        pool.apply(square, (1,))
    pool.terminate()  # terminating twice is allowed


def test_terminate_then_join(make_pool: PoolMaker) -> None:
    pool = make_pool()
    assert pool.map(square, range(4)) == [0, 1, 4, 9]
    pool.terminate()
    pool.join()
    with pytest.raises(ValueError, match="^Pool not running$"):
        pool.map(square, [1])


@pytest.mark.parametrize("options, error", [
    ({"processes": 0}, ValueError),
    ({"processes": -1}, ValueError),
    ({"maxtasksperchild": 0}, ValueError),
    ({"maxtasksperchild": -2}, ValueError),
    ({"maxtasksperchild": 1.5}, ValueError),
    ({"initializer": 5}, TypeError),
], ids=["processes=0", "processes=-1", "maxtasksperchild=0", "maxtasksperchild=-2", "maxtasksperchild=1.5",
        "initializer=5"])
def test_bad_constructor_arguments_raise_as_the_stdlib(make_pool: PoolMaker, options: dict[str, Any],
                                                       error: type[Exception]) -> None:
    options = {"processes": WORKERS, **options}
    with pytest.raises(error):
        make_pool(**options)


def test_imap_with_chunksize_below_one_raises_value_error(pool: Any) -> None:
    for chunksize in (0, -1):
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            pool.imap(square, [1, 2], chunksize)
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            pool.imap_unordered(square, [1, 2], chunksize)
    assert list(pool.imap(square, [1, 2])) == [1, 4]


def test_pickling_a_pool_raises_not_implemented_error(pool: Any) -> None:
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


EXIT_SCRIPT = """
import multiprocessing, sys
import lucidity
make = multiprocessing.get_context("fork").Pool if sys.argv[1] == "multiprocessing" else lucidity.Pool
pool = make(2)  # a module global: still referenced while the interpreter shuts down
assert pool.apply(abs, (-2,)) == 2
if sys.argv[2] == "closed":
    pool.close()
    pool.join()
print("done")
"""


@pytest.mark.parametrize("state", ["closed", "running"])
def test_interpreter_exit_with_a_pool_in_a_global_is_clean(make_pool: PoolMaker, tmp_path: Path,
                                                            state: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    project = os.path.dirname(os.path.dirname(os.path.abspath(lucidity.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([project, os.environ.get("PYTHONPATH", "")]))
    env.pop("LUCIDITY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(script), make_pool.kind, state], capture_output=True, text=True,
                          timeout=60, env=env)
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
    # Log lines of a loaded machine may appear; an error raised during shutdown may not.
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_dropping_a_running_pool_warns_and_stops_its_workers(make_pool: PoolMaker) -> None:
    pool = FACTORIES[make_pool.kind](WORKERS)  # not kept by make_pool, so that it can be collected
    assert pool.apply(square, (2,)) == 4
    with pytest.warns(ResourceWarning, match="unclosed running"):
        del pool
        gc.collect()
    # no_leaked_processes (conftest) checks that the workers stop


# -- initializer and maxtasksperchild -------------------------------------------------------------------

def test_initializer_runs_on_each_worker_before_its_tasks(make_pool: PoolMaker) -> None:
    pool = make_pool(initializer=remember, initargs=("ready",))
    assert pool.map(remembered, range(8), chunksize=1) == ["ready"] * 8
    assert pool.apply(remembered) == "ready"
    assert remembered() is None  # the caller's own module is untouched

    renewed = make_pool(initializer=remember, initargs=("fresh",), maxtasksperchild=1)
    assert renewed.map(remembered, range(4), chunksize=1) == ["fresh"] * 4


def test_maxtasksperchild_one_runs_each_chunk_on_a_fresh_worker(make_pool: PoolMaker) -> None:
    # Each chunk is one task, so with a fresh worker per task the pids show where the chunks split.
    pool = make_pool(maxtasksperchild=1)
    # First, while the pool has all its workers: the stdlib sizes default chunks by the workers alive now.
    by_default = pool.map(pid_of, range(20))  # chunksize ceil(20 / (2 workers * 4)) = 3
    assert runs(by_default) == [3, 3, 3, 3, 3, 3, 2]
    applied = [pool.apply(pid_of) for _ in range(4)]
    assert len(set(applied)) == 4
    explicit = pool.map(pid_of, range(10), chunksize=4)
    assert runs(explicit) == [4, 4, 2]
    starred = pool.starmap(pid_of_pair, [(x, x) for x in range(5)], chunksize=2)
    assert runs(starred) == [2, 2, 1]
    ordered = list(pool.imap(pid_of, range(7), chunksize=3))
    assert runs(ordered) == [3, 3, 1]
    one_by_one = list(pool.imap(pid_of, range(3)))
    assert runs(one_by_one) == [1, 1, 1]
    chunks = 4 + 7 + 3 + 3 + 3 + 3
    every_pid = applied + by_default + explicit + starred + ordered + one_by_one
    assert len(set(every_pid)) == chunks
    assert os.getpid() not in every_pid


def test_default_processes_is_the_cpu_count(make_pool: PoolMaker) -> None:
    # Seen through the default chunksize, ceil(len / (processes * 4)), as in the test above.
    pool = make_pool(None, maxtasksperchild=1)
    items = 20
    chunksize = -(-items // ((os.cpu_count() or 1) * 4))
    expected = [len(range(start, min(start + chunksize, items))) for start in range(0, items, chunksize)]
    assert runs(pool.map(pid_of, range(items))) == expected


def test_maxtasksperchild_caps_tasks_per_worker(make_pool: PoolMaker) -> None:
    pool = make_pool(maxtasksperchild=2)
    pids = [pool.apply(pid_of) for _ in range(8)]
    assert max(collections.Counter(pids).values()) <= 2
    assert len(set(pids)) >= 4


# -- lucidity alone: the documented differences -----------------------------------------------------------

def test_lucidity_raises_the_picklers_error_at_submit_for_unpicklable_function_or_argument(
        lucidity_pool: lucidity.Pool) -> None:
    # The stdlib raises the pickler's exception from get(); lucidity raises it, with a note, before sending.
    submissions: list[Callable[[], Any]] = [
        lambda: lucidity_pool.apply_async(square, (Unpicklable(),)),
        lambda: lucidity_pool.apply_async(power, (2,), {"exponent": Unpicklable()}),
        lambda: lucidity_pool.apply(square, (Unpicklable(),)),
        lambda: lucidity_pool.map(square, [1, Unpicklable(), 3]),
        lambda: lucidity_pool.map_async(square, [1, Unpicklable(), 3]),
        lambda: lucidity_pool.starmap(add, [(1, Unpicklable())]),
        lambda: lucidity_pool.starmap_async(add, [(1, Unpicklable())]),
        lambda: lucidity_pool.apply_async(UnpicklableCallable(), (1,)),
        lambda: lucidity_pool.map(UnpicklableCallable(), [1, 2]),
        lambda: lucidity_pool.imap(UnpicklableCallable(), [1, 2]),
        lambda: lucidity_pool.imap_unordered(UnpicklableCallable(), [1, 2]),
    ]
    for submit in submissions:
        with pytest.raises(TypeError, match="Unpicklable") as raised:
            submit()
        assert any("nothing was sent" in note for note in getattr(raised.value, "__notes__", ["nothing was sent"]))
    assert lucidity_pool.map(square, range(4)) == [0, 1, 4, 9]


def test_lucidity_imap_fails_an_unpicklable_item_in_its_place(lucidity_pool: lucidity.Pool) -> None:
    # imap reads its input after returning, so the error takes the item's place.
    seen = outcomes(lucidity_pool.imap(square, [1, Unpicklable(), 3]))
    assert seen == [1, TypeError, 9]


def test_lucidity_runs_lambdas_and_closures(lucidity_pool: lucidity.Pool) -> None:
    assert lucidity_pool.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
    assert lucidity_pool.apply(make_adder(10), (1,)) == 11
    assert lucidity_pool.apply_async(lambda: "called").get(timeout=RESULT_TIMEOUT) == "called"
    assert list(lucidity_pool.imap(make_adder(100), range(3))) == [100, 101, 102]
    assert lucidity_pool.starmap(lambda a, b: a * b, [(2, 3), (4, 5)]) == [6, 20]
    # An argument only dill can carry travels too.
    assert lucidity_pool.apply(pow_of, (lambda: 3,)) == 9


def test_lucidity_terminate_fails_unfinished_results(lucidity_pool: lucidity.Pool, tmp_path: Path) -> None:
    never = str(tmp_path / "never")
    single = lucidity_pool.apply_async(wait_for_file, (never,))
    mapped = lucidity_pool.map_async(wait_for_file, [never] * 4, chunksize=1)
    ordered = lucidity_pool.imap(wait_for_file, [never] * 3)
    lucidity_pool.terminate()
    for result in (single, mapped):
        with pytest.raises(RuntimeError, match="terminated before this task finished"):
            result.get(timeout=RESULT_TIMEOUT)
        assert result.ready() and not result.successful()
    with pytest.raises(RuntimeError, match="terminated before this task finished"):
        ordered.next(timeout=RESULT_TIMEOUT)


def test_lucidity_current_node_is_the_node_inside_a_task_and_none_outside(lucidity_pool: lucidity.Pool) -> None:
    assert lucidity.current_node() is None
    assert lucidity_pool.apply(node_of_task) == "local"
    assert lucidity_pool.map(node_of_task, range(4), chunksize=1) == ["local"] * 4


def test_lucidity_imap_reads_an_endless_input_lazily(lucidity_pool: lucidity.Pool) -> None:
    assert list(itertools.islice(lucidity_pool.imap(square, itertools.count()), 10)) == [x * x for x in range(10)]
