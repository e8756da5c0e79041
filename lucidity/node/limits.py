"""Memory, CPU and time limits: rlimits set inside the worker, the watchdog run by the daemon.

Three layers stop a task that takes too much, each catching what the others cannot:

1. **RLIMIT_DATA**, a backstop (not RLIMIT_AS, which counts address space that threads and malloc arenas
   reserve without using, and breaks ``import numpy`` under caps that RLIMIT_DATA allows). The worker sets
   it as its *hard* limit first thing, before any user code runs, so no task can raise it; a smaller
   per-task cap is set as the *soft* limit around each task. Allocations far past the cap then fail at
   once with a MemoryError inside the task, which the worker reports as `MemoryLimitExceeded` (naming the
   limit, the data segment and resident memory) before it retires. RLIMIT_DATA still counts private
   memory that is reserved and never touched: every thread stack, and the 32 MiB buffers OpenBLAS keeps
   per thread. So the rlimit is the cap, plus `headroom` (a task that swallows MemoryError and keeps
   allocating passes its cap where the watchdog sees it), plus what native libraries reserve for the
   native threads the worker may run (`reserved_for`): a task whose resident memory stays under its cap
   is not stopped for address space it only reserved (issue 11). Native thread pools are sized by the
   cap (`native_threads_for`), which keeps that allowance small. Blind to: MAP_SHARED memory, child
   processes.
2. **The watchdog**, in the node daemon, samples the RSS (worker plus its children) of every worker running
   a limited task every `WATCH_INTERVAL`, and kills the worker's process group above its cap, or when its
   data segment stays in the rlimit's headroom (`pinned_segment`) while its allocations keep failing. It also
   enforces wall time (``timeout``) and CPU time (``cpu_time``): an in-process alarm fires seconds late
   inside C loops, and RLIMIT_CPU never fires for a sleeping task. Blind to: a spike shorter than one
   interval (the rlimit catches most of those).
3. **Classification**: a worker that dies on its own with an allocator or OpenBLAS failure in its stderr,
   or whose last sample was near its cap, is reported as a memory breach, not an anonymous crash.

The watchdog only runs while limited tasks run: a worker tells its daemon (one byte on a pipe) when it
starts one, so a node without limits pays nothing. cgroup v2 memory.max is not used (optional, and not
available on the machines this was built on). On macOS RLIMIT_DATA is not enforced: only the watchdog works.
"""

from __future__ import annotations

import enum
import os
import resource
from typing import Mapping, NamedTuple, Optional

from ..sizes import format_size

__all__ = ["LimitKind", "Limits", "Breach", "check", "memory_of",
           "set_hard_memory_cap", "set_task_memory_cap", "thread_environment", "MIN_WORKER_MEMORY",
           "rlimit_for", "native_threads_for", "pinned_segment", "DataSegment", "data_segment",
           "describe_refusal"]

