"""The @job decorator, its five ways to run, and Job (a Future with try_get / await_get).

(The module is ``jobs``, not ``job``: importing a submodule named like the decorator would rebind
``lucidity.job`` to the module, and ``from lucidity import job`` would then stop being the decorator.)

As in the original crate, decorating a function gives it five ways to run::

    @job
    def square(a): return a * a

    square(3)                      # a plain call, in this process
    square.local(3)                # in a worker process on this machine, blocking
    square.remote(3)               # on a node chosen by the fanout scheme, blocking
    square.local_async(3)          # -> Job; .try_get(), .await_get(), or `await` it
    square.remote_async(3)         # -> Job
    square.remote_fanout([(1,), 2, (3,)])   # spread over the nodes, blocking for all, results in order

Jobs run on the default cluster (`lucidity.connect`, else an embedded one). Inside a task, they run on the
cluster of that task, and a task waiting on its children lends its worker to queued work meanwhile
(`lucidity.waiting`), so nesting never deadlocks.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
import sys
from typing import Any, Callable, Generator, Generic, Iterable, Optional, Sequence, TypeVar, Union, overload

from .client import Client
from .cluster import current_node, default_client
from .errors import ClusterUnavailable
from .executor import TaskFuture
from .messages import TaskMode
from .sizes import parse_size
from .options import TaskOptions
from .placement import Fanout, local_node, place
from .progressbar import ProgressOption, Tracker, label, observe, tracking, waited

__all__ = ["job", "Job", "JobFunction", "FANOUT_SCHEMES"]

T = TypeVar("T")
#: The names ``fanout=`` accepts (the values of `lucidity.placement.Fanout`).
FANOUT_SCHEMES = tuple(scheme.value for scheme in Fanout)
_MISSING = object()


class Job(TaskFuture[T]):
    """A task's future: a real `concurrent.futures.Future`, with the crate's `try_get` and `await_get`.

    ``cancel()`` withdraws a job still queued in the client (it never runs), as for the Executor's futures.
    Blocking waits go through `lucidity.waiting`, so a task that awaits jobs keeps its worker useful.
    """

    def try_get(self, default: Any = None) -> Any:
        """The result if the job is done (raising its exception if it failed), else `default`."""
        if not self.done():
            return default
        return self.result()

    def await_get(self, timeout: Optional[float] = None) -> T:
        """Block until the job is done (at most `timeout` seconds) and return its result or raise."""
        return self.result(timeout)

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()


class JobFunction(Generic[T]):
    """A function decorated with `job`. Calling it is a plain call; the methods run it on the cluster."""

    def __init__(self, function: Callable[..., T], *, memory: Union[int, str, None] = None,
                 timeout: Optional[float] = None, cpu_time: Optional[float] = None,
                 fanout: Union[Fanout, str] = Fanout.ROUNDROBIN, retries: int = 0,
                 forward_output: bool = True) -> None:
        if fanout not in FANOUT_SCHEMES:
            raise ValueError(f"fanout must be one of {', '.join(FANOUT_SCHEMES)}, not {fanout!r}")
        self._task_options = TaskOptions(memory=parse_size(memory), timeout=timeout, cpu_time=cpu_time,
                                         retries=retries)
        functools.update_wrapper(self, function)
        self.function = function
        self.fanout = Fanout(fanout)
        self.forward_output = forward_output
        self._turn = itertools.count()

    @property
    def memory(self) -> Optional[int]:
        """The memory cap of each task, in bytes (None: the node's own)."""
        return self._task_options.memory

    @property
    def timeout(self) -> Optional[float]:
        """The wall-time limit of each task, in seconds (None: none)."""
        return self._task_options.timeout

    @property
    def cpu_time(self) -> Optional[float]:
        """The CPU-time limit of each task, in seconds (None: none)."""
        return self._task_options.cpu_time

    @property
    def retries(self) -> int:
        """How many times a task whose worker crashed is run again."""
        return self._task_options.retries

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> Any:
        # By reference where the module attribute is this object (so workers import it); else by value. Not
        # for the caller's main script, which a worker knows as __mp_main__ only once it has run it: a job
        # of the script started by a task (nested) goes by value too, as its top-level jobs do.
        module = sys.modules.get(self.__module__)
        name: str = getattr(self, "__qualname__")
        if self.__module__ not in ("__main__", "__mp_main__") and getattr(module, name, None) is self:
            return name
        return (_rebuild, (self.function, self.options))

    @property
    def options(self) -> dict[str, Any]:
        """The decorator's options, as passed to `job`."""
        return {"memory": self.memory, "timeout": self.timeout, "cpu_time": self.cpu_time,
                "fanout": self.fanout.value, "retries": self.retries, "forward_output": self.forward_output}

    def __repr__(self) -> str:
        return f"<job {getattr(self, '__qualname__')} fanout={self.fanout.value}>"

    # -- the five ways ---------------------------------------------------------------------------------

    def local(self, *args: Any, **kwargs: Any) -> T:
        """Run in a worker process on this machine and block for the result."""
        client = default_client()
        return self._submit(client, [(args, kwargs)], [self._local_node(client)], "local", here=True)[0].await_get()

    def remote(self, *args: Any, **kwargs: Any) -> T:
        """Run on a node chosen by the fanout scheme and block for the result."""
        client = default_client()
        return self._submit(client, [(args, kwargs)], self._place(client, 1), "remote", here=True)[0].await_get()

    def local_async(self, *args: Any, **kwargs: Any) -> "Job[T]":
        """Start in a worker process on this machine; returns a `Job` at once."""
        client = default_client()
        return self._submit(client, [(args, kwargs)], [self._local_node(client)], "local_async")[0]

    def remote_async(self, *args: Any, **kwargs: Any) -> "Job[T]":
        """Start on a node chosen by the fanout scheme; returns a `Job` at once."""
        client = default_client()
        return self._submit(client, [(args, kwargs)], self._place(client, 1), "remote_async")[0]

    def remote_fanout(self, items: Iterable[Any], *, progress: ProgressOption = None) -> list[T]:
        """Run once per item — a tuple is unpacked as the arguments, anything else is the one argument —
        spread over the nodes by the fanout scheme; block for all and return the results in order.

        ``progress=True`` shows a tqdm bar of finished items (or a tqdm-like class, or a callable called
        with ``(done, total)``: `lucidity.progress`).

        Raises the exception of the first failed item (in item order) once every item is done.
        """
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((tuple(item) if isinstance(item, tuple) else (item,)), {}) for item in items]
        client = default_client()
        with tracking(progress, len(calls), label("remote_fanout", self.function)) as tracker:
            jobs = self._submit(client, calls, self._place(client, len(calls)), "remote_fanout", fanned=True,
                                tracker=tracker)

        def settle() -> None:
            for one in jobs:
                one.wait_settled()

        waited(tracker, settle)
        return [one.result() for one in jobs]

    # -- placement and submission ----------------------------------------------------------------------

    def _local_node(self, client: Client) -> Optional[str]:
        host = socket.gethostname()
        node = local_node(client.nodes(), current_node(), host)
        if node is None:
            raise ClusterUnavailable(f"no node of the cluster at {client.address} runs on this machine ({host}); "
                                     "use .remote() or start `lucidity node` here")
        return node

    def _place(self, client: Client, count: int) -> list[Optional[str]]:
        """Choose a node for each of `count` calls by this job's fanout scheme."""
        nodes = client.nodes()
        turn = 0
        if nodes and self.fanout is Fanout.ROUNDROBIN:
            turn = next(self._turn)  # this burst takes `count` turns of the round
            for _ in range(count - 1):
                next(self._turn)
        return place(nodes, self.fanout, count, turn=turn)

    def _submit(self, client: Client, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
                nodes: Sequence[Optional[str]], made_by: str, fanned: bool = False,
                tracker: Optional[Tracker] = None, here: bool = False) -> list["Job[T]"]:
        """Submit one task per call; `made_by` and, for a fanout, each call's position name it in errors.
        With `here` (one blocking call), the caller's thread may carry it to a worker on this machine itself
        and return with its outcome (`Client.call`)."""
        function = client.function(self)
        jobs: list[Job[T]] = []
        for index, ((args, kwargs), node) in enumerate(zip(calls, nodes)):
            frames = client.dumps((args, kwargs), f"arguments of {function.description}")
            jobs.append(Job(client, function, TaskMode.CALL, frames, self._task_options, made_by=made_by,
                            items=range(index, index + 1) if fanned else None, node=node))
        for one in jobs:
            if not self.forward_output:
                client.reports.silence(one.task.id)
            if tracker is not None:
                observe(tracker, one, 1)
        if not (here and client.call(jobs[0].task)):
            client.submit([one.task for one in jobs])
        return jobs


