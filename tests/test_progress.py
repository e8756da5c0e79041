"""Progress bars (issue 14, item 1): ``progress=`` on every map of the faces, `lucidity.progress`, and
`lucidity.report_progress`, against a real embedded cluster.

What is checked: the count is of finished items, item by item inside a chunk that is still running (a held
item stops the chunk half-way; the callback must see the items before it); the bar closes on success, on
error, on terminate and on Ctrl-C; a task's own reports reach the caller; without tqdm, ``progress=True``
says how to install it.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any, Optional

import pytest
from tqdm import tqdm

import lucidity
from helpers import TESTS, Rendezvous, connected, hold, stop_process, wait_until

WAIT = 30.0


def step(args: tuple[int, Optional[tuple[str, int]]]) -> int:
    """Item `x`; the item given an address holds until the test releases it."""
    x, address = args
    if address is not None:
        hold(address, f"item {x}")
    return x


def square(x: int) -> int:
    return x * x


def fails_at_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def add(a: int, b: int) -> int:
    return a + b


def reporting(address: tuple[str, int]) -> str:
    lucidity.report_progress(2, 5)
    hold(address, "reported")
    return "done"


class Seen:
    """A progress callable recording every ``(done, total)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Optional[float]]] = []
        self._lock = threading.Lock()

    def __call__(self, done: float, total: Optional[float]) -> None:
        with self._lock:
            self.calls.append((done, total))

    @property
    def last(self) -> Optional[tuple[float, Optional[float]]]:
        with self._lock:
            return self.calls[-1] if self.calls else None

    def saw(self, value: tuple[float, Optional[float]]) -> bool:
        with self._lock:
            return value in self.calls


class RecordingBar(tqdm):  # type: ignore[misc]
    """A tqdm bar writing to a buffer, and remembering its instances and whether each was closed."""

    made: list["RecordingBar"] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)
        self.was_closed = False
        RecordingBar.made.append(self)

    def close(self) -> None:
        self.was_closed = True
        super().close()


@pytest.fixture(scope="module")
def pool() -> Any:
    with lucidity.Pool(2) as started:
        yield started


def test_a_map_counts_the_items_of_a_running_chunk_one_by_one(pool: lucidity.Pool, rendezvous: Rendezvous) -> None:
    seen = Seen()
    items = [(x, rendezvous.address if x == 3 else None) for x in range(6)]
    result = pool.map_async(step, items, chunksize=6, progress=seen)  # one chunk of six
    rendezvous.started(1)  # item 3 runs: items 0, 1 and 2 have finished, the chunk has not
    wait_until(lambda: seen.saw((3, 6)), WAIT, "three of six items counted while their chunk runs")
    assert not result.ready()
    rendezvous.release()
    assert result.get(WAIT) == list(range(6))
    assert seen.last == (6, 6)
    assert [done for done, _ in seen.calls] == sorted(done for done, _ in seen.calls)


@pytest.mark.parametrize("method", ["map", "map_async", "starmap", "starmap_async", "imap", "imap_unordered"])
def test_every_pool_map_ends_its_bar_at_the_total_and_closes_it(pool: lucidity.Pool, method: str) -> None:
    RecordingBar.made.clear()
    star = method.startswith("starmap")
    call = getattr(pool, method)
    result = call(add if star else square, [(x, x) for x in range(20)] if star else range(20), 3,
                  progress=RecordingBar)
    if method.endswith("_async"):
        values = result.get(WAIT)
    else:
        values = list(result)
    assert sorted(values) == sorted(2 * x if star else x * x for x in range(20))
    [bar] = RecordingBar.made
    wait_until(lambda: bar.was_closed, WAIT, "the bar closed")  # the last item's count comes before the result
    assert bar.n == bar.total == 20
    assert f"{method}(" in bar.desc


def test_imap_of_a_generator_learns_its_total_when_the_input_ends(pool: lucidity.Pool) -> None:
    seen = Seen()
    assert list(pool.imap(square, (x for x in range(7)), progress=seen)) == [x * x for x in range(7)]
    wait_until(lambda: seen.last == (7, 7), WAIT, "the final count with its total")


