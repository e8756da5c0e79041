"""Progress bars that count finished work: ``progress=`` of the faces, `progress` and `report_progress`.

A `Tracker` counts the items of one call as they finish, not as they are submitted, and shows the count
on a tqdm bar (``progress=True``, or a tqdm-like class) or hands it to a callable. Items that travel in
chunks are counted one by one: the worker running a chunk reports how many of its items are done, at most
every 100 ms (`lucidity.node.output`), and the rest count when the chunk's result arrives::

    worker --PROGRESS (items of the chunk done)--> client --Reports.watch hook--> Tracker --> bar.update
    client --on_done of each chunk (I/O thread)--> Tracker (the chunk's remaining items) --> the face

A task can report its own progress with `report_progress(done, total)`: a bar of one item (``apply`` seen
through `progress`) then shows the task's own units, and a bar of many counts each running task as
``done / total`` of an item.

The bar closes once every item has finished, failed or been given up (a pool terminated fails what had
not finished), before the result is handed over, so that what the caller prints next comes below it; the
faces also close it when the caller's wait ends in an exception (Ctrl-C included).

tqdm is optional (``pip install 'lucidity-pool[progress]'``); nothing here imports it until a bar is made.

(The module is ``progressbar``, not ``progress``: importing a submodule named like the function would rebind
``lucidity.progress`` from the function to the module, as `lucidity.jobs` explains for ``job``.)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, TypeVar, Union, cast

from . import messages

if TYPE_CHECKING:
    from .client import Client
    from .task import Task

__all__ = ["progress", "report_progress", "Tracker", "Tracked", "ProgressOption", "INSTALL_HINT", "label", "observe",
           "waited", "new_tracker", "tracking"]

#: What ``progress=True`` says when tqdm is not installed.
INSTALL_HINT = "progress=True needs tqdm: pip install 'lucidity-pool[progress]' (or pip install tqdm)"

#: ``progress=``: True for a tqdm bar, a tqdm-like class (``tqdm.notebook.tqdm``), or a callable called
#: with ``(done, total)`` as items finish (total None while a lazy input is still being read).
ProgressOption = Union[bool, None, type, Callable[[int, Optional[int]], object]]

OnDone = Callable[[bool, Any], None]
T = TypeVar("T")


def report_progress(done: float, total: float) -> None:
    """Report how far the running task has come, for the caller's progress bar.

    Call it from a task (or a thread the task started) as often as you like: the worker sends the latest
    report at most every 100 ms, and none once the task has ended. Outside a lucidity worker it does nothing,
    so a function calling it still runs as a plain call.

    Args:
        done: units of work done so far (0 or more).
        total: units of work in all (more than 0).
    """
    if not (done >= 0 and total > 0):  # also refuses NaN
        raise ValueError(f"report_progress needs done >= 0 and total > 0, not ({done!r}, {total!r})")
    from .node import output

    output.report(done, total)


def _make_display(option: ProgressOption, total: Optional[int],
                  desc: str) -> tuple[Any, Optional[Callable[..., object]]]:
    """(a bar, None) or (None, a callable) for a ``progress=`` option; ImportError with the hint without tqdm."""
    if option is True:
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        return tqdm(total=total, desc=desc), None
    factory = option.func if isinstance(option, functools.partial) else option
    if isinstance(factory, type):
        return cast(Any, option)(total=total, desc=desc), None
    if callable(option):
        return None, option
    raise TypeError(f"progress must be True, a tqdm-like class or a callable, not {option!r}")


class Tracker:
    """The finished items of one call, shown as they finish.

    Args:
        option: the face's ``progress=`` (see `ProgressOption`); a Tracker is made only when it is set.
        total: items in all, or None if not known yet (a lazy input: `expect` counts them as they are read,
            and `input_ended` says there are no more).
        desc: the bar's label (the call, e.g. "map(square)").
    """

    def __init__(self, option: ProgressOption, total: Optional[int], desc: str) -> None:
        self._lock = threading.Lock()
        self._bar, self._callback = _make_display(option, total, desc)
        try:
            self._start(total)
        except BaseException:  # Ctrl-C as the bar appears: it closes before the interrupt reaches the caller
            if self._bar is not None:
                self._bar.close()
            raise

    def _start(self, total: Optional[int]) -> None:
        self._total = total or 0
        self._final = total is not None
        self._finished = 0.0  # items finished
        self._running: dict[int, float] = {}  # task id -> its items (or fraction of one) done so far
        self._shown: tuple[int, Optional[int]] = (0, total)  # what was shown: whole items, and the total
        self._own_units = False  # a bar of one item showing its task's own units
        self._own_total = 0.0
        self._closed = False
        if self._final and not self._total:
            self.close()

    # -- the faces -------------------------------------------------------------------------------------

    def expect(self, items: int) -> None:
        """`items` more were read from a lazy input."""
        with self._lock:
            if not self._final:
                self._total += items

    def input_ended(self) -> None:
        """A lazy input has no more items; the bar closes now if they have all finished."""
        with self._lock:
            self._final = True
            self._show_locked()

    def track(self, client: "Client", items: int, on_done: OnDone) -> "Tracked":
        """Wrap a task's ``on_done`` so that its `items` count when it ends; `Tracked.attach` the task once made."""
        return Tracked(self, client, items, on_done)

    def skip(self, items: int) -> None:
        """Count `items` that will never run as finished (their chunk failed before it was sent)."""
        self._finish(None, items)

    def close(self) -> None:
        """Close the bar (idempotent): the call ended, failed or was interrupted."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            bar = self._bar
        if bar is not None:
            bar.close()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- counting (the client's I/O thread, or any) ----------------------------------------------------

    def _finish(self, task_id: Optional[int], items: float) -> None:
        with self._lock:
            if task_id is not None:
                self._running.pop(task_id, None)
            self._finished += items
            self._show_locked()

    def _report(self, task_id: int, items: int, progress: messages.Progress) -> None:
        """A PROGRESS of a running task of `items` items."""
        with self._lock:
            if self._closed:
                return
            own = progress.done / progress.total if progress.total else 0.0
            if items == 1 and self._total == 1 and self._final and progress.total:
                self._own_units = True  # one task: its own units say more than "0/1"
                self._own_total = progress.total
                if self._bar is not None:
                    self._bar.total = progress.total
                    self._bar.n = min(progress.done, progress.total)
                    self._bar.refresh()
                elif self._callback is not None:
                    self._callback(min(progress.done, progress.total), progress.total)
                return
            self._running[task_id] = min(items, progress.items + min(own, 1.0))
            self._show_locked()

    def _show_locked(self) -> None:
        if self._closed:
            return
        done = int(self._finished + sum(self._running.values()))
        # A lazy input's bar shows what has been read so far as its total; a callable gets None until the end.
        total = self._total if self._final else None
        changed = (done, total) != self._shown
        bar = self._bar
        if bar is not None:
            if self._own_units and self._finished:
                bar.n = bar.total
                bar.refresh()
            elif not self._own_units:
                bar.total = self._total or None
                if done != self._shown[0]:
                    bar.update(done - self._shown[0])
        elif self._callback is not None and self._own_units:
            if self._finished:
                self._callback(self._own_total, self._own_total)
        elif self._callback is not None and changed:
            self._callback(done, total)
        self._shown = (done, total)
        if self._final and self._finished >= self._total:
            self._closed = True
            if bar is not None:
                bar.close()


class Tracked:
    """One task of a tracked call: its wrapped ``on_done``, and its progress reports once `attach`ed."""

    def __init__(self, tracker: Tracker, client: "Client", items: int, on_done: OnDone) -> None:
        self._tracker = tracker
        self._client = client
        self._items = items
        self._original = on_done
        self._task_id: Optional[int] = None

    def attach(self, task: "Task") -> "Task":
        """Watch the task's progress reports (before it is submitted); returns it."""
        self._task_id = task.id
        self._client.reports.watch(task.id, self._on_progress)
        return task

    def on_done(self, succeeded: bool, value: Any) -> None:
        if self._task_id is not None:
            self._client.reports.unwatch(self._task_id)
        self._tracker._finish(self._task_id, self._items)
        self._original(succeeded, value)

    def _on_progress(self, report: messages.Progress) -> None:
        self._tracker._report(report.task, self._items, report)


