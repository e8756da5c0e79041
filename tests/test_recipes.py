"""What widely copied recipes rely on beyond the documented API, checked against the stdlib.

Issue 9, point 4: the private attributes that recipes read (``Pool._processes``, ``len(Pool._pool)``,
``Pool._cache`` and ``MapResult._number_left``) exist with the stdlib's meaning. Point 6: ``imap``,
``imap_unordered``, ``Pool.map`` and ``Executor.map`` hold no reference to a result once it is yielded
(CPython issue 14406; CPython's test_concurrent_futures checks it with ``test_free_reference``).

Tests taking ``make_pool`` run once against ``multiprocessing.Pool`` (fork) and once against
``lucidity.Pool`` (the fixture comes from test_pool_conformance). One test runs a user's script as written
for the stdlib, in a fresh interpreter with stdout to a file. Task functions live at module level: workers
import this module by name.
"""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import lucidity
from helpers import wait_until
from scripts import run_script
from tasks import fail_on_three, square
from test_pool_conformance import RESULT_TIMEOUT, WORKERS, PoolMaker, make_pool, wait_for_file  # noqa: F401

#: Seconds between two collections while waiting for a dropped result to be collected.
POLL = 0.01


class Payload:
    """A result whose collection the test can observe."""

    def __init__(self, n: int) -> None:
        self.n = n


def make_payload(n: int) -> Payload:
    return Payload(n)


def make_payload_pair(n: int, m: int) -> Payload:
    return Payload(n + m)


def assert_collected_once_dropped(take: Callable[[], Any]) -> Any:
    """Take one result, drop it, and check it is collected while whatever yielded it lives on.

    Waits (with a deadline) rather than checking at once: the stdlib's result thread may hold a result
    for a moment after handing it over, as CPython's own test allows.
    """
    item = take()
    collected = threading.Event()
    weakref.finalize(item, collected.set)
    n = item.n
    del item
    deadline = time.monotonic() + RESULT_TIMEOUT
    while not collected.wait(POLL):
        gc.collect()
        if time.monotonic() > deadline:
            raise AssertionError(f"result {n} is still referenced after the consumer dropped it")
    return n


def touch(path: Path) -> None:
    path.write_text("open")


# -- point 4: the private attributes recipes read ---------------------------------------------------------

def test_processes_and_pool_size_as_the_stdlib(make_pool: PoolMaker) -> None:
    pool = make_pool()
    assert pool._processes == WORKERS
    assert isinstance(pool._pool, list) and len(pool._pool) == WORKERS
    identities = [worker._identity for worker in pool._pool]
    assert all(len(identity) == 1 and isinstance(identity[0], int) for identity in identities)
    assert len(set(identities)) == WORKERS
    assert all(hasattr(worker, "pid") for worker in pool._pool)
    assert all(worker.is_alive() for worker in pool._pool)
    pool.close()
    pool.join()
    assert not any(worker.is_alive() for worker in pool._pool)


def test_default_chunksize_recipe_sees_the_pool_size(make_pool: PoolMaker) -> None:
    # The stdlib's own rule, as recipes copy it: chunksize = ceil(len(items) / (len(pool._pool) * 4)).
    pool = make_pool()
    chunksize, extra = divmod(100, len(pool._pool) * 4)
    result = pool.map_async(square, range(100))
    assert result._chunksize == chunksize + bool(extra)
    assert result.get(timeout=RESULT_TIMEOUT) == [x * x for x in range(100)]


def test_cache_counts_the_results_not_ready_and_empties_after_close_and_join(make_pool: PoolMaker,
                                                                            tmp_path: Path) -> None:
    pool = make_pool()
    gate = tmp_path / "gate"
    assert len(pool._cache) == 0
    single = pool.apply_async(wait_for_file, (str(gate),))
    mapped = pool.map_async(wait_for_file, [str(gate)] * 4, chunksize=2)
    ordered = pool.imap(wait_for_file, [str(gate)] * 3)
    empty = pool.map_async(square, [])  # ready at once: never outstanding
    assert empty.ready() and empty.get(timeout=RESULT_TIMEOUT) == []
    assert len(pool._cache) == 3
    assert pool._cache[single._job] is single and pool._cache[mapped._job] is mapped  # recipe: _cache[r._job]
    touch(gate)
    assert single.get(timeout=RESULT_TIMEOUT) == str(gate)
    assert mapped.get(timeout=RESULT_TIMEOUT) == [str(gate)] * 4
    assert [ordered.next(timeout=RESULT_TIMEOUT) for _ in range(3)] == [str(gate)] * 3
    pool.close()
    pool.join()
    assert pool._cache == {}


def test_cache_lets_a_recipe_throttle_submissions(make_pool: PoolMaker) -> None:
    # The recipe: before each apply_async, wait while len(pool._cache) is at the bound.
    pool = make_pool()
    bound = 3
    results = []
    for x in range(12):
        wait_until(lambda: len(pool._cache) < bound, RESULT_TIMEOUT, "an outstanding result to finish")
        results.append(pool.apply_async(square, (x,)))
        assert len(pool._cache) <= bound
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [x * x for x in range(12)]


