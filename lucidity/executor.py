"""Executor, a concurrent.futures.Executor whose calls run on lucidity workers: submit, map, shutdown.

``from lucidity import Executor`` replaces ``from concurrent.futures import ProcessPoolExecutor``. The
futures it returns are real `concurrent.futures.Future` objects (`TaskFuture`), so ``as_completed``,
``wait``, ``asyncio.wrap_future`` and ``loop.run_in_executor`` work unchanged. The work runs on the same
core as `lucidity.Pool`: an embedded local cluster by default, a running cluster with ``address=`` or
``$LUCIDITY_ADDRESS``.

This module owns the future's life (completion from the client's I/O thread, cancellation, waiting) and the
executor's (shutdown, and how its maps are driven: from the consumer's thread). It does not own the lazy
map's engine (`lucidity.feed`), nor routing, retries or flow control: those are the client's.

Deliberate differences from ProcessPoolExecutor (each one keeps a failure local or visible):

- A worker that dies fails only the future of the task it was running, with `lucidity.WorkerCrashed`; the
  executor keeps serving. The stdlib marks the whole pool broken and fails every pending future with
  ``BrokenProcessPool``.
- A function or argument that cannot be serialized raises the pickler's own exception (``TypeError``,
  ``pickle.PicklingError``...), with lucidity's explanation as a note, from ``submit``, and nothing is sent;
  the stdlib sets the same exception on the future.
- Lambdas and closures travel by value (dill). The caller's main script reaches workers as under spawn
  (imported as ``__mp_main__``, its ``__main__`` block not run), except that names bound only in that block
  travel with the tasks that read them and a script without the guard runs as under fork
  (`lucidity.mainscript`).
- ``map`` reads its input lazily, a bounded window of tasks ahead of the consumer, so a long or endless
  generator is not materialized. The first window is submitted by the ``map`` call itself, so work starts
  before iteration, as in the stdlib. An error raised by the input iterable, or by serializing one of its
  items, is raised by ``next()`` at that item's position (the stdlib raises it from ``map``, having read
  everything first). ``shutdown`` reads and submits the rest of a started map's input, because that work
  was accepted before the shutdown (so close, or drop, the iterator of a map over an endless input before
  shutting down); with ``cancel_futures`` the unread rest raises ``CancelledError`` instead.
- ``result()`` and ``exception()`` called inside a task let the waiting worker run other queued tasks
  (`lucidity.waiting`), so an Executor used inside a task cannot deadlock a busy cluster.
  ``concurrent.futures.wait`` and ``as_completed`` wait the stdlib way and have no such help.
- With ``address=``, ``max_workers`` caps how many of this executor's tasks run at once on the shared
  cluster instead of sizing a pool of its own.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
import weakref
import sys
from typing import Any, Callable, Generator, Iterable, Iterator, Optional, Sequence, TypeVar, Union, cast

from . import waiting
from .client import Client
from .cluster import LocalCluster, open_client
from .feed import WINDOW, Feed, MapCall
from .messages import TaskMode
from .sizes import parse_size
from .options import TaskOptions
from .progressbar import ProgressOption, Tracker, label, tracking

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # Python 3.9: typing_extensions is not a dependency; the signature is then untyped
    def ParamSpec(name: str) -> Any:  # noqa: N802
        return TypeVar(name)
from .task import FunctionRef, Task, TaskState

logger = logging.getLogger(__name__)

__all__ = ["Executor", "TaskFuture"]

T = TypeVar("T")
P = ParamSpec("P")

#: Tasks (chunks) a map may have submitted ahead of its consumer (`lucidity.feed.WINDOW`).
MAP_WINDOW = WINDOW


class TaskFuture(concurrent.futures.Future[T]):
    """A `concurrent.futures.Future` for one task of a lucidity client.

    The future is completed on the client's I/O thread when the task's outcome arrives (the task's
    ``on_done``, called exactly once). It is a real Future, so the stdlib's ``wait``, ``as_completed`` and
    asyncio bridges accept it. The face that built it submits `task` to the client once the future is
    ready to be completed.

    Done callbacks run on the client's I/O thread, as the stdlib runs them on its management thread: keep
    them short, and do not wait there for another future of the same client.

    A future is made per ``submit``, so it carries nothing beyond the stdlib's own condition (issue 13: an
    Event and two done callbacks cost about 3 us of CPU per future, as much as all the rest of it). Outside
    a worker, ``result()`` waits on that condition, as the stdlib's does, so waiters wake before any done
    callback runs. In a worker's main thread a wait must run the tasks queued there (`lucidity.waiting`),
    which needs an Event: the first such wait makes one and sets it from a done callback, which runs after
    the callbacks added before that wait.

    Args:
        client: the client that will run the task.
        function: as `Client.new_task`.
        mode: as `Client.new_task`.
        frames: as `Client.new_task`; the payload is serialized already.
        options: the face's task options.
        owner: kept alive until the future is done, so that an executor referenced only by its pending
            futures (``Executor().submit(f)``) is not torn down under them.
        on_settled: called once with the future when it is done or withdrawn (after its done callbacks).
        made_by: as `TaskOptions.new_task`.
        items: as `TaskOptions.new_task`.
        node: as `TaskOptions.new_task`.
    """

    def __init__(self, client: Client, function: FunctionRef, mode: TaskMode, frames: list[Any],
                 options: TaskOptions, *, owner: object = None,
                 on_settled: Optional[Callable[["TaskFuture[T]"], object]] = None, made_by: str,
                 items: Optional[range] = None, node: Optional[str] = None) -> None:
        super().__init__()
        self._client = client
        self._owner = owner
        self._on_settled = on_settled
        self._settled: Optional[threading.Event] = None  # made by the first wait that serves queued tasks
        self._withdrawn = False
        self._task = options.new_task(client, function, mode, frames, self._on_done, made_by=made_by, items=items,
                                      node=node)

    @property
    def task(self) -> Task:
        """The client's record of the work this future stands for."""
        return self._task

    def running(self) -> bool:
        """True while the task is on a worker (sent and not finished), as for a stdlib future that runs."""
        return super().running() or (not self.done() and self._task.state is TaskState.SENT)

    def cancel(self) -> bool:
        """Cancel the task if it has not been sent to a worker yet.

        Returns True if the future is cancelled: the task never runs. Returns False if the task is on its
        way to a worker or running (from then on the future counts as running, as a stdlib future whose
        work has started) or if it has finished.
        """
        withdrawn_here = False
        with self._condition:
            # Under the future's lock: completion on the I/O thread cannot slip between the checks.
            if not (self._withdrawn or self.done() or super().running()):
                if self._client.cancel(self._task):
                    self._withdrawn = withdrawn_here = True
                else:
                    self.set_running_or_notify_cancel()
        cancelled = super().cancel()
        if withdrawn_here:
            # A stdlib executor notifies waiters when its worker dequeues the cancelled item; this task will
            # never be dequeued, so notify now: wait() and as_completed() count the future as done.
            self.set_running_or_notify_cancel()
            self._release()
        return cancelled

    def result(self, timeout: Optional[float] = None) -> T:
        """The task's return value; re-raises its exception with the remote traceback as ``__cause__``.

        Raises:
            TimeoutError: not done within ``timeout`` seconds (the task keeps running).
            concurrent.futures.CancelledError: the future was cancelled.
        """
        if waiting.serves_queued_tasks():
            self._wait_serving(timeout)
            timeout = 0
        else:
            timeout = self._carry(timeout)
        return super().result(timeout)

    def wait_settled(self, timeout: Optional[float] = None) -> bool:
        """Wait until the future is done or cancelled (through `lucidity.waiting`); False on timeout."""
        if waiting.serves_queued_tasks():
            return self._wait_serving(timeout)
        with self._condition:
            return self._condition.wait_for(self.done, timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The task's exception, or None if it returned; raises as `result` on timeout or cancellation."""
        if waiting.serves_queued_tasks():
            self._wait_serving(timeout)
            timeout = 0
        else:
            timeout = self._carry(timeout)
        return super().exception(timeout)

    def _carry(self, timeout: Optional[float]) -> Optional[float]:
        """Waited for before it left: this thread may carry the task to a worker's door itself (`Client.call`,
        lucidity.directcall); the time left to wait."""
        if self._task.state is not TaskState.PENDING:
            return timeout
        started = time.monotonic()
        if self._client.call(self._task, submitted=True, timeout=timeout) and timeout is not None:
            return max(0.0, timeout - (time.monotonic() - started))
        return timeout

    def _wait_serving(self, timeout: Optional[float]) -> bool:
        """Wait through `lucidity.waiting`, which runs the worker's queued tasks meanwhile; False on timeout."""
        if self.done():
            return True
        with self._condition:
            if self._settled is None:
                self._settled = threading.Event()
                # Called at once if the future is done already (the condition is reentrant).
                self.add_done_callback(self._set_settled)
            settled = self._settled
        return waiting.wait(settled, timeout)

    def _set_settled(self, _: concurrent.futures.Future[T]) -> None:
        if self._settled is not None:
            self._settled.set()

    def _on_done(self, succeeded: bool, value: Any) -> None:
        if succeeded:
            self.set_result(value)
        else:
            self.set_exception(value)
        self._release()

    def _release(self) -> None:
        """Done or withdrawn: tell `on_settled`, and let the owner go."""
        on_settled, self._on_settled = self._on_settled, None
        if on_settled is not None:
            on_settled(self)
        # Dropping the owner may collect it here, on the I/O thread, outside every lock: its finalizer
        # finds the client idle and must not wait on this thread.
        self._owner = None


class _Outstanding:
    """The executor's futures that are not done yet, for ``shutdown(cancel_futures=True)``.

    Kept apart from the executor so that a future's `on_settled` does not keep the executor alive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[TaskFuture[Any]] = set()

    def add(self, future: TaskFuture[Any]) -> None:
        with self._lock:
            self._futures.add(future)

    def discard(self, future: TaskFuture[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def snapshot(self) -> list[TaskFuture[Any]]:
        with self._lock:
            return list(self._futures)


class _MapResults(itertools.chain[T]):
    """The iterator `Executor.map` returns: its results in order, flattened from its chunks by C code.

    A generator yielding each item, as the stdlib's map, cost about as much as the rest of a map of tiny
    items (issue 13): here ``next()`` runs no Python frame except once per chunk, in `_chunks_in_order`.
    Each item is popped from its chunk as it is handed over, so that a result yielded is referenced by
    the consumer alone (CPython issue 14406). ``close()``, or dropping the iterator, ends the map as it
    ends the stdlib's generator.
    """

    _chunks: Generator[Iterator[T], None, None]
    _handing: list[list[list[Any]]]

    def __new__(cls, feed: Feed, end_time: Optional[float], tracker: Optional[Tracker]) -> "_MapResults[T]":
        handing: list[list[list[Any]]] = []
        chunks = _chunks_in_order(feed, end_time, tracker, handing)
        results = cast("_MapResults[T]", super().from_iterable(chunks))
        # The generator does not refer to the iterator: dropping the iterator ends the map at once, no cycle.
        results._chunks, results._handing = chunks, handing
        return results

    def close(self) -> None:
        """Stop the map: nothing more is handed over, and the chunks not sent yet are cancelled."""
        for turns in self._handing:
            turns.clear()  # the rest of the chunk being handed over is dropped, as a closed generator's
        self._chunks.close()


def _chunks_in_order(feed: Feed, end_time: Optional[float], tracker: Optional[Tracker],
                     handing: list[list[list[Any]]]) -> Generator[Iterator[Any], None, None]:
    """Yield each chunk's results in order, as an iterator that pops them; ``next()`` raises TimeoutError
    after end_time. `handing` holds the turns of the chunk being handed over, for `_MapResults.close`.

    Each chunk taken frees its place in the window, and the next chunk is read and submitted here, in the
    consumer's thread. However the iteration ends, the chunks not sent yet are cancelled, as the stdlib's,
    and the progress bar, if any, is closed.
    """
    try:
        while True:
            chunk = feed.next_chunk(end_time, concurrent.futures.TimeoutError)
            if chunk is None:
                return
            feed.fill()
            chunk.reverse()
            # One turn per item: list.pop(chunk) hands over the next one; clearing the turns ends the chunk.
            turns = [chunk] * len(chunk)
            handing[:] = [turns]
            yield map(list.pop, turns)
    finally:
        feed.cancel()
        if tracker is not None:
            tracker.close()


class Executor(concurrent.futures.Executor):
    """A concurrent.futures Executor running each call as a task on lucidity workers.

    Args:
        max_workers: worker processes of the embedded cluster (default: the CPU count). With ``address``,
            at most this many of this executor's tasks run at once (default: as many as the cluster has
            workers).
        mp_context: accepted for compatibility and ignored (workers are started by node daemons).
        initializer: ``initializer(*initargs)`` runs on a worker before its first task of this executor.
        initargs: the arguments of ``initializer``.
        max_tasks_per_child: a worker is replaced after running this many tasks of this executor.
        address: a running cluster's control address (default: ``$LUCIDITY_ADDRESS``; else an embedded
            cluster is started, and stopped when the executor shuts down).
        connect_timeout: seconds to wait for a cluster with a worker before `lucidity.ClusterUnavailable`.
        memory_limit: memory cap of each task, in bytes or as "200MB" (see `lucidity.Pool`).
        secret: the cluster secret (see `lucidity.Pool`).
        ship: packages to send to every worker up front (see docs/shipping.md).
        forward_output: print what the tasks write on the nodes here, on stderr, prefixed with the worker's
            pid and node (see `lucidity.Pool`).

    Raises:
        ValueError: max_workers <= 0, as the stdlib.

    The differences from ProcessPoolExecutor are listed in this module's docstring. An executor that is
    neither shut down nor referenced any more is torn down once its work is done; at interpreter exit, the
    remaining work is waited for first, as the stdlib does.
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable[..., object]] = None, initargs: Iterable[Any] = (), *,
                 max_tasks_per_child: Optional[int] = None, address: Optional[str] = None,
                 connect_timeout: float = 30.0, memory_limit: Union[int, str, None] = None,
                 secret: Union[str, bytes, None] = None, ship: Sequence[str] = (),
                 forward_output: bool = True) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None and (not isinstance(max_tasks_per_child, int) or max_tasks_per_child < 1):
            raise ValueError("max_tasks_per_child must be >= 1")
        self._lock = threading.Lock()
        self._is_shut_down = False
        self._outstanding = _Outstanding()
        # One bound method for every future: a new one per submit would be one more object for the collector.
        self._forget_future = self._outstanding.discard
        self._feeds: weakref.WeakSet[Feed] = weakref.WeakSet()
        self._closer: Optional[threading.Thread] = None
        self._cluster: Optional[LocalCluster] = None
        memory = parse_size(memory_limit)
        self._client, self._cluster = open_client(address, max_workers, memory_limit=memory, secret=secret,
                                                  ship=ship, connect_timeout=connect_timeout)
        self._client.reports.forward_output = forward_output
        self._max_workers = max_workers or self._client.worker_count
        self._options = TaskOptions.for_pool(self._client, initializer, initargs, max_tasks_per_child, memory)
        self._finalizer = weakref.finalize(self, _teardown, self._client, self._cluster)

    # -- submitting --------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._is_shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker and return its future.

        The function and arguments are serialized here, so what cannot travel fails now, not later.

        Raises:
            RuntimeError: the executor is shut down.
            The pickler's own exception (TypeError, pickle.PicklingError...): the function or an argument
                cannot be serialized; nothing was sent.
        """
        self._check_open()
        function = self._client.function(fn)
        frames = self._client.dumps((args, kwargs), f"arguments of {function.description}")
        future: TaskFuture[T] = TaskFuture(self._client, function, TaskMode.CALL, frames, self._options, owner=self,
                                           on_settled=self._forget_future, made_by="submit")
        with self._lock:
            # Checked again under the lock: a submit that passes is one that shutdown() waits for.
            self._check_open()
            self._outstanding.add(future)
            self._client.submit([future.task])
        return future

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1, progress: ProgressOption = None) -> Iterator[T]:
        """Return an iterator equivalent to ``map(fn, *iterables)``, computed on the workers.

        Results come in input order. The input is read lazily: the call submits the first `MAP_WINDOW`
        tasks and each result taken submits one more.

        Args:
            fn: called as ``fn(*args)`` with one item of each iterable.
            timeout: seconds from this call after which ``next()`` raises TimeoutError (None: no limit).
            chunksize: items per task; larger chunks amortize the per-task cost of tiny calls.
            progress: True shows a tqdm bar of finished calls; or a tqdm-like class, or a callable called
                with ``(done, total)`` (`lucidity.progress`). The bar closes when the iteration ends.

        Raises:
            RuntimeError: the executor is shut down.
            ValueError: chunksize < 1.
            The pickler's own exception: ``fn`` cannot be serialized.
            From ``next()``: TimeoutError, or the exception of a call, at its position; the calls not yet
                consumed are then cancelled where they have not started.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else time.monotonic() + timeout
        self._check_open()
        sized = bool(iterables) and all(hasattr(iterable, "__len__") for iterable in iterables)
        total = min(map(len, iterables)) if sized else None  # type: ignore[arg-type]
        # One iterable: the items travel as they are, as Pool.map's (a 1-tuple per item cost a third of the
        # map's time in pickling and unpacking); iter() here, so that what is not iterable fails from map().
        mode, inputs = ((TaskMode.MAP, iter(iterables[0])) if len(iterables) == 1
                        else (TaskMode.STARMAP, zip(*iterables)))
        function = self._client.function(fn)  # before a bar appears (see Pool._map_async)
        with tracking(progress, total, label("map", fn)) as tracker:
            call = MapCall(self._client, self._options, function, mode, "map", tracker)
        # The feed holds the executor: a map alive, or its tasks in flight, keep it from being torn down.
        feed = Feed(call, inputs, chunksize, owner=self)
        with self._lock:
            self._check_open()
            self._feeds.add(feed)
        feed.fill()
        return _MapResults(feed, end_time, tracker)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no new work, then stop the executor's client (and its embedded cluster) once work ends.

        Args:
            wait: wait here until every submitted task has ended and the executor is torn down. With
                False, return at once; the teardown happens in the background when the work ends.
            cancel_futures: cancel the futures whose tasks have not been sent to a worker yet, and stop
                reading the input of started maps. Tasks already on a worker run to the end.
        """
        with self._lock:
            self._is_shut_down = True
            feeds = list(self._feeds)
        if cancel_futures:
            for feed in feeds:
                feed.withdraw()
            for future in self._outstanding.snapshot():
                future.cancel()
        if wait:
            self._finish(feeds)
            closer = self._closer
            if closer is not None:
                closer.join()
        else:
            with self._lock:
                if self._closer is not None or not self._finalizer.alive:
                    return
                self._closer = threading.Thread(target=self._finish_in_background, args=(feeds,),
                                                name="lucidity-executor-shutdown", daemon=True)
                self._closer.start()

    def _finish(self, feeds: list[Feed]) -> None:
        """Submit the rest of started maps (the input of a map started before shutdown() was accepted with the
        map), wait for every task to end, then tear down."""
        for feed in feeds:
            feed.lift()
            feed.fill()
        self._client.wait_idle()
        self._finalizer()

    def _finish_in_background(self, feeds: list[Feed]) -> None:
        # A daemon thread, so that it never holds up interpreter exit by itself: at exit, the finalizer
        # waits for the remaining work in the main thread instead, as the stdlib does.
        try:
            self._finish(feeds)
        except Exception:
            logger.exception("lucidity executor: the background shutdown failed")

    def __reduce__(self) -> Any:
        raise TypeError("a lucidity Executor cannot be pickled or passed to another process; "
                        "inside a task, create an Executor there (it joins the same cluster)")

    def __repr__(self) -> str:
        cls = type(self)
        state = "shut down" if getattr(self, "_is_shut_down", False) else "running"
        return f"<{cls.__module__}.{cls.__qualname__} {state} max_workers={getattr(self, '_max_workers', None)}>"


def _teardown(client: Client, cluster: Optional[LocalCluster]) -> None:
    """Stop the client and the embedded cluster once no task is left (the finalizer; runs once)."""
    client.wait_idle()
    client.shutdown()
    if cluster is not None:
        cluster.close()
