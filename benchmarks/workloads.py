"""The workloads: what each one does to a peer's pool, and the samples it reports.

A workload gets a `Peer`, an open warmed-up pool of it, the sizes of this run and `emit`, and calls
``emit(metric, samples)`` with raw samples (seconds, tasks/s, bytes...). Samples from every round are
pooled by the orchestrator, which takes medians and percentiles (`benchmarks.report`). Correctness is
checked after the clock stops, so that a broken peer cannot post a fantastic number.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import tasks
from .peers import LUCIDITY_PEERS, PROCESSES, Peer, uss

Emit = Callable[[str, list[float]], None]

#: A workload's name (for --only) and the metrics it emits.
METRICS = {
    "memory": ["worker_uss", "daemon_uss"],
    "apply": ["apply_latency"],
    "map": ["map_throughput"],
    "map-chunk1": ["map1_throughput"],
    "submit": ["submit_throughput"],
    "array": ["array_gbps"],
    "startup": ["start_time", "close_time", "start_cpu"],
}
#: The order workloads run in within one peer's process: memory first, while the workers are fresh; startup
#: last, because it opens pools of its own after the shared one is closed.
ORDER = list(METRICS)

#: Seconds the pool sits idle before its workers' memory is measured.
IDLE_SETTLE = 0.5
#: Items of the map that warms up a new pool (enough for every worker to run some).
WARMUP_MAP_ITEMS = 64
#: Bytes in a gigabyte, for GB/s.
GIGABYTE = 1e9


@dataclass
class Sizes:
    """The sizes of one round of one peer (the orchestrator divides the run's totals by the rounds)."""

    apply_calls: int
    apply_warmup: int
    map_items: int
    map1_items: int
    submits: int
    array_bytes: int
    array_repeats: int
    starts: int
    #: Seconds any single workload step may take before it counts as hung.
    timeout: float


def executor_chunksize(items: int) -> int:
    """The chunksize Pool.map picks by default (4 chunks per worker), for executors' map."""
    return math.ceil(items / (4 * PROCESSES))


def warm_up(peer: Peer, pool: Any, sizes: Sizes) -> None:
    """Run tasks on every worker: connections made, functions shipped and imported, caches filled."""
    for _ in range(sizes.apply_warmup):
        peer.apply(pool, tasks.noop, (), sizes.timeout)
    peer.map(pool, tasks.square, range(WARMUP_MAP_ITEMS), 1, sizes.timeout)


def memory(peer: Peer, pool: Any, sizes: Sizes, emit: Emit) -> None:
    """USS of each idle worker, and of lucidity's node daemons (none for the other peers)."""
    time.sleep(IDLE_SETTLE)
    workers = peer.worker_pids()
    if len(workers) != PROCESSES:
        raise RuntimeError(f"found {len(workers)} worker processes ({workers}), expected {PROCESSES}")
    emit("worker_uss", [float(uss(pid)) for pid in workers])
    if peer.name in LUCIDITY_PEERS:
        emit("daemon_uss", [float(uss(node.pid)) for node in peer.node_daemons()])


def apply(peer: Peer, pool: Any, sizes: Sizes, emit: Emit) -> None:
    """Round trip of one no-op call, one at a time: Pool.apply / submit(f).result()."""
    latencies = []
    for _ in range(sizes.apply_calls):
        started = time.perf_counter()
        peer.apply(pool, tasks.noop, (), sizes.timeout)
        latencies.append(time.perf_counter() - started)
    emit("apply_latency", latencies)


def _timed_map(peer: Peer, pool: Any, items: int, chunksize: Any, sizes: Sizes) -> float:
    started = time.perf_counter()
    results = peer.map(pool, tasks.square, range(items), chunksize, sizes.timeout)
    elapsed = time.perf_counter() - started
    if len(results) != items or results[-1] != (items - 1) ** 2:
        raise RuntimeError(f"map returned {len(results)} results, the last {results[-1:]}, for {items} items")
    return items / elapsed


def map_default(peer: Peer, pool: Any, sizes: Sizes, emit: Emit) -> None:
    """map of many tiny tasks with the default chunking (executors: the same chunksize, explicitly)."""
    chunksize = executor_chunksize(sizes.map_items) if peer.is_executor else None
    emit("map_throughput", [_timed_map(peer, pool, sizes.map_items, chunksize, sizes)])


def map_chunk1(peer: Peer, pool: Any, sizes: Sizes, emit: Emit) -> None:
    """map with chunksize=1: one task per item, so the per-task cost shows."""
    emit("map1_throughput", [_timed_map(peer, pool, sizes.map1_items, 1, sizes)])


def submit(peer: Peer, pool: Any, sizes: Sizes, emit: Emit) -> None:
    """Submit many no-op calls at once, then wait for all of them: apply_async / submit."""
    started = time.perf_counter()
    handles = peer.submit_and_wait(pool, tasks.noop, sizes.submits, sizes.timeout)
    elapsed = time.perf_counter() - started
    if len(handles) != sizes.submits:
        raise RuntimeError(f"{len(handles)} results for {sizes.submits} submits")
    emit("submit_throughput", [sizes.submits / elapsed])


def array(peer: Peer, pool: Any, sizes: Sizes, emit: Emit) -> None:
    """A numpy array sent as the argument and returned as the result; GB/s counts both directions."""
    import numpy

    data = numpy.arange(sizes.array_bytes // 8, dtype=numpy.float64)
    # One untimed trip first: numpy imported on the worker, buffers and pages of both sides grown.
    peer.apply(pool, tasks.identity, (data,), sizes.timeout)
    rates = []
    for _ in range(sizes.array_repeats):
        started = time.perf_counter()
        back = peer.apply(pool, tasks.identity, (data,), sizes.timeout)
        elapsed = time.perf_counter() - started
        if back.nbytes != data.nbytes or back[-1] != data[-1]:
            raise RuntimeError(f"the array came back as {back.nbytes} bytes ending in {back[-1]}")
        del back
        rates.append(2 * data.nbytes / elapsed / GIGABYTE)
    emit("array_gbps", rates)


def startup(peer: Peer, sizes: Sizes, emit: Emit) -> None:
    """Fresh pools: construction to first result, then the graceful close (close+join / shutdown).

    Also the CPU time a pool costs from construction to closed, in this process and every process it started
    (all of them reaped by then, so counted in RUSAGE_CHILDREN): unlike the wall time, it hardly moves
    with the machine's load, so it shows what a change saved on a busy machine.
    """
    starts, closes, cpus = [], [], []
    for _ in range(sizes.starts):
        cpu = _cpu_seconds()
        started = time.perf_counter()
        pool = peer.open()
        try:
            peer.apply(pool, tasks.noop, (), sizes.timeout)
        except BaseException:
            peer.kill(pool)
            raise
        first = time.perf_counter()
        peer.close(pool)
        closed = time.perf_counter()
        cpus.append(_cpu_seconds() - cpu)
        starts.append(first - started)
        closes.append(closed - first)
    emit("start_time", starts)
    emit("close_time", closes)
    emit("start_cpu", cpus)


def _cpu_seconds() -> float:
    """User and system CPU of this process and of its reaped descendants, in seconds."""
    import resource

    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


#: The workloads that run on the shared, warmed-up pool, by name.
ON_SHARED_POOL: dict[str, Callable[[Peer, Any, Sizes, Emit], None]] = {
    "memory": memory,
    "apply": apply,
    "map": map_default,
    "map-chunk1": map_chunk1,
    "submit": submit,
    "array": array,
}
