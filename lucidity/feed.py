"""One lazy, bounded map: the engine under `Pool.imap`, `Pool.imap_unordered` and `Executor.map`.

A `Feed` reads its input a chunk at a time, makes each chunk one task, and hands the chunks' results to
its consumer in input order or as they complete. At most a window of chunks is submitted and not yet
taken by the consumer, so an endless input costs bounded memory and a slow consumer holds back the
reading, not the cluster.

::

    input --read a chunk (room in the window?)--> MapCall.task --submit--> client
    client --on_done (I/O thread)--> Feed._set --in order, or as completed--> next_chunk (consumer)

Errors take the place of what caused them, as the stdlib's imap does: an input that raises fails the
chunk being read, at its position, and ends the input; a chunk the pickler refuses fails in its place,
and reading goes on.

A feed is driven in one of two ways, and the face chooses:

- by a feeder thread running `run` (Pool: ``imap`` returns at once and the input is read behind the
  caller's back, as by the stdlib's task handler; ``close()`` lifts the window, so the rest is read);
- by its consumer calling `fill` (Executor: the ``map`` call submits the first window, and each chunk
  taken submits one more; ``shutdown`` lifts the window and fills the rest).

This module owns the window, the order, the errors in place and the cancelling of a map's unsent
chunks. It does not own the faces' iterators and timeouts (each raises its stdlib's types), nor what a
task carries (`lucidity.options.TaskOptions`), nor when a task is sent (the client's flow control).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from . import waiting
from .client import Client
from .messages import TaskMode
from .options import TaskOptions
from .progressbar import Tracker
from .task import FunctionRef, Task, TaskMaker

__all__ = ["WINDOW", "MapCall", "Feed", "chunks"]

#: Chunks a feed may have submitted ahead of its consumer. Large enough to keep every worker of a big
#: cluster busy with tiny tasks, small enough that an endless input costs bounded memory.
WINDOW = 1024


def chunks(inputs: Iterable[Any], size: int) -> Iterator[tuple[range, list[Any]]]:
    """The input in chunks of up to `size` items, each with its positions; reads only as far as asked.

    A generator, so ``iter(inputs)`` itself runs on the first ``next()``: an input that is not iterable
    fails where the reading happens, like one that raises.
    """
    iterator = iter(inputs)
    start = 0
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield range(start, start + len(chunk)), chunk
        start += len(chunk)


@dataclass(frozen=True)
class MapCall:
    """What every chunk of one map shares: how to make the chunk a task of `client`.

    Attributes:
        client: the face's client.
        options: the face's task options.
        function: the mapped function, serialized.
        mode: MAP (``function(item)``) or STARMAP (``function(*item)``).
        made_by: the public call ("imap", "map_async", ...), for error messages.
        progress: counts the items of each chunk as they finish (``progress=`` of the face), if set.
    """

    client: Client
    options: TaskOptions
    function: FunctionRef
    mode: TaskMode
    made_by: str
    progress: Optional[Tracker] = None
    # Makes each chunk's task by one positional call: the options are the same for every chunk (Task.siblings).
    _make: TaskMaker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        template = self.options.new_task(self.client, self.function, self.mode, [], _never_called,
                                         made_by=self.made_by)
        object.__setattr__(self, "_make", self.client.task_maker(template))

    def task(self, chunk: list[Any], items: range, on_done: Callable[[bool, Any], None]) -> Task:
        """The task for one chunk, not submitted; raises the pickler's own exception if the chunk cannot travel."""
        if self.progress is None:
            return self._make(self.payload(chunk, items), on_done, items)
        self.progress.expect(len(items))
        try:
            frames = self.payload(chunk, items)
        except BaseException:
            self.progress.skip(len(items))  # the chunk fails in its place and never runs
            raise
        return self._tracked(self.progress, frames, items, on_done)

    def payload(self, chunk: list[Any], items: range) -> list[Any]:
        """A chunk serialized; the pickler's own exception, naming the chunk's items, if it cannot travel."""
        where = f"item {items[0]}" if len(items) == 1 else f"items {items[0]}..{items[-1]}"
        return self.client.dumps(chunk, f"{where} of {self.made_by}({self.function.description})")

    def payloads(self, inputs: Iterable[Any], size: int) -> list[list[Any]]:
        """Every chunk of `inputs` (`size` items each, the last maybe fewer) serialized, in order: a map's whole
        input, read and serialized before any of it is submitted, so that one that cannot travel raises with
        nothing sent."""
        payload = self.payload
        if size == 1 and isinstance(inputs, (list, tuple, range)):
            # Without naming each item first (a third of the cost, for an error message most maps never need):
            # if one cannot travel, it is serialized again below, and its error then names it.
            dumps = self.client.dumps
            try:
                return [dumps([item], "an item") for item in inputs]
            except Exception:
                pass
            return [payload([item], range(position, position + 1)) for position, item in enumerate(inputs)]
        return [payload(chunk, items) for items, chunk in chunks(inputs, size)]

    def tasks(self, payloads: Sequence[list[Any]], size: int, total: int,
              on_done: Callable[[int, bool, Any], None]) -> list[Task]:
        """The tasks of a map's serialized chunks (`payloads` of `size` items each, the last ending at item
        `total`); chunk number n ends with ``on_done(n, succeeded, value)``. No object is made per chunk but
        its task and what the task holds (the collector tracks every one while the map lasts)."""
        make = self._make
        if self.progress is None:
            if size == 1:
                return [make(frames, functools.partial(on_done, number), range(number, number + 1))
                        for number, frames in enumerate(payloads)]
            return [make(frames, functools.partial(on_done, number),
                         range(number * size, min(number * size + size, total)))
                    for number, frames in enumerate(payloads)]
        made = []
        for number, frames in enumerate(payloads):
            items = range(number * size, min(number * size + size, total))
            self.progress.expect(len(items))
            made.append(self._tracked(self.progress, frames, items, functools.partial(on_done, number)))
        return made

    def _tracked(self, progress: Tracker, frames: list[Any], items: range,
                 on_done: Callable[[bool, Any], None]) -> Task:
        """A chunk's task whose items count on the progress bar as they finish."""
        tracked = progress.track(self.client, len(items), on_done)
        return tracked.attach(self._make(frames, tracked.on_done, items))


