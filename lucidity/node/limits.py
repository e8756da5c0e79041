"""Memory, CPU and time limits: rlimits set inside the worker, the watchdog run by the daemon.

Three layers stop a task that takes too much, each catching what the others cannot:

1. **RLIMIT_DATA** (not RLIMIT_AS, which counts address space that threads, malloc arenas and OpenBLAS
   reserve without using, and breaks ``import numpy`` under caps that RLIMIT_DATA allows). The worker sets
   the node's cap as its *hard* limit first thing, before any user code runs, so no task can raise it;
   a smaller per-task cap is set as the *soft* limit around each task. Overruns in Python and numpy then
   surface as a MemoryError inside the task, which the worker reports as `MemoryLimitExceeded` before
   it retires. The rlimit sits `headroom` above the cap, so that a task which swallows MemoryError and
   keeps allocating still passes its cap where the watchdog sees it. Blind to: MAP_SHARED memory, child
   processes.
2. **The watchdog**, in the node daemon, samples the RSS (worker plus its children) of every worker running
   a limited task every `WATCH_INTERVAL`, and kills the worker's process group above its cap. It also
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
import re
import resource
from typing import NamedTuple, Optional, Union

__all__ = ["parse_size", "format_size", "LimitKind", "Limits", "Breach", "check", "memory_of",
           "set_hard_memory_cap", "set_task_memory_cap", "thread_environment", "MIN_WORKER_MEMORY"]

#: How often the watchdog samples workers running limited tasks, in seconds.
WATCH_INTERVAL = 0.015
#: A worker that died near its cap (this fraction of it) is classified as a memory breach.
NEAR_CAP = 0.9
#: The rlimit exceeds the cap by this fraction of it, and at least HEADROOM_MIN bytes.
HEADROOM_FRACTION = 16
HEADROOM_MIN = 16 * 2**20
#: A data segment past the cap (in the rlimit's headroom) for this many samples in a row (about 0.15 s) is
#: a breach: a task that swallows MemoryError stays there without its RSS ever passing the cap.
PRESSURE_SAMPLES = 10
#: Smallest cap a worker can start under (its interpreter, ZeroMQ and lucidity), in bytes.
MIN_WORKER_MEMORY = 64 * 2**20

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_MEMORY_FAILURES = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory",
                    "Memory allocation failed", "OpenBLAS")


def parse_size(size: Union[int, str, None]) -> Optional[int]:
    """Bytes from 1048576, "200MB", "1.5GiB" (decimal MB/GB, binary MiB/GiB); None stays None.

    Raises:
        ValueError: for anything else, naming the accepted forms.
    """
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"not a size: {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"a size must be positive, not {size}")
        return size
    match = _SIZE.match(str(size))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {size!r} (use bytes or a number with B, KB, MB, GB, KiB, MiB, GiB)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a size must be positive, not {size!r}")
    return value


def format_size(size: Optional[int]) -> str:
    if size is None:
        return "none"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


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
    """A watchdog decision: which limit the task broke, the limit and what was measured."""

    kind: LimitKind
    limit: float
    measured: float


def check(limits: Limits, running_for: float, memory: Optional[int], cpu_used: Optional[float],
          pressure: int = 0) -> Optional[Breach]:
    """Decide, from one sample, whether a task broke its limits. Pure; the daemon does the killing.

    ``pressure`` counts consecutive samples in which the worker's data segment sat at its rlimit: a task
    that swallows MemoryError and keeps allocating never grows its RSS past the cap, but stays pinned there.
    """
    if limits.memory and memory is not None and memory > limits.memory:
        return Breach(LimitKind.MEMORY, limits.memory, memory)
    if limits.memory and pressure >= PRESSURE_SAMPLES:
        return Breach(LimitKind.MEMORY, limits.memory, limits.memory)
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


def rlimit_for(cap: int) -> int:
    """The RLIMIT_DATA that goes with a memory cap: the cap plus a little headroom (see the module notes)."""
    return cap + max(HEADROOM_MIN, cap // HEADROOM_FRACTION)


def set_hard_memory_cap(cap: int) -> None:
    """Cap this process's data segment for good (called by the worker before any user code)."""
    limit = rlimit_for(cap)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def set_task_memory_cap(cap: Optional[int]) -> None:
    """Set the soft data limit for the next task (None: back up to the hard limit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if cap is None:
        soft = hard
    else:
        soft = rlimit_for(cap) if hard == resource.RLIM_INFINITY else min(rlimit_for(cap), hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def thread_environment(processes: int, environ: dict[str, str]) -> dict[str, str]:
    """Environment that keeps N workers from oversubscribing the cores with native thread pools.

    Each worker gets its share of the cores for OpenBLAS, OpenMP and MKL, and malloc arenas are capped;
    variables already set by the operator win.
    """
    share = str(max(1, (os.cpu_count() or 1) // max(1, processes)))
    defaults = {"OPENBLAS_NUM_THREADS": share, "OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share,
                "NUMEXPR_NUM_THREADS": share, "VECLIB_MAXIMUM_THREADS": share, "MALLOC_ARENA_MAX": "2"}
    return {**defaults, **environ}
