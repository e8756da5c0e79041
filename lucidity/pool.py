"""Pool: multiprocessing.Pool semantics and nothing more (its result types are in `lucidity.poolresults`).

``from lucidity import Pool`` replaces ``from multiprocessing import Pool``. Every method, argument,
result type and misuse error follows the standard library; the tasks run on worker processes supervised
by node daemons — an embedded local cluster by default, a running cluster with ``address=`` or
``$LUCIDITY_ADDRESS``.

Deliberate differences from multiprocessing.Pool (each one makes a failure visible instead of silent):

- A function or argument that cannot be serialized raises the pickler's own exception (``TypeError``,
  ``pickle.PicklingError``...), with lucidity's explanation as a note, from the submitting call, and nothing
  is sent; the stdlib raises the same exception later, from the result's ``get()``. An item of ``imap`` that
  cannot be serialized fails in its place, since imap reads its input after returning.
- Lambdas and closures travel by value (dill). The caller's main script reaches workers as under spawn
  (imported as ``__mp_main__``, its ``__main__`` block not run), except that names bound only in that block
  travel with the tasks that read them and a script without the guard runs as under fork
  (`lucidity.mainscript`).
- ``terminate()`` fails every unfinished result with an error instead of leaving ``get()`` to hang.
- A worker that dies fails its task with `lucidity.WorkerCrashed` instead of hanging the pool.
- ``imap``/``imap_unordered`` read their input lazily, a bounded window ahead of the consumer, so an
  endless generator works; after ``close()`` they read the rest eagerly, as the stdlib does.
- ``initializer`` runs once per worker and pool before the worker's first task for that pool; workers of a
  shared cluster may serve several pools.
- The private attributes that widely copied recipes read exist with the stdlib's meaning: ``_processes``,
  ``_cache`` (the results not ready yet, by job number; empty after ``close()`` and ``join()``),
  ``MapResult._number_left`` (chunks not done yet) and ``len(_pool)``. The entries of ``_pool`` stand for
  workers that belong to node daemons, maybe on other machines: their ``pid`` is None and they cannot be
  terminated or joined from here.
- A result's ``callback`` that raises is logged, and the result is ready all the same (the stdlib's result
  handler thread dies, and the pool hangs).
- Once yielded by ``imap`` or ``imap_unordered``, chunked or not, a result is referenced by the caller alone
  (CPython issue 14406; the stdlib's chunked ``imap`` keeps the rest of a chunk's list).
"""

from __future__ import annotations

import enum
import functools
import threading
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

from .client import Client
from .cluster import LocalCluster, open_client
from .feed import Feed, MapCall
from .messages import TaskMode
from .sizes import parse_size
from .options import TaskOptions
from .progressbar import ProgressOption, Tracker, label, tracking, waited
from .poolresults import ApplyResult, AsyncResult, IMapIterator, IMapUnorderedIterator, MapResult, _ResultCache
from .task import FunctionRef, Task

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "IMapUnorderedIterator"]

T = TypeVar("T")


class PoolState(enum.Enum):
    RUN = "RUN"
    CLOSE = "CLOSE"
    TERMINATE = "TERMINATE"


_POOL_TRANSITIONS = {
    PoolState.RUN: {PoolState.CLOSE, PoolState.TERMINATE},
    PoolState.CLOSE: {PoolState.TERMINATE, PoolState.CLOSE},
    PoolState.TERMINATE: {PoolState.TERMINATE},
}


class _WorkerPlaceholder:
    """An entry of `Pool._pool`, for recipes that count or inspect the pool's processes.

    The workers belong to node daemons (maybe on other machines, and shared with other clients), and the
    client keeps no list of them that a pool could hand out: ``pid`` is None, and there is no ``terminate``
    or ``join``. ``_identity`` is ``(n,)`` for the n-th, as a pool worker's, and ``is_alive()`` is True
    until the pool is terminated or joined.
    """

    pid: Optional[int] = None

    def __init__(self, number: int, finalizer: "weakref.finalize[..., Any]") -> None:
        self._identity = (number,)
        self._finalizer = finalizer

    def is_alive(self) -> bool:
        return self._finalizer.alive

    def __repr__(self) -> str:
        state = "started" if self.is_alive() else "stopped"
        return f"<lucidity pool worker {self._identity[0]} {state} (runs on a node daemon)>"


