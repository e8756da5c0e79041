"""Structural guards on speed that cannot be noisy: no serializer copy of big arrays, functions sent once."""

from __future__ import annotations

import os

import numpy as np
import pytest

import lucidity

SIZE = 64 * 2**20
REDUCED = [0]  # in the client: how often the function was serialized
LOADED = [0]  # in each worker: how often it was deserialized there


def buffer_origin(array):
    """Whether the array owns its memory, and the type of the object at the end of its base chain."""
    base = array
    while getattr(base, "base", None) is not None:
        base = base.base
    return bool(array.flags.owndata), type(base).__name__


def echo_with_origin(array):
    return array, buffer_origin(array)


class Counted:
    """A callable whose serialization and deserialization leave a count in the process that does them."""

    def __call__(self, x):
        return x, os.getpid(), LOADED[0]

    def __reduce__(self):
        REDUCED[0] += 1
        return (_load_counted, ())


def _load_counted():
    LOADED[0] += 1
    return counted


counted = Counted()


@pytest.fixture(scope="module")
def pool():
    with lucidity.Pool(2) as p:
        yield p


def test_a_64_mib_array_crosses_without_a_serialization_copy(pool):
    array = np.arange(SIZE // 8, dtype=np.float64)
    echoed, (owns, base) = pool.apply(echo_with_origin, (array,))
    # On the worker the argument is a view of the received message, not a copy made by the unpickler ...
    assert (owns, base) == (False, "memoryview")
    # ... and so is the result on the client.
    assert buffer_origin(echoed) == (False, "memoryview")
    assert np.array_equal(echoed, array)


def test_a_function_is_serialized_once_and_sent_once_per_worker(pool):
    REDUCED[0] = 0
    results = pool.map(counted, range(400), chunksize=1)
    assert [x for x, _, _ in results] == list(range(400))
    assert REDUCED[0] == 1  # serialized once by this client
    per_worker = {}
    for _, pid, loads in results:
        per_worker[pid] = max(per_worker.get(pid, 0), loads)
    assert per_worker and all(loads == 1 for loads in per_worker.values())  # loaded once on each worker
