"""The lazy bounded map engine (lucidity.feed) on a real cluster, below the faces that use it.

Pool.imap, imap_unordered and Executor.map are tested against the stdlib in test_pool_conformance.py and
test_executor.py; this module pins down what the feed itself promises: the window and when it is read, the
two ways to drive it, order, errors in place, the end, the settled callback, and what stopping, cancelling
and withdrawing do to chunks read, sent and not sent.

Tasks that must stay running wait for a gate file to appear (with a bound), so a test knows which chunks
can still be cancelled instead of guessing.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from lucidity.client import Client
from lucidity.cluster import LocalCluster
from lucidity.feed import Feed, MapCall, chunks
from lucidity.options import TaskOptions

#: Seconds any blocking call here may wait for something expected to happen.
RESULT_TIMEOUT = 30.0
#: Seconds a gated task waits for its gate before it gives up.
GATE_TIMEOUT = 60.0
WORKERS = 2


class Boom(Exception):
    pass


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle Unpicklable")


def square(x: int) -> int:
    return x * x


def sleep_then(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail_on_three(x: int) -> int:
    if x == 3:
        raise Boom(x)
    return x


def gated(gate: str, marker: str) -> str:
    """Leave the file `marker`.started, wait for the file `gate`, then leave `marker`: proof that the task ran."""
    Path(marker + ".started").write_text("started")
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(marker).write_text("ran")
    return marker


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
def one_worker_client(cluster: LocalCluster) -> Iterator[Client]:
    """A client that uses one worker at a time: beyond that worker's small window, its tasks stay queued."""
    opened = Client(cluster.address, max_running=1)
    yield opened
    opened.shutdown(cancel=True)


def wait_for_file(path: str) -> None:
    """Wait (bounded) for a file that a task leaves; no event announces it to the test."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def map_call(client: Client, function: Any, mode: str = "map") -> MapCall:
    return MapCall(client, TaskOptions(), client.function(function), mode, "imap")


def drain(feed: Feed) -> list[Any]:
    """Every chunk's results, or the type of its exception, until the end."""
    seen: list[Any] = []
    while True:
        try:
            chunk = feed.next_chunk(time.monotonic() + RESULT_TIMEOUT)
        except Exception as exc:
            seen.append(type(exc))
            continue
        if chunk is None:
            return seen
        seen.append(chunk)


class Counted:
    """An input that counts how many items were read from it."""

    def __init__(self, items: Iterator[Any]) -> None:
        self.read = 0
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            self.read += 1
            yield item


def test_chunks_cut_the_input_and_name_the_positions() -> None:
    assert list(chunks(range(7), 3)) == [(range(0, 3), [0, 1, 2]), (range(3, 6), [3, 4, 5]), (range(6, 7), [6])]
    assert list(chunks([], 3)) == []
    lazy = chunks(5, 2)  # type: ignore[arg-type]  # not iterable: that fails on the first read, not before
    with pytest.raises(TypeError):
        next(lazy)


def test_fill_reads_a_window_ahead_and_each_chunk_taken_lets_one_more_in(client: Client) -> None:
    counted = Counted(iter(range(1000)))
    feed = Feed(map_call(client, square), counted, 2, window=5)
    assert counted.read == 0  # nothing is read before the feed is driven
    feed.fill()
    assert counted.read == 10  # five chunks of two
    assert feed.next_chunk(time.monotonic() + RESULT_TIMEOUT) == [0, 1]
    assert counted.read == 10  # the consumer refills: taking a chunk alone reads nothing
    feed.fill()
    assert counted.read == 12
    feed.lift()
    feed.fill()
    assert counted.read == 1000
    results = [x for chunk in iter(lambda: feed.next_chunk(time.monotonic() + RESULT_TIMEOUT), None) for x in chunk]
    assert results == [x * x for x in range(2, 1000)]


def test_run_waits_for_room_in_the_window_and_lift_lets_it_read_everything(client: Client) -> None:
    counted = Counted(iter(range(100)))
    feed = Feed(map_call(client, square), counted, 1, window=3)
    feeder = threading.Thread(target=feed.run, daemon=True)
    feeder.start()
    assert feed.next_chunk(time.monotonic() + RESULT_TIMEOUT) == [0]
    deadline = time.monotonic() + RESULT_TIMEOUT
    while counted.read < 4 and time.monotonic() < deadline:
        time.sleep(0.01)  # no event announces a read; the bound is what the test checks
    assert counted.read == 4 and feeder.is_alive()  # three chunks ahead of the one taken, then it waits
    feed.lift()
    feeder.join(RESULT_TIMEOUT)
    assert not feeder.is_alive() and counted.read == 100
    assert [x for chunk in iter(lambda: feed.next_chunk(), None) for x in chunk] == [x * x for x in range(1, 100)]