def progress(results: Iterable[T], *, progress: ProgressOption = True, desc: str = "tasks",
             timeout: Optional[float] = None) -> list[T]:
    """Show a bar of finished work for futures or AsyncResults, and wait until all of them are done.

    Accepts the futures of `lucidity.Executor` and `lucidity.job` (any `concurrent.futures.Future` too)
    and the results of `lucidity.Pool`'s ``apply_async``, ``map_async`` and ``starmap_async`` (a map's result
    counts its items). Tasks that call `report_progress` move the bar while they run. Returns the same
    objects, in the same order, once every one is done (failed ones included: nothing is raised here).

    Args:
        results: the futures or results to watch.
        progress: as the faces' ``progress=`` (True: a tqdm bar).
        desc: the bar's label.
        timeout: give up waiting after this many seconds (`TimeoutError`); the bar closes either way.
    """
    watched = list(results)
    sizes = [_size_of(result) for result in watched]
    tracker = Tracker(progress, sum(sizes), desc)
    remaining = threading.Semaphore(0)
    with tracker:
        for result, size in zip(watched, sizes):
            observe(tracker, result, size, remaining.release)
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in watched:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not remaining.acquire(timeout=left):
                raise TimeoutError(f"lucidity.progress: not every result was done within {timeout} s")
    return watched


