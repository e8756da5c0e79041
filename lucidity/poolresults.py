"""The result types of `lucidity.Pool`, as multiprocessing.pool's: ApplyResult (AsyncResult), MapResult,
IMapIterator, IMapUnorderedIterator, and the pool's ``_cache`` of results not ready yet.

They follow the stdlib's, attributes recipes read included (``_job``, ``_number_left``, ``_cache``); what
differs is said on `lucidity.pool`. A result is settled on the client's I/O thread (through its tasks'
``on_done``) and waited for in any thread: inside a worker, a wait lends the worker to queued work
(`lucidity.waiting`).
"""

from __future__ import annotations

import itertools
import threading
import time
import types
from multiprocessing import TimeoutError
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar, Union

from . import waiting
from .feed import Feed
from .progressbar import Tracker
from .task import TaskState

if TYPE_CHECKING:
    from .client import Client
    from .task import Task

__all__ = ["AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "IMapUnorderedIterator"]

T = TypeVar("T")


class _ResultCache(dict[int, Any]):
    """`Pool._cache`, as the stdlib's: the pool's results that are not ready yet, by job number.

    Recipes count outstanding work with ``len(pool._cache)`` and look results up by ``result._job``.
    `Pool.join` waits here for the last results to settle, as the stdlib's join waits for its result
    handler thread: a result's callbacks run on the client's thread after its task has ended.
    """

    def __init__(self) -> None:
        super().__init__()
        self._jobs = itertools.count()
        self._emptied = threading.Condition(threading.Lock())

    def new_job(self) -> int:
        return next(self._jobs)

    def add(self, result: "Union[ApplyResult[Any], IMapIterator[Any]]") -> None:
        """Count `result` as outstanding; done before its tasks are submitted, so before it can settle."""
        self[result._job] = result

    def discard(self, job: int) -> None:
        with self._emptied:
            self.pop(job, None)
            if not self:
                self._emptied.notify_all()

    def wait_empty(self) -> None:
        with self._emptied:
            self._emptied.wait_for(lambda: not self)


class ApplyResult(Generic[T]):
    """The result of `Pool.apply_async`; also the base of `MapResult`. As multiprocessing.pool.ApplyResult.

    ``_job`` is the key of the result in its pool's ``_cache`` while it is not ready, as in the stdlib.
    """

    def __init__(self, callback: Optional[Callable[[T], object]] = None,
                 error_callback: Optional[Callable[[BaseException], object]] = None,
                 cache: Optional[_ResultCache] = None) -> None:
        # An Event only for a wait that begins before the result is ready (`wait`): a result waited for late,
        # or never, costs the cyclic garbage collector no Event, Condition and deque.
        self._ready = False
        self._event: Optional[threading.Event] = None
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        self._cache = cache
        self._job = -1 if cache is None else cache.new_job()
        self._tracker: Optional[Tracker] = None  # the bar of a map_async(progress=...)
        self._task: Optional[Task] = None  # for lucidity.progress: an apply's task reports its own progress
        self._client: Optional[Client] = None
        # (made by the first observer: most results have none, and an empty list is one more object for the
        # cyclic garbage collector to track per result)
        self._observers: Optional[list[tuple[Callable[[int], object], Callable[[], object]]]] = None

    #: Items this result stands for, for `lucidity.progress`.
    _progress_items = 1

    def ready(self) -> bool:
        return self._ready

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        task = self._task
        if task is not None and task.state is TaskState.PENDING and self._client is not None:
            # Waited for before it left: this thread may carry it to a worker's door itself (Client.call).
            started = time.monotonic()
            if self._client.call(task, submitted=True, timeout=timeout) and timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - started))
        if self._ready:
            return
        with _observing:
            if self._ready:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        waiting.wait(event, timeout)

    def get(self, timeout: Optional[float] = None) -> T:
        """The result; re-raises the task's exception; ``multiprocessing.TimeoutError`` if not ready in time.

        The timeout bounds this wait only: the task keeps running.
        """
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def _set_one(self, succeeded: bool, value: Any) -> None:
        """The outcome of an apply's one task (a bound method: one object, where a lambda makes two)."""
        self._set(0, succeeded, value)

    def _set(self, index: int, succeeded: bool, value: Any) -> None:
        self._success, self._value = succeeded, value
        self._count(1)
        try:
            if self._callback and succeeded:
                self._callback(value)
            if self._error_callback and not succeeded:
                self._error_callback(value)
        finally:  # a callback that raised is logged by the client; the result is ready all the same
            self._settle()

    def _settle(self) -> None:
        if self._cache is not None:
            self._cache.discard(self._job)
        with _observing:
            self._ready = True
            if self._event is not None:
                self._event.set()
            observers, self._observers = self._observers, None
        for _, on_ready in observers or ():
            on_ready()

    def _count(self, items: int) -> None:
        """`items` of this result finished: tell the observers (`lucidity.progress`)."""
        if self._observers:
            for on_items, _ in list(self._observers):
                on_items(items)

    def _items_finished(self) -> int:
        return self._progress_items if self.ready() else 0

    def _observe(self, on_items: Callable[[int], object], on_ready: Callable[[], object]) -> None:
        """Call `on_items(n)` as items finish (those finished already at once) and `on_ready()` once ready."""
        with _observing:
            ready = self._ready
            if not ready:
                if self._observers is None:
                    self._observers = []
                self._observers.append((on_items, on_ready))
                finished = self._items_finished()
        if ready:
            on_items(self._progress_items)
            on_ready()
        elif finished:
            on_items(finished)

    __class_getitem__: Any = classmethod(types.GenericAlias)


