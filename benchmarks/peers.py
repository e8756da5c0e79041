"""The pools compared: how to open, drive and close each one, and where its processes are.

Every peer is opened with 2 worker processes. A peer is a Pool (apply_async, map_async) or an Executor
(submit, map); the workloads call the four operations below and never the pool directly, so a Pool
workload maps onto an executor the same way for every executor:

    apply      Pool: apply_async(f, args).get(timeout)   Executor: submit(f, *args).result(timeout)
    map        Pool: map_async(f, xs, chunksize).get()   Executor: list(map(f, xs, chunksize=..., timeout=))
    submit     Pool: apply_async x n, then get() each    Executor: submit x n, then futures.wait()

``Pool.apply`` is ``apply_async(...).get()`` in both multiprocessing and lucidity; the explicit form only
adds a timeout, so that a hung peer fails its workload instead of the whole run.

Heavy imports (lucidity, loky) happen inside the functions: this module is imported by the worker
processes of spawn-based peers too (they re-import the parent's main module), and must not weigh on them.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

#: Worker processes of every peer.
PROCESSES = 2

#: Column names, in table order.
LUCIDITY = "lucidity"
LUCIDITY_CLI = "lucidity-cli"
LUCIDITY_EXECUTOR = "lucidity-exec"
MP_FORK = "mp-fork"
MP_SPAWN = "mp-spawn"
PPE = "PPE"
LOKY = "loky"
ALL_PEERS = [LUCIDITY, LUCIDITY_CLI, LUCIDITY_EXECUTOR, MP_FORK, MP_SPAWN, PPE, LOKY]
#: The peers that run on lucidity node daemons (their workers are the daemons' children).
LUCIDITY_PEERS = (LUCIDITY, LUCIDITY_CLI, LUCIDITY_EXECUTOR)

#: What each column is, for the report.
DESCRIPTIONS = {
    LUCIDITY: "lucidity.Pool(2): the embedded cluster (1 node daemon, its own control node, with 2 workers, ipc://)",
    LUCIDITY_CLI: "lucidity.Pool(2, address=...): a CLI cluster of 2 node daemons x 1 worker, tcp://127.0.0.1",
    LUCIDITY_EXECUTOR: "lucidity.Executor(2): the embedded cluster, through the Executor face",
    MP_FORK: 'multiprocessing.get_context("fork").Pool(2)',
    MP_SPAWN: 'multiprocessing.get_context("spawn").Pool(2)',
    PPE: "concurrent.futures.ProcessPoolExecutor(2) (its default context: fork on Linux before Python 3.14)",
    LOKY: "loky.get_reusable_executor(max_workers=2)",
}

#: Substrings of the command lines of helper processes that are not workers (semaphore trackers).
NOT_WORKERS = ("resource_tracker", "semaphore_tracker")


def unavailable_reason(name: str) -> Optional[str]:
    """Why peer `name` cannot run here (not installed, not importable), or None if it can."""
    if name == LOKY and importlib.util.find_spec("loky") is None:
        return "loky is not installed (pip install loky, or the bench extra)"
    if name == LUCIDITY_EXECUTOR:
        try:
            importlib.import_module("lucidity.executor")
        except Exception as exc:  # anything: a half-written module must not stop the run
            return f"lucidity.executor is not importable ({type(exc).__name__}: {exc})"
    return None


@dataclass
class Peer:
    """One pool implementation: the handle-level operations the workloads use.

    Args:
        name: the column name.
        is_executor: submit/map/shutdown rather than apply_async/map_async/close+join.
        open: make a fresh pool or executor with `PROCESSES` workers.
        node_pids: for lucidity, the node daemons serving this peer (empty: none, or found as children).
    """

    name: str
    is_executor: bool
    open: Callable[[], Any]
    node_pids: Sequence[int] = field(default_factory=list)

    def apply(self, pool: Any, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        """One blocking call: ``submit(fn).result()`` of an executor, ``Pool.apply`` of a pool (as users
        write it; lucidity carries it on the caller's thread, which ``apply_async().get()`` cannot). The
        harness's own timeout (`benchmarks.__main__`) bounds a pool that hangs; `timeout` bounds a future."""
        if self.is_executor:
            return pool.submit(fn, *args).result(timeout)
        return pool.apply(fn, args)

    def map(self, pool: Any, fn: Callable[[Any], Any], items: Sequence[Any], chunksize: Optional[int],
            timeout: float) -> list[Any]:
        """Pool.map with `chunksize` (None: the pool's default); executors need an explicit chunksize."""
        if self.is_executor:
            if chunksize is None:
                raise ValueError("an executor's map needs an explicit chunksize")
            return list(pool.map(fn, items, chunksize=chunksize, timeout=timeout))
        return pool.map_async(fn, items, chunksize).get(timeout)  # type: ignore[no-any-return]

    def submit_and_wait(self, pool: Any, fn: Callable[[], Any], count: int, timeout: float) -> list[Any]:
        """Submit `count` calls of `fn`, then wait for all; returns the handles, to check after timing."""
        if self.is_executor:
            futures = [pool.submit(fn) for _ in range(count)]
            _, not_done = concurrent.futures.wait(futures, timeout)
            if not_done:
                raise TimeoutError(f"{len(not_done)} of {count} futures not done within {timeout:.0f} s")
            return futures
        results = [pool.apply_async(fn) for _ in range(count)]
        for result in results:
            result.get(timeout)
        return results

    def close(self, pool: Any) -> None:
        """Graceful stop, waiting for the workers: close()+join(), or shutdown(wait=True)."""
        if self.is_executor:
            pool.shutdown(wait=True)
        else:
            pool.close()
            pool.join()

    def kill(self, pool: Any) -> None:
        """Stop after a failure, without waiting for unfinished work."""
        if self.is_executor:
            try:
                pool.shutdown(wait=False, cancel_futures=True)
            except TypeError:  # loky's shutdown has no cancel_futures
                pool.shutdown(wait=False)
        else:
            pool.terminate()

    def worker_pids(self) -> list[int]:
        """The worker processes of the (one) open pool of this peer."""
        import psutil

        if self.name in LUCIDITY_PEERS:
            return [child.pid for node in self.node_daemons() for child in node.children()
                    if "lucidity.node.worker" in _cmdline(child)]
        return [child.pid for child in psutil.Process().children()
                if not any(marker in _cmdline(child) for marker in NOT_WORKERS)]

    def node_daemons(self) -> list[Any]:
        """lucidity's node daemons: the given pids, else this process's children started as `lucidity node`."""
        import psutil

        if self.node_pids:
            return [psutil.Process(pid) for pid in self.node_pids]
        return [child for child in psutil.Process().children() if _is_node_daemon(_argv(child))]


def _argv(process: Any) -> list[str]:
    import psutil

    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


def _cmdline(process: Any) -> str:
    return " ".join(_argv(process))


def _is_node_daemon(argv: list[str]) -> bool:
    """``python -m lucidity [--log-level L] node ...``; the control daemon's argv has no "node" word."""
    return argv[1:3] == ["-m", "lucidity"] and "node" in argv


def make_peer(name: str, address: Optional[str] = None, node_pids: Sequence[int] = ()) -> Peer:
    """The peer called `name`; `address` and `node_pids` are those of the CLI cluster, for lucidity-cli."""
    if name == LUCIDITY:
        def open_lucidity() -> Any:
            import lucidity

            return lucidity.Pool(PROCESSES)

        return Peer(name, False, open_lucidity)
    if name == LUCIDITY_CLI:
        if address is None:
            raise ValueError("lucidity-cli needs the CLI cluster's address")

        def open_cli() -> Any:
            import lucidity

            return lucidity.Pool(PROCESSES, address=address)

        return Peer(name, False, open_cli, list(node_pids))
    if name == LUCIDITY_EXECUTOR:
        def open_executor() -> Any:
            import lucidity

            return lucidity.Executor(PROCESSES)

        return Peer(name, True, open_executor)
    if name in (MP_FORK, MP_SPAWN):
        def open_mp() -> Any:
            import multiprocessing

            return multiprocessing.get_context(name.split("-")[1]).Pool(PROCESSES)

        return Peer(name, False, open_mp)
    if name == PPE:
        return Peer(name, True, lambda: concurrent.futures.ProcessPoolExecutor(PROCESSES))
    if name == LOKY:
        def open_loky() -> Any:
            import loky

            return loky.get_reusable_executor(max_workers=PROCESSES)

        return Peer(name, True, open_loky)
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(ALL_PEERS)}")


def uss(pid: int) -> int:
    """Unique set size of process `pid`, in bytes: the memory that would be freed if it exited."""
    import psutil

    return int(psutil.Process(pid).memory_full_info().uss)