def test_ordered_results_wait_for_an_earlier_one_and_unordered_do_not(client: Client, tmp_path: Path) -> None:
    gate, ran = tmp_path / "gate", str(tmp_path / "ran")
    items = [(str(gate), ran), Unpicklable()]
    ordered = Feed(map_call(client, gated, "starmap"), items, 1)
    unordered = Feed(map_call(client, gated, "starmap"), items, 1, ordered=False)
    ordered.fill()
    unordered.fill()
    # The second chunk failed at once (the pickler refused it), while the first waits for its gate.
    with pytest.raises(TypeError):
        unordered.next_chunk(time.monotonic() + RESULT_TIMEOUT)
    with pytest.raises(TimeoutError):
        ordered.next_chunk(time.monotonic() + 0.2)
    gate.write_text("open")
    assert drain(ordered) == [[ran], TypeError]
    assert drain(unordered) == [[ran]]


def test_a_failed_chunk_raises_in_its_place_and_the_feed_goes_on(client: Client) -> None:
    feed = Feed(map_call(client, fail_on_three), range(6), 2)
    feed.fill()
    assert drain(feed) == [[0, 1], Boom, [4, 5]]


def test_an_item_the_pickler_refuses_fails_in_its_place_and_reading_goes_on(client: Client) -> None:
    feed = Feed(map_call(client, square), [1, Unpicklable(), 3], 1)
    feed.fill()
    assert drain(feed) == [[1], TypeError, [9]]


def test_an_input_that_raises_fails_at_its_position_and_ends_the_input(client: Client) -> None:
    def failing() -> Iterator[int]:
        yield from range(3)
        raise Boom("input")

    feed = Feed(map_call(client, square), failing(), 2)
    feed.fill()
    assert drain(feed) == [[0, 1], Boom]  # the chunk being read fails whole, as the stdlib's chunked imap
    not_iterable = Feed(map_call(client, square), 5, 2)  # type: ignore[arg-type]
    not_iterable.fill()
    assert drain(not_iterable) == [TypeError]


def test_the_end_comes_after_the_last_chunk_and_an_empty_input_ends_at_once(client: Client) -> None:
    feed = Feed(map_call(client, square), range(3), 2)
    feed.fill()
    assert drain(feed) == [[0, 1], [4]]
    assert feed.next_chunk() is None  # and stays the end
    empty = Feed(map_call(client, square), [], 2)
    empty.fill()
    assert empty.next_chunk() is None


def test_settled_is_called_once_every_result_arrived_taken_or_not(client: Client) -> None:
    calls: list[str] = []
    settled = threading.Event()

    def on_settled() -> None:
        calls.append("settled")
        settled.set()

    feed = Feed(map_call(client, square), range(5), 2, on_settled=on_settled)
    feed.fill()
    assert settled.wait(RESULT_TIMEOUT)
    drain(feed)
    assert calls == ["settled"]
    empty_calls: list[str] = []
    Feed(map_call(client, square), [], 1, on_settled=lambda: empty_calls.append("settled")).fill()
    assert empty_calls == ["settled"]


def test_a_deadline_raises_the_error_type_the_face_asks_for_and_the_result_still_comes(
        client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    feed = Feed(map_call(client, gated, "starmap"), [(str(gate), str(tmp_path / "ran"))], 1)
    feed.fill()
    started = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        feed.next_chunk(time.monotonic() + 0.2, concurrent.futures.TimeoutError)
    assert time.monotonic() - started >= 0.2
    with pytest.raises(Boom):
        feed.next_chunk(time.monotonic(), Boom)
    gate.write_text("open")
    assert feed.next_chunk(time.monotonic() + RESULT_TIMEOUT) == [str(tmp_path / "ran")]


def test_stop_reads_no_more_and_what_was_read_still_runs(client: Client) -> None:
    counted = Counted(itertools.count())
    feed = Feed(map_call(client, square), counted, 1, window=4)
    feed.fill()
    feed.stop()
    feed.lift()
    feed.fill()
    assert counted.read == 4
    assert drain(feed) == [[0], [1], [4], [9]]


def test_cancel_drops_the_chunks_not_sent_and_keeps_those_on_a_worker(one_worker_client: Client,
                                                                      tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    markers = [str(tmp_path / f"item-{i}") for i in range(20)]
    feed = Feed(map_call(one_worker_client, gated, "starmap"), [(str(gate), m) for m in markers], 1)
    feed.fill()
    wait_for_file(markers[0] + ".started")
    feed.cancel()
    gate.write_text("open")
    assert one_worker_client.wait_idle(RESULT_TIMEOUT)
    ran = [m for m in markers if os.path.exists(m)]
    # Only what was on its way to the one worker (its window of a few tasks) ran, and from the start.
    assert ran == markers[:len(ran)] and 1 <= len(ran) < 10


def test_withdraw_raises_cancelled_in_place_of_the_unsent_and_the_unread(one_worker_client: Client,
                                                                          tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    items = ((str(gate), str(tmp_path / f"item-{i}")) for i in itertools.count())
    feed = Feed(map_call(one_worker_client, gated, "starmap"), items, 1, window=20)
    feed.fill()
    wait_for_file(str(tmp_path / "item-0.started"))
    feed.withdraw()
    gate.write_text("open")
    seen = drain(feed)
    sent = len(seen) - seen.count(concurrent.futures.CancelledError)
    assert 1 <= sent < 10
    assert seen[:sent] == [[str(tmp_path / f"item-{i}")] for i in range(sent)]
    # The 20 read (cancelled but the sent ones) and one for the unread rest of the input.
    assert seen[sent:] == [concurrent.futures.CancelledError] * (20 - sent + 1)