#: How often the watchdog samples workers running limited tasks, in seconds.
WATCH_INTERVAL = 0.015
#: A worker that died near its cap (this fraction of it) is classified as a memory breach.
NEAR_CAP = 0.9
#: The rlimit exceeds the cap (and the reservations below) by this fraction of the cap, and at least
#: HEADROOM_MIN bytes; a data segment in the headroom is pinned (`pinned_segment`). The minimum is wider than
#: OpenBLAS's 32 MiB buffer: when OpenBLAS cannot map one under the rlimit it spins for ever, at full CPU and
#: far under its cap (measured: 87 MiB resident, 24 MiB under the rlimit), and only the pinned rule stops it.
HEADROOM_FRACTION = 16
HEADROOM_MIN = 48 * 2**20
#: Private memory a worker reserves without touching it, which RLIMIT_DATA counts in full (issue 11). Measured
#: with the numpy 2.4 and scipy 1.17 wheels, which bundle one OpenBLAS 0.3.31 each: every OpenBLAS keeps a
#: 32 MiB buffer per thread it runs, plus one, and an 8 MiB stack for each thread after the first; libzmq's
#: two threads hold 8 MiB stacks. For N threads that is 80 MiB each (two libraries, each a buffer and a
#: stack) and 64 MiB besides (each library's extra buffer, and libzmq's stacks less the two first threads,
#: which run on the caller's stack).
#: A worker with numpy and scipy imported and BLAS called held 117 MiB (1 thread) and 196 MiB (2 threads)
#: more data segment than resident memory, against 144 and 224 MiB allowed.
RESERVED_PER_NATIVE_THREAD = 80 * 2**20
RESERVED_BASE = 64 * 2**20
#: A worker under a cap runs one native thread (OpenBLAS, OpenMP, MKL) per this much of its cap, and at least
#: one: the allowance above then stays under a third of the cap for caps of a GiB and up.
CAP_PER_NATIVE_THREAD = 256 * 2**20
#: A data segment in the rlimit's headroom for this many samples in a row (about 0.15 s) is a breach: a task
#: that swallows MemoryError stays there without its RSS ever passing the cap.
PRESSURE_SAMPLES = 10
#: Smallest cap a worker can start under (its interpreter, ZeroMQ and lucidity), in bytes.
MIN_WORKER_MEMORY = 64 * 2**20

_MEMORY_FAILURES = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory",
                    "Memory allocation failed", "OpenBLAS")


class LimitKind(enum.Enum):
    MEMORY = "memory"
    TIMEOUT = "timeout"
    CPU = "cpu"


class Limits(NamedTuple):
    """The limits of one task: memory cap in bytes, wall and CPU time in seconds (0 means none)."""

    memory: int = 0
    timeout: float = 0.0
    cpu_time: float = 0.0

    @property
    def any(self) -> bool:
        return bool(self.memory or self.timeout or self.cpu_time)


class Breach(NamedTuple):
    """A watchdog decision: which limit the task broke, the limit, what was measured, and how, if not plain."""

    kind: LimitKind
    limit: float
    measured: float
    detail: str = ""


def check(limits: Limits, running_for: float, memory: Optional[int], cpu_used: Optional[float],
          pressure: int = 0, pinned: Optional["DataSegment"] = None) -> Optional[Breach]:
    """Decide, from one sample, whether a task broke its limits. Pure; the daemon does the killing.

    ``pressure`` counts consecutive samples in which the worker's data segment sat in its rlimit's headroom,
    and ``pinned`` is the latest of them (`pinned_segment`): a task that swallows MemoryError and keeps
    allocating, or a native library retrying an allocation, may never grow its RSS past the cap, but stays
    pinned there. Without ``pinned`` the count is not trusted: a data segment past the cap alone, which
    callers counted before issue 11, is what numpy and scipy hold under caps they fit in.
    """
    if limits.memory and memory is not None and memory > limits.memory:
        return Breach(LimitKind.MEMORY, limits.memory, memory)
    if limits.memory and pressure >= PRESSURE_SAMPLES and pinned is not None and pinned.limit is not None:
        resident = pinned.resident if memory is None else memory
        detail = (f"kept failing to allocate for {pressure} samples in a row at its data-segment limit "
                  f"(RLIMIT_DATA) of {format_size(pinned.limit)}, with {format_size(pinned.data)} in its data "
                  f"segment and {format_size(resident)} resident")
        return Breach(LimitKind.MEMORY, limits.memory, resident, detail)
    if limits.timeout and running_for > limits.timeout:
        return Breach(LimitKind.TIMEOUT, limits.timeout, running_for)
    if limits.cpu_time and cpu_used is not None and cpu_used > limits.cpu_time:
        return Breach(LimitKind.CPU, limits.cpu_time, cpu_used)
    return None


def thread_failed_for_memory(error: BaseException) -> bool:
    """Whether an exception is a thread that could not start (its stack did not fit under the cap)."""
    return isinstance(error, RuntimeError) and "can't start new thread" in str(error)