def _size_of(result: Any) -> int:
    length = getattr(result, "_progress_items", None)
    return int(length) if length is not None else 1


def observe(tracker: Tracker, result: Any, size: int, done: Callable[[], None] = lambda: None) -> None:
    """Count `result` on `tracker` as it progresses and when it is done; call `done` once it is."""
    task = getattr(result, "task", None) or getattr(result, "_task", None)
    client = getattr(result, "_client", None)
    task_id = getattr(task, "id", None)
    if task_id is not None and client is not None and hasattr(client, "reports"):
        client.reports.watch(task_id, lambda report: tracker._report(report.task, size, report))

    def finished(*_: Any) -> None:
        if task_id is not None and client is not None and hasattr(client, "reports"):
            client.reports.unwatch(task_id)
        done()

    if isinstance(result, concurrent.futures.Future):
        def future_done(_: Any) -> None:
            tracker._finish(task_id, size)
            finished()

        result.add_done_callback(future_done)
    elif hasattr(result, "_observe"):
        result._observe(lambda items: tracker._finish(None, items), finished)
    else:
        raise TypeError(f"lucidity.progress watches futures and AsyncResults, not {type(result).__name__}")


def label(made_by: str, function: Any) -> str:
    """A bar's label: the call and the function's name, e.g. "map(square)"."""
    return f"{made_by}({getattr(function, '__name__', type(function).__name__)})"


def new_tracker(option: ProgressOption, total: Optional[int], desc: str) -> Optional[Tracker]:
    """A `Tracker` for a face's ``progress=`` option, or None when it is not set."""
    return Tracker(option, total, desc) if option else None


@contextlib.contextmanager
def tracking(option: ProgressOption, total: Optional[int], desc: str) -> Iterator[Optional[Tracker]]:
    """A `Tracker` for a face's ``progress=`` option (None when it is not set), closed if the block raises:
    a call that fails, or is interrupted (Ctrl-C), before its tasks are submitted. The tracker is made inside
    the guarded block, so that an interrupt just after its bar appeared closes the bar too."""
    tracker = None
    try:
        tracker = new_tracker(option, total, desc)
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.close()
        raise


def waited(tracker: Optional[Tracker], wait: Callable[[], T]) -> T:
    """`wait()`, closing `tracker` if the wait ends in an exception (an error, a timeout, Ctrl-C)."""
    if tracker is None:
        return wait()
    try:
        return wait()
    except BaseException:
        tracker.close()
        raise