def test_executor_map_and_remote_fanout_show_progress() -> None:
    seen = Seen()
    with lucidity.Executor(2) as executor:
        assert list(executor.map(add, range(10), range(10), chunksize=4, progress=seen)) == [2 * x for x in range(10)]
    assert seen.last == (10, 10)
    fanned = Seen()
    with lucidity.LocalCluster(processes=2) as cluster, connected(cluster.address):
        assert lucidity.job(square).remote_fanout(range(5), progress=fanned) == [x * x for x in range(5)]
    assert fanned.last == (5, 5)


def test_a_failed_map_closes_its_bar(pool: lucidity.Pool) -> None:
    RecordingBar.made.clear()
    with pytest.raises(ValueError, match="three"):
        pool.map(fails_at_three, range(8), chunksize=2, progress=RecordingBar)
    [bar] = RecordingBar.made
    assert bar.was_closed


def test_terminate_closes_the_bar_of_a_running_map(rendezvous: Rendezvous) -> None:
    RecordingBar.made.clear()
    started = lucidity.Pool(1)
    try:
        result = started.map_async(step, [(0, rendezvous.address), (1, None)], chunksize=1, progress=RecordingBar)
        rendezvous.started(1)
        started.terminate()
        with pytest.raises(Exception):
            result.get(WAIT)
    finally:
        started.terminate()
        rendezvous.release()
    [bar] = RecordingBar.made
    assert bar.was_closed


def test_a_task_reports_its_own_progress_to_lucidity_progress(pool: lucidity.Pool, rendezvous: Rendezvous) -> None:
    seen = Seen()
    result = pool.apply_async(reporting, (rendezvous.address,))
    waiter = threading.Thread(target=lucidity.progress, args=([result],), kwargs={"progress": seen})
    waiter.start()
    try:
        rendezvous.started(1)
        wait_until(lambda: seen.saw((2.0, 5.0)), WAIT, "the task's own report, in its own units")
    finally:
        rendezvous.release()
        waiter.join(WAIT)
    assert not waiter.is_alive()
    assert seen.last == (5.0, 5.0)
    assert result.get(WAIT) == "done"


def test_lucidity_progress_counts_futures_and_results_as_they_finish(pool: lucidity.Pool) -> None:
    seen = Seen()
    with lucidity.Executor(2) as executor:
        futures = [executor.submit(square, x) for x in range(4)]
        results = [pool.apply_async(square, (x,)) for x in range(3)] + [pool.map_async(square, range(10))]
        watched = lucidity.progress(futures + results, progress=seen)
    assert watched == futures + results
    assert seen.last == (17, 17)
    assert [f.result() for f in futures] == [0, 1, 4, 9]


def test_report_progress_outside_a_worker_does_nothing_and_checks_its_arguments() -> None:
    lucidity.report_progress(1, 2)
    with pytest.raises(ValueError):
        lucidity.report_progress(1, 0)


def test_progress_true_without_tqdm_says_how_to_install_it() -> None:
    script = textwrap.dedent("""
        import sys
        sys.modules["tqdm"] = None  # as if it were not installed
        from lucidity.progressbar import Tracker
        try:
            Tracker(True, 3, "map(f)")
        except ImportError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT)
    assert out.stdout.strip() == "progress=True needs tqdm: pip install 'lucidity-pool[progress]' (or pip install tqdm)"


CTRL_C_SCRIPT = """
import time
from tqdm import tqdm
import lucidity

class Bar(tqdm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        print("bar open", flush=True)

    def close(self):
        if not self.disable:
            print("bar closed", flush=True)
        super().close()

def sleepy(x):
    open(f"started-{x}", "w").close()  # the map runs: the bar is the pool's (a Ctrl-C inside Bar.__init__
    time.sleep(60)                     # would leave no bar to close)

if __name__ == "__main__":
    with lucidity.Pool(1) as pool:
        try:
            pool.map(sleepy, range(2), progress=Bar)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
"""


def test_ctrl_c_during_a_map_closes_its_bar(tmp_path: Any) -> None:
    path = tmp_path / "ctrl_c.py"
    path.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=TESTS), start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "bar open"
        wait_until(lambda: (tmp_path / "started-0").exists(), WAIT, "the first task to start")
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=WAIT)
    finally:
        stop_process(proc)
    assert rest.split() == ["bar", "closed", "interrupted"]


def test_a_partial_of_a_bar_class_is_a_bar_class(pool: lucidity.Pool) -> None:
    RecordingBar.made.clear()
    pool.map(square, range(4), progress=functools.partial(RecordingBar, leave=False))
    [bar] = RecordingBar.made
    assert bar.was_closed and bar.n == 4