def test_number_left_counts_the_chunks_not_done(make_pool: PoolMaker, tmp_path: Path) -> None:
    pool = make_pool()
    gates = [tmp_path / f"gate-{i}" for i in range(6)]
    result = pool.map_async(wait_for_file, [str(g) for g in gates], chunksize=2)
    assert result._number_left == 3 and result._chunksize == 2
    for gate in gates[:2]:  # the first chunk
        touch(gate)
    wait_until(lambda: result._number_left == 2, RESULT_TIMEOUT, "the first chunk to count as done")
    assert not result.ready()
    for gate in gates[2:]:
        touch(gate)
    assert result.get(timeout=RESULT_TIMEOUT) == [str(g) for g in gates]
    assert result._number_left == 0


def test_number_left_counts_a_failed_chunk_as_done(make_pool: PoolMaker) -> None:
    pool = make_pool()
    result = pool.map_async(fail_on_three, range(6), chunksize=2)
    result.wait(RESULT_TIMEOUT)
    assert result.ready() and not result.successful()
    assert result._number_left == 0
    assert pool.map_async(square, [])._number_left == 0


RECIPES = """
    import time
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def work(x):
        return x * x

    if __name__ == "__main__":
        pool = Pool(2)
        print("workers", pool._processes, len(pool._pool))
        pending = []
        for i in range(10):
            while len(pool._cache) >= 3:  # at most three outstanding
                time.sleep(0.01)
            pending.append(pool.apply_async(work, (i,)))
        result = pool.map_async(work, range(20), chunksize=5)
        while not result.ready():
            left = result._number_left
            assert 0 <= left <= 4, left
            time.sleep(0.01)
        print("left", result._number_left)
        print("sums", sum(r.get() for r in pending), sum(result.get()))
        pool.close()
        pool.join()
        print("outstanding", len(pool._cache))
"""


def test_the_recipes_in_a_users_script_print_what_they_print_on_the_stdlib(tmp_path: Path) -> None:
    runs = {flavour: run_script(RECIPES, tmp_path / flavour, flavour).check() for flavour in ("fork", "lucidity")}
    assert runs["lucidity"].stdout == runs["fork"].stdout == "workers 2 2\nleft 0\nsums 285 2470\noutstanding 0\n"


# -- point 6: no reference to a result once it is yielded -------------------------------------------------

@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_holds_no_reference_to_a_yielded_result(make_pool: PoolMaker, method: str) -> None:
    pool = make_pool()
    iterator = getattr(pool, method)(make_payload, range(6))
    seen = [assert_collected_once_dropped(lambda: iterator.next(timeout=RESULT_TIMEOUT)) for _ in range(3)]
    seen += [payload.n for payload in iterator]  # the iterator lived on while each result was collected
    assert sorted(seen) == list(range(6))


def test_map_results_die_with_the_list_while_the_pool_lives(make_pool: PoolMaker) -> None:
    pool = make_pool()
    for run in (lambda: pool.map(make_payload, range(6), chunksize=2),
                lambda: pool.starmap(make_payload_pair, [(x, 0) for x in range(6)], chunksize=4),
                lambda: pool.map_async(make_payload, range(6)).get(timeout=RESULT_TIMEOUT)):
        results = run()
        assert [p.n for p in results] == list(range(6))
        assert assert_collected_once_dropped(results.pop) == 5
        holder = [results]
        del results
        assert assert_collected_once_dropped(lambda: holder.pop()[0]) == 0


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_lucidity_chunked_imap_holds_no_reference_to_a_yielded_result(method: str) -> None:
    # Better than the stdlib, whose generator over chunks keeps the rest of the current chunk's list.
    with lucidity.Pool(WORKERS) as pool:
        iterator = getattr(pool, method)(make_payload, range(12), chunksize=4)
        seen = [assert_collected_once_dropped(lambda: next(iterator)) for _ in range(6)]
        seen += [payload.n for payload in iterator]
        assert sorted(seen) == list(range(12))


@pytest.fixture(params=["ProcessPoolExecutor", "lucidity"])
def any_executor(request: pytest.FixtureRequest) -> Iterator[concurrent.futures.Executor]:
    if request.param == "lucidity":
        made: concurrent.futures.Executor = lucidity.Executor(WORKERS)
    else:
        made = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))
    with made:
        yield made


@pytest.mark.parametrize("chunksize", [1, 3])
def test_executor_map_holds_no_reference_to_a_yielded_result(any_executor: concurrent.futures.Executor,
                                                             chunksize: int) -> None:
    # CPython's test_free_reference: the map's iterator lives on while each result it yielded is collected.
    iterator = any_executor.map(make_payload, range(9), chunksize=chunksize)
    seen = [assert_collected_once_dropped(lambda: next(iterator)) for _ in range(5)]
    seen += [payload.n for payload in iterator]
    assert seen == list(range(9))


def refuse(value: object) -> None:
    raise RuntimeError(f"callback refused {value!r}")


def test_lucidity_a_raising_callback_leaves_its_result_ready_and_join_returns() -> None:
    # The stdlib's result handler thread dies here and the pool hangs; lucidity logs the callback's error.
    pool = lucidity.Pool(WORKERS)
    try:
        single = pool.apply_async(square, (3,), callback=refuse)
        mapped = pool.map_async(square, range(4), callback=refuse)
        assert single.get(timeout=RESULT_TIMEOUT) == 9
        assert mapped.get(timeout=RESULT_TIMEOUT) == [0, 1, 4, 9]
        pool.close()
        pool.join()
        assert pool._cache == {}
    finally:
        pool.terminate()
