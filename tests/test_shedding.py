"""Shedding, as a user sees it: tasks queued on a worker behind one that runs long are run by other workers
instead of waiting for it (lucidity.node.shedding), and every result still arrives exactly once."""

from __future__ import annotations

from typing import Any

import pytest

import lucidity
from helpers import Rendezvous, hold
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


def _sleep_then_echo(item: tuple[int, float]) -> int:
    import time

    time.sleep(item[1])
    return item[0]