def looks_like_memory_failure(stderr_tail: str, last_memory: int, cap: int) -> bool:
    """Whether a worker that died on its own most likely ran out of memory."""
    if cap and last_memory >= NEAR_CAP * cap:
        return True
    return bool(cap) and any(marker in stderr_tail for marker in _MEMORY_FAILURES)


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as statm:
        resident = int(statm.read().split()[1]) * _PAGE
    if not resident:
        raise ValueError("process is exiting")  # a dying process reads 0: not a sample
    return resident


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as children:
                found.extend(int(c) for c in children.read().split())
    except OSError:
        pass
    return found


def children_of(pid: int) -> list[int]:
    """The direct children of a process (from /proc, no scan of every process)."""
    return _children(pid)


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children instead of init's (Linux; no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_PR_SET_CHILD_SUBREAPER = 36


def memory_of(pid: int) -> Optional[int]:
    """Resident memory of a process and all its descendants, in bytes (None if it is gone). ~10 µs."""
    try:
        total = _rss(pid)
    except (OSError, ValueError, IndexError):
        return None
    stack = _children(pid)
    while stack:
        child = stack.pop()
        try:
            total += _rss(child)
        except (OSError, ValueError, IndexError):
            continue
        stack.extend(_children(child))
    return total


def data_of(pid: int) -> Optional[int]:
    """The data segment of a process (what RLIMIT_DATA counts), in bytes."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[5]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> Optional[float]:
    """User plus system CPU time of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        return None