AsyncResult = ApplyResult
#: Guards the observers of every result (`ApplyResult._observe`): rarely taken, once per result and observer.
_observing = threading.Lock()


class MapResult(ApplyResult[list[T]]):
    """The result of `Pool.map_async`: ready once every chunk is done; the first error wins.

    ``_number_left`` counts the chunks not done yet (succeeded or failed), as in the stdlib; recipes show
    progress with it.
    """

    def __init__(self, chunksize: int, length: int, callback: Optional[Callable[[list[T]], object]],
                 error_callback: Optional[Callable[[BaseException], object]],
                 cache: Optional[_ResultCache] = None) -> None:
        super().__init__(callback, error_callback, cache)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        self._length = length
        self._lock = threading.Lock()
        if chunksize <= 0:
            self._number_left = 0
            self._ready = True
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    @property
    def _progress_items(self) -> int:  # type: ignore[override]
        return self._length

    def _items_finished(self) -> int:
        if self._chunksize <= 0:
            return 0
        left = self._number_left
        return self._length if not left else max(0, self._length - left * self._chunksize)

    def _set(self, index: int, succeeded: bool, value: Any) -> None:
        if self._observers:  # (lucidity.progress; a map's chunks are many, and most results have none)
            self._count(min(self._chunksize, self._length - index * self._chunksize))
        with self._lock:
            self._number_left -= 1
            if succeeded and self._success:
                self._value[index * self._chunksize:(index + 1) * self._chunksize] = value
            elif not succeeded and self._success:
                self._success, self._value = False, value
            if self._number_left:
                return
        try:
            if self._success and self._callback:
                self._callback(self._value)
            elif not self._success and self._error_callback:
                self._error_callback(self._value)
        finally:
            self._settle()


class IMapIterator(Generic[T]):
    """The iterator `Pool.imap` returns (chunksize 1): results in order; ``next(timeout)`` as the stdlib's.

    The results come from the imap's `lucidity.feed.Feed`; ``_job`` is its key in the pool's ``_cache``
    until every result has arrived.
    """

    _ordered = True

    def __init__(self, feed: Feed, job: int) -> None:
        self._feed = feed
        self._job = job

    def __iter__(self) -> "IMapIterator[T]":
        return self

    def next(self, timeout: Optional[float] = None) -> T:
        chunk = self._feed.next_chunk(None if timeout is None else time.monotonic() + timeout, TimeoutError)
        if chunk is None:
            raise StopIteration
        return chunk[0]  # type: ignore[no-any-return]

    __next__ = next


class IMapUnorderedIterator(IMapIterator[T]):
    """The iterator `Pool.imap_unordered` returns: results as they finish."""

    _ordered = False