def _rebuild(function: Callable[..., Any], options: dict[str, Any]) -> JobFunction[Any]:
    return JobFunction(function, **options)


@overload
def job(function: Callable[..., T]) -> JobFunction[T]: ...


@overload
def job(*, memory: Union[int, str, None] = None, timeout: Optional[float] = None, cpu_time: Optional[float] = None,
        fanout: Union[Fanout, str] = Fanout.ROUNDROBIN, retries: int = 0,
        forward_output: bool = True) -> Callable[[Callable[..., T]], JobFunction[T]]: ...


def job(function: Any = None, **options: Any) -> Any:
    """Give a function the crate's five ways to run. Use as ``@job`` or ``@job(fanout="least_loaded", ...)``.

    Keyword Args:
        memory: the task's memory cap, in bytes or as "200MB"/"1.5GiB"; the node's own cap applies too
            (the smaller wins). A breach raises `lucidity.MemoryLimitExceeded`.
        timeout: wall-time limit in seconds, enforced by the node (`lucidity.JobTimeout`).
        cpu_time: CPU-time limit in seconds, enforced by the node (`lucidity.CpuLimitExceeded`).
        fanout: how `remote`, `remote_async` and `remote_fanout` pick nodes (`lucidity.placement.Fanout`, or
            its name): "roundrobin" (default), "random", or "least_loaded" (fewest running and queued tasks
            per worker).
        retries: how many times to rerun a task whose worker crashed (0: crashes are not retried).
        forward_output: print what the job's tasks write on the nodes here, on stderr, prefixed with the
            worker's pid and node (default); False leaves it in the nodes' logs.
    """
    if function is None:
        return lambda f: JobFunction(f, **options)
    return JobFunction(function, **options)