def native_threads_for(cap: int) -> int:
    """How many native threads (OpenBLAS, OpenMP, MKL) a worker under this cap runs: one per
    `CAP_PER_NATIVE_THREAD` of it, and at least one."""
    return max(1, cap // CAP_PER_NATIVE_THREAD)


def reserved_for(native_threads: int) -> int:
    """What a worker running this many native threads reserves without touching (RESERVED_PER_NATIVE_THREAD)."""
    return RESERVED_BASE + RESERVED_PER_NATIVE_THREAD * native_threads


def headroom_for(cap: int) -> int:
    return max(HEADROOM_MIN, cap // HEADROOM_FRACTION)


def rlimit_for(cap: int, native_threads: int = 0) -> int:
    """The RLIMIT_DATA that goes with a memory cap: the cap, its headroom, and the reservations of native
    libraries running `native_threads` threads, or the threads the cap gives (`native_threads_for`) if more.

    For a 200 MB cap: 190.7 + 48.0 + 144.0 = 382.7 MiB. The rlimit is a backstop that fails allocations far
    past the cap at once; the cap itself is held by the watchdog, on resident memory.
    """
    return cap + headroom_for(cap) + reserved_for(max(native_threads, native_threads_for(cap)))


#: The variables that size native thread pools, as `thread_environment` sets them (VECLIB is macOS-only,
#: where RLIMIT_DATA is not enforced).
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1  # taskset, a Slurm allocation: not all of the machine
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def native_threads_of(environ: Mapping[str, str]) -> int:
    """The most threads a native pool of a process with this environment runs (unset: one per CPU, as
    OpenBLAS and OpenMP do; OMP_NUM_THREADS may list nested levels, of which the first counts)."""
    counts = []
    for name in _THREAD_VARIABLES:
        first = environ.get(name, "").split(",")[0].strip()
        if first.isdigit() and int(first) > 0:
            counts.append(int(first))
    return max(counts) if counts else _available_cpus()


def set_hard_memory_cap(cap: int) -> None:
    """Cap this process's data segment for good (called by the worker before any user code).

    The native thread counts are read from this process's environment, so that an operator who gives
    workers more threads than the cap would (OPENBLAS_NUM_THREADS=8) also gives them room for their buffers.
    """
    limit = rlimit_for(cap, native_threads_of(os.environ))
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def set_task_memory_cap(cap: Optional[int]) -> None:
    """Set the soft data limit for the next task (None: back up to the hard limit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if cap is None:
        soft = hard
    else:
        limit = rlimit_for(cap, native_threads_of(os.environ))
        soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def data_limit_of(pid: int) -> Optional[int]:
    """The soft RLIMIT_DATA of a process, in bytes (None: unlimited, gone, or not readable here)."""
    try:
        soft, _ = resource.prlimit(pid, resource.RLIMIT_DATA)
    except (OSError, AttributeError):  # gone; prlimit is Linux-only
        return None
    return None if soft == resource.RLIM_INFINITY else soft


class DataSegment(NamedTuple):
    """What a process held against its data-segment limit, in bytes: the limit, the data segment, the resident
    memory (of it and its descendants)."""

    limit: Optional[int]
    data: int
    resident: int


def data_segment(pid: int) -> DataSegment:
    """The data-segment limit, data segment and resident memory of a process, read now."""
    return DataSegment(data_limit_of(pid), data_of(pid) or 0, memory_of(pid) or 0)


def pinned_segment(pid: int, cap: int) -> Optional[DataSegment]:
    """What a worker holds against its data-segment limit if it sits in the limit's headroom, where its
    allocations start to fail; None if it does not (or is gone).

    Measured against the worker's own soft limit, which covers what its native libraries reserve: a data
    segment past the cap alone is normal for a task that imported numpy and scipy (issue 11).
    """
    data, limit = data_of(pid), data_limit_of(pid)
    if data is None or limit is None or data <= limit - headroom_for(cap):
        return None
    return DataSegment(limit, data, memory_of(pid) or 0)


def describe_refusal(task: int, cap: int, node: str, pid: int, seen: DataSegment) -> str:
    """The message of a MemoryLimitExceeded raised because a task under a cap was refused an allocation.

    It names the data-segment limit that refused, the data segment and resident memory at that moment, and
    the likely cause: a request bigger than what the limit leaves, a task at its cap, or a data segment made
    mostly of reserved, untouched memory (thread stacks, BLAS buffers) that only fewer threads shrink.
    """
    cap_text = format_size(cap)
    if seen.limit is None:
        what = (f"task {task} ran out of memory on node {node} under its memory cap of {cap_text}: the machine "
                f"refused an allocation (the task had lifted its data-segment limit)")
        cause = ""
    else:
        what = (f"task {task} went over its memory cap of {cap_text} on node {node}: its data-segment limit "
                f"(RLIMIT_DATA) of {format_size(seen.limit)} refused an allocation")
        left = seen.limit - seen.data
        if left > headroom_for(cap):
            cause = f"; a single allocation asked for more than the {format_size(left)} left under the limit"
        elif seen.resident < NEAR_CAP * cap:
            what = (f"task {task} was refused memory on node {node} while under its memory cap of {cap_text}: its "
                    f"data-segment limit (RLIMIT_DATA) of {format_size(seen.limit)} refused an allocation")
            cause = ("; most of the data segment is address space reserved and never touched (thread stacks, BLAS "
                     "buffers): run fewer native threads (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS) or raise the cap")
        else:
            cause = ""
    return (f"{what}, with {format_size(seen.data)} in its data segment and {format_size(seen.resident)} resident "
            f"(worker {pid}){cause}; the worker is replaced")


def thread_environment(processes: int, environ: dict[str, str],
                       memory_limit: Optional[int] = None) -> dict[str, str]:
    """Environment that keeps N workers from oversubscribing the cores with native thread pools.

    Each worker gets its share of the CPUs this process may use for OpenBLAS, OpenMP and MKL, and no more
    threads than its memory cap gives (`native_threads_for`: each thread's buffers and stack count toward
    its RLIMIT_DATA); malloc arenas are capped. Variables already set by the operator win.
    """
    threads = max(1, _available_cpus() // max(1, processes))
    if memory_limit:
        threads = min(threads, native_threads_for(memory_limit))
    share = str(threads)
    defaults = {"OPENBLAS_NUM_THREADS": share, "OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share,
                "NUMEXPR_NUM_THREADS": share, "VECLIB_MAXIMUM_THREADS": share, "MALLOC_ARENA_MAX": "2"}
    return {**defaults, **environ}