def _never_called(succeeded: bool, value: Any) -> None:
    """The ``on_done`` of a map's template task (`MapCall`), which is never submitted."""


class Feed:
    """The chunks of one map: read lazily, submitted a window ahead of the consumer, taken in order or not.

    Args:
        call: how a chunk becomes a task.
        inputs: the items (``iter()`` is called on the first read, by the reading thread).
        chunksize: items per task.
        ordered: hand results over in input order (imap, Executor.map), else as they complete.
        window: chunks that may be submitted and not yet taken.
        on_settled: called once, when every chunk's result has arrived (taken or not): `Pool._cache`.
        owner: kept alive as long as the feed (by its consumer, or by its tasks in flight): an executor
            referenced only by its map is not torn down under it.

    Reading runs under one lock (``_reading``), results and counters under another (``_cond``), so that
    the client's I/O thread delivering a result never waits for an input being read.
    """

    def __init__(self, call: MapCall, inputs: Iterable[Any], chunksize: int, *, ordered: bool = True,
                 window: int = WINDOW, on_settled: Optional[Callable[[], object]] = None,
                 owner: object = None) -> None:
        self._call = call
        self._chunks = chunks(inputs, chunksize)
        self._window = window
        self._ordered = ordered
        self._on_settled = on_settled
        self._owner = owner
        self._reading = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._arrived = threading.Event()  # set while a result is ready to take, or the end is reached
        self._lifted = False
        self._read = 0  # chunks read (each one is submitted, or failed in its place)
        self._length: Optional[int] = None  # chunks in all, once the input ended or the feed stopped
        self._received = 0  # results arrived
        self._taken = 0  # results taken by the consumer
        self._next = 0  # ordered: the position of the next result to hand over
        self._early: dict[int, tuple[bool, Any]] = {}  # ordered: results that overtook an earlier one
        self._ready: collections.deque[tuple[bool, Any]] = collections.deque()
        self._unfinished: dict[int, Task] = {}  # submitted, no result yet: those not sent can be cancelled

    # -- reading ---------------------------------------------------------------------------------------

    def run(self) -> None:
        """Read the whole input as the window allows: a feeder thread's loop. Returns once the input ended
        or the feed stopped."""
        with self._reading:
            while self._has_room(block=True) and self._read_chunk():
                pass

    def fill(self) -> None:
        """Read and submit chunks while the window has room (the whole rest once lifted), in this thread."""
        with self._reading:
            while self._has_room(block=False) and self._read_chunk():
                pass

    def lift(self) -> None:
        """Remove the bound: the feed may read the rest of its input without waiting for its consumer."""
        with self._cond:
            self._lifted = True
            self._cond.notify_all()

    def _has_room(self, block: bool) -> bool:
        with self._cond:
            if block:
                self._cond.wait_for(lambda: self._length is not None or self._lifted
                                    or self._read - self._taken < self._window)
            return self._length is None and (self._lifted or self._read - self._taken < self._window)

    def _read_chunk(self) -> bool:
        """Read one chunk and submit it; False once there is nothing more to read."""
        try:
            items, chunk = next(self._chunks)
        except StopIteration:
            self._end(None)
            return False
        except Exception as exc:  # the input raised: it fails at this position and ends, as the stdlib's imap
            self._end(exc)
            return False
        with self._cond:
            if self._length is not None:
                return False  # stopped while this chunk was read: it never runs
            index = self._read
            self._read += 1
        try:
            task = self._call.task(chunk, items, functools.partial(self._set, index))
        except Exception as exc:  # the pickler's own exception: it takes the chunk's place, as the stdlib's
            self._set(index, False, exc)
            return True
        # Before the submit, so that its result finds it; no lock needed: cancel and withdraw, the only
        # readers besides the result, wait for this reading to end.
        self._unfinished[index] = task
        try:
            self._call.client.submit([task])
        except Exception as exc:  # the client is shut down (a pool terminated, an executor torn down)
            self._set(index, False, exc)
            self._end(None)
            return False
        return True

    def _end(self, error: Optional[BaseException]) -> None:
        """Read no more; `error`, if any, takes the next position (the input broke there)."""
        with self._cond:
            if self._length is not None:
                return
            index = self._read
            if error is not None:
                self._read += 1
            self._length = self._read
            self._cond.notify_all()
            if self._call.progress is not None:
                self._call.progress.input_ended()
            settled = self._changed() if error is None else None
        if error is not None:
            self._set(index, False, error)
        elif settled is not None:
            settled()

    # -- stopping --------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Read no more: what was read runs (Pool.terminate; the client then fails what has not finished)."""
        self._end(None)

    def cancel(self) -> None:
        """The consumer left (closed, timed out or failed): read no more, and cancel the chunks not sent yet.

        Waits for a chunk being read, so that every submitted chunk can be cancelled.
        """
        with self._reading:
            self._end(None)
            self._cancel_unsent()

    def withdraw(self) -> None:
        """Read no more and cancel the chunks not sent yet; each of them, and the unread rest of the input,
        raises `concurrent.futures.CancelledError` in its place (Executor.shutdown with cancel_futures)."""
        with self._reading:
            self._end(concurrent.futures.CancelledError())
            for index in self._cancel_unsent():
                self._set(index, False, concurrent.futures.CancelledError())

    def _cancel_unsent(self) -> list[int]:
        """Cancel the tasks that have not gone to a worker yet; their positions (a task cancelled never ends)."""
        with self._cond:
            unsent = list(self._unfinished.items())
        cancelled = [index for index, task in unsent if self._call.client.cancel(task)]
        with self._cond:
            for index in cancelled:
                self._unfinished.pop(index, None)
        return cancelled

    # -- results ---------------------------------------------------------------------------------------

    def _set(self, index: int, succeeded: bool, value: Any) -> None:
        """A chunk's outcome: its task's on_done (on the client's I/O thread), or an error in its place."""
        with self._cond:
            self._unfinished.pop(index, None)
            self._received += 1
            if not self._ordered:
                self._ready.append((succeeded, value))
            elif index != self._next:
                self._early[index] = (succeeded, value)
            else:
                self._ready.append((succeeded, value))
                self._next += 1
                while self._next in self._early:
                    self._ready.append(self._early.pop(self._next))
                    self._next += 1
            settled = self._changed()
        if settled is not None:
            settled()

    def _changed(self) -> Optional[Callable[[], object]]:
        """Under the lock, after a result or the end: wake the consumer; the settled callback, if it is time."""
        if self._ready or self._taken == self._length:
            self._arrived.set()
        settled = self._on_settled if self._received == self._length else None
        if settled is not None:
            self._on_settled = None
        return settled

    def next_chunk(self, deadline: Optional[float] = None,
                   timeout_error: type[Exception] = TimeoutError) -> Optional[list[Any]]:
        """The results of the next chunk; None once every chunk has been taken.

        Raises:
            The chunk's exception, in its place.
            timeout_error: nothing arrived before `deadline` (a `time.monotonic()` value; None: no limit).
        """
        while True:
            with self._cond:
                if self._ready:
                    succeeded, value = self._ready.popleft()
                    self._taken += 1
                    self._cond.notify()  # room in the window, for a feeder thread waiting for it
                    break
                if self._taken == self._length:
                    return None
                self._arrived.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise timeout_error
            # Outside the lock: inside a worker, the wait runs other queued tasks (lucidity.waiting).
            waiting.wait(self._arrived, remaining)
        if succeeded:
            return value  # type: ignore[no-any-return]
        try:
            raise value
        finally:
            del value  # the traceback holds this frame: it must not keep the exception alive