class Pool:
    """A process pool with the interface of multiprocessing.Pool, running on lucidity node daemons.

    Args:
        processes: worker processes of the embedded cluster (default: CPU count). With ``address``, at most
            this many workers of the cluster run this pool's tasks at once (default: all of them).
        initializer: ``initializer(*initargs)`` runs on a worker before its first task for this pool.
        initargs: the arguments of ``initializer``.
        maxtasksperchild: a worker is replaced after running this many tasks of this pool.
        context: accepted for compatibility and ignored (workers are started by node daemons).
        address: a running cluster's control address (default: ``$LUCIDITY_ADDRESS``; else an embedded
            cluster is started and stopped with the pool).
        connect_timeout: seconds to wait for a cluster with a worker before `lucidity.ClusterUnavailable`.
        memory_limit: memory cap of each task, in bytes or as "200MB"/"1.5GiB" (the node's own cap applies
            too; the smaller wins). A task over it fails with `lucidity.MemoryLimitExceeded`, a MemoryError.
        secret: the cluster secret (default: $LUCIDITY_SECRET or $LUCIDITY_SECRET_FILE for a running
            cluster; the embedded cluster needs none). A wrong or missing one raises
            `lucidity.AuthenticationError` from the constructor.
        ship: names of pure-Python packages or modules to send to every worker up front (modules the
            nodes lack are otherwise fetched from this process on first import; see docs/shipping.md).
        forward_output: print what the tasks write to stdout and stderr on the nodes here, on stderr, each
            line prefixed with its worker's pid and node (default). False leaves it in the nodes' logs.
            Workers of the embedded cluster write to this process's own stdout and stderr, as
            multiprocessing's do, either way (docs/pool.md).

    The map methods take ``progress=``: True shows a tqdm bar of finished items (``pip install
    'lucidity-pool[progress]'``), a tqdm-like class is used instead, and a callable is called with
    ``(done, total)`` as items finish (`lucidity.progress`).

    Raises:
        ValueError: processes < 1, or a bad maxtasksperchild, as the stdlib.
        TypeError: initializer is not callable, as the stdlib.
    """

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None, context: Any = None,
                 *, address: Optional[str] = None, connect_timeout: float = 30.0, ship: Sequence[str] = (),
                 memory_limit: Union[int, str, None] = None, secret: Union[str, bytes, None] = None,
                 forward_output: bool = True) -> None:
        self._state = PoolState.RUN
        self._cache = _ResultCache()
        self._pool: list[_WorkerPlaceholder] = []
        self._cluster: Optional[LocalCluster] = None
        self._feeders: list[threading.Thread] = []
        self._feeds: "weakref.WeakSet[Feed]" = weakref.WeakSet()
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        memory = parse_size(memory_limit)
        self._client, self._cluster = open_client(address, processes, memory_limit=memory, secret=secret, ship=ship,
                                                  connect_timeout=connect_timeout)
        self._client.reports.forward_output = forward_output
        self._processes = processes or self._client.worker_count
        self._options = TaskOptions.for_pool(self._client, initializer, initargs, maxtasksperchild, memory)
        self._finalizer = weakref.finalize(self, _teardown, self._client, self._cluster)
        self._pool = [_WorkerPlaceholder(number, self._finalizer) for number in range(1, self._processes + 1)]

    # -- submitting --------------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is not PoolState.RUN:
            raise ValueError("Pool not running")

    def _map_call(self, function: FunctionRef, mode: TaskMode, made_by: str,
                  tracker: Optional[Tracker] = None) -> MapCall:
        """What the chunks of one map share."""
        return MapCall(self._client, self._options, function, mode, made_by, tracker)

    def _submit(self, tasks: list[Task], result: ApplyResult[Any], here: bool = False) -> None:
        """Submit the tasks of `result`, counting it in ``_cache`` until it is ready. With `here`, a lone
        blocking call, the caller's thread may carry it to a worker on this machine itself and return with
        its outcome (`Client.call`)."""
        self._cache.add(result)
        if here and self._client.call(tasks[0]):
            return
        try:
            self._client.submit(tasks)
        except BaseException:
            self._cache.discard(result._job)
            raise

    def apply(self, func: Callable[..., T], args: Sequence[Any] = (), kwds: Mapping[str, Any] = {}) -> T:
        """Call ``func(*args, **kwds)`` on a worker and return its result."""
        return self._apply_async(func, args, kwds, None, None, "apply", here=True).get()

    def apply_async(self, func: Callable[..., T], args: Sequence[Any] = (), kwds: Mapping[str, Any] = {},
                    callback: Optional[Callable[[T], object]] = None,
                    error_callback: Optional[Callable[[BaseException], object]] = None) -> ApplyResult[T]:
        """Submit ``func(*args, **kwds)``; the function and arguments are serialized here, before returning."""
        return self._apply_async(func, args, kwds, callback, error_callback, "apply_async")

    def _apply_async(self, func: Callable[..., T], args: Sequence[Any], kwds: Mapping[str, Any],
                     callback: Optional[Callable[[T], object]],
                     error_callback: Optional[Callable[[BaseException], object]], made_by: str,
                     here: bool = False) -> ApplyResult[T]:
        self._check_running()
        function = self._client.function(func)
        frames = self._client.dumps((tuple(args), dict(kwds)), f"arguments of {function.description}")
        result: ApplyResult[T] = ApplyResult(callback, error_callback, self._cache)
        task = self._options.new_task(self._client, function, TaskMode.CALL, frames,
                                      result._set_one, made_by=made_by)
        result._task, result._client = task, self._client
        self._submit([task], result, here)
        return result

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: Optional[int] = None, *,
            progress: ProgressOption = None) -> list[T]:
        """``list(map(func, iterable))`` computed on the workers, in chunks; ``progress=True`` shows a bar."""
        result = self._map_async(func, iterable, TaskMode.MAP, chunksize, made_by="map", progress=progress)
        return waited(result._tracker, result.get)

    def starmap(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, *, progress: ProgressOption = None) -> list[T]:
        """Like `map`, with each item unpacked as the arguments: ``func(*item)``."""
        result = self._map_async(func, iterable, TaskMode.STARMAP, chunksize, made_by="starmap", progress=progress)
        return waited(result._tracker, result.get)

    def map_async(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: Optional[int] = None,
                  callback: Optional[Callable[[list[T]], object]] = None,
                  error_callback: Optional[Callable[[BaseException], object]] = None, *,
                  progress: ProgressOption = None) -> MapResult[T]:
        return self._map_async(func, iterable, TaskMode.MAP, chunksize, callback, error_callback, "map_async",
                               progress)

    def starmap_async(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None, callback: Optional[Callable[[list[T]], object]] = None,
                      error_callback: Optional[Callable[[BaseException], object]] = None, *,
                      progress: ProgressOption = None) -> MapResult[T]:
        return self._map_async(func, iterable, TaskMode.STARMAP, chunksize, callback, error_callback,
                               "starmap_async", progress)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], mode: TaskMode,
                   chunksize: Optional[int] = None, callback: Optional[Callable[[list[Any]], object]] = None,
                   error_callback: Optional[Callable[[BaseException], object]] = None,
                   made_by: str = "map", progress: ProgressOption = None) -> MapResult[Any]:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        length = len(items)  # type: ignore[arg-type]
        if chunksize is None:
            chunksize, extra = divmod(length, self._processes * 4)
            if extra:
                chunksize += 1
        if length == 0:
            chunksize = 0
        # Serialized first (the pickler's exception comes from the call), so that a bar appears only once
        # the map is under way: an interrupt as it appears then lands where the bar is closed for it.
        function = self._client.function(func)
        with tracking(progress, length, label(made_by, func)) as tracker:
            call = self._map_call(function, mode, made_by, tracker)
            result: MapResult[Any] = MapResult(chunksize, length, callback, error_callback, self._cache)
            result._tracker = tracker
            if chunksize <= 0:
                return result
            # Every chunk is serialized before any task is made, so that one that cannot travel raises with
            # nothing sent. (Submitting slices of tasks as they were made won nothing, whether or not this
            # thread then waited for the I/O thread's turn: the client's two threads share one GIL.)
            self._submit(call.tasks(call.payloads(items, chunksize), chunksize, length, result._set), result)
        return result

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1, *,
             progress: ProgressOption = None) -> Iterator[T]:
        """Like `map`, yielding results in order as they become available; reads the input lazily."""
        return self._imap(IMapIterator, func, iterable, chunksize, "imap", progress)

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1, *,
                       progress: ProgressOption = None) -> Iterator[T]:
        """Like `imap`, yielding results in the order they finish."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, "imap_unordered", progress)

    def _imap(self, kind: type[IMapIterator[Any]], func: Callable[[Any], Any], iterable: Iterable[Any],
              chunksize: int, made_by: str, progress: ProgressOption = None) -> Iterator[Any]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        # The total is known up front for a sized input; else the bar counts what has been read so far.
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        function = self._client.function(func)  # before the bar, as in _map_async
        with tracking(progress, total, label(made_by, func)) as tracker:
            call = self._map_call(function, TaskMode.MAP, made_by, tracker)
        job = self._cache.new_job()
        # In the cache until the feeder has read the input and every result has arrived, as the stdlib's.
        feed = Feed(call, iterable, chunksize, ordered=kind._ordered,
                    on_settled=functools.partial(self._cache.discard, job))
        result = kind(feed, job)
        self._cache.add(result)
        self._feeds.add(feed)
        feeder = threading.Thread(target=feed.run, name="lucidity-imap-feeder", daemon=True)
        self._feeders.append(feeder)
        feeder.start()
        return result if chunksize == 1 else _flatten(feed)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _move(self, new: PoolState) -> None:
        if new not in _POOL_TRANSITIONS[self._state]:
            raise ValueError(f"Pool cannot move from {self._state.value} to {new.value}")
        self._state = new

    def close(self) -> None:
        """Accept no more tasks; the pool finishes those submitted, then `join` stops its workers."""
        if self._state is PoolState.RUN:
            self._move(PoolState.CLOSE)
        for feed in list(self._feeds):
            feed.lift()  # the stdlib's task handler reads every input to its end

    def terminate(self) -> None:
        """Stop now: unfinished tasks are stopped on the nodes and their results fail."""
        self._move(PoolState.TERMINATE)
        for feed in list(self._feeds):
            feed.stop()
        self._finalizer()

    def join(self) -> None:
        """Wait for the tasks to finish (after close) and for the pool's processes to stop."""
        if self._state is PoolState.RUN:
            raise ValueError("Pool is still running")
        for feeder in self._feeders:
            feeder.join()
        if self._state is PoolState.CLOSE:
            self._client.wait_idle()
            self._cache.wait_empty()  # the last results settle on the client's thread after their tasks end
        self._finalizer()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        cls = type(self)
        size = getattr(self, "_processes", None)
        return f"<{cls.__module__}.{cls.__qualname__} state={self._state.value} pool_size={size}>"

    def __del__(self, _warn: Callable[..., object] = warnings.warn, _running: PoolState = PoolState.RUN) -> None:
        # The defaults keep what the check needs: at interpreter exit this module's globals may be gone already.
        if getattr(self, "_state", None) is _running and hasattr(self, "_finalizer"):
            _warn(f"unclosed running lucidity pool {self!r}", ResourceWarning, source=self)


def _flatten(feed: Feed) -> Iterator[Any]:
    """Yield the items of each chunk in order, keeping no reference to an item once yielded (CPython issue 14406)."""
    while True:
        chunk = feed.next_chunk()
        if chunk is None:
            return
        chunk.reverse()
        while chunk:
            yield chunk.pop()


def _teardown(client: Client, cluster: Optional[LocalCluster]) -> None:
    client.shutdown(cancel=True)
    if cluster is not None:
        cluster.close()
