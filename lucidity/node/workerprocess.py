"""What a worker process does to and for itself as a process, apart from running tasks (`lucidity.node.worker`).

Owns: reading the arguments its daemon starts it with (without argparse, which costs start-up time and
memory), dying with its daemon (PR_SET_PDEATHSIG) and adopting what its tasks abandon (a subreaper), the
caller's sys.path of an embedded cluster, the process name multiprocessing would give it, killing what a
task left running, noticing that it has grown too big or met its memory cap (`memory_breach`), and flushing
what tasks printed. The worker's loop, its sockets and its slot are not
here; nothing here imports zmq or a serializer.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any, NamedTuple, Optional

from ..errors import MemoryLimitExceeded

__all__ = ["Arguments", "WorkerOptions", "parse_arguments", "die_with_parent", "apply_sys_path", "name_process",
           "kill_descendants", "reap_children", "grown_past", "memory_breach", "flush_output"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def flush_output() -> None:
    """Write out what tasks printed: stdout to a file or a pipe is block-buffered, and a worker may be
    stopped at any moment once its results are sent (multiprocessing's workers flush when they exit)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # closed or replaced by the task: nothing of ours to write


def name_process(index: int, start_method: str) -> None:
    """Name this worker as multiprocessing names a pool's workers ("ForkPoolWorker-3"), with its identity."""
    import multiprocessing
    from multiprocessing import process

    start_method = start_method or multiprocessing.get_all_start_methods()[0]
    prefix = {"fork": "ForkPoolWorker", "spawn": "SpawnPoolWorker", "forkserver": "ForkServerPoolWorker"}
    current = process.current_process()
    current.name = f"{prefix.get(start_method, 'PoolWorker')}-{index + 1}"
    current._identity = (index + 1,)


def reap_children() -> None:
    """After a task: reap the children it left that exited, and kill the rest (`kill_descendants`)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass  # reap children that already exited
        kill_descendants()  # some child is still running
    except ChildProcessError:
        pass  # no children: the usual case, one system call


def grown_past(threshold: int) -> bool:
    """Whether this worker is resident over `threshold` bytes after a task (``--recycle-memory``), said on stderr."""
    from .limits import memory_of
    from ..sizes import format_size

    resident = memory_of(os.getpid()) or 0
    if resident <= threshold:
        return False
    print(f"lucidity worker {os.getpid()}: {format_size(resident)} resident after a task, over the recycle "
          f"threshold of {format_size(threshold)}; retiring", file=sys.stderr)
    return True


def memory_breach(task_id: int, cap: int, error: BaseException) -> MemoryLimitExceeded:
    """What a task that met a MemoryError under its cap raises instead: the cap, what this worker held, where."""
    from .limits import data_segment, describe_refusal

    seen = data_segment(os.getpid())
    node = os.environ.get("LUCIDITY_NODE", "?")
    breach = MemoryLimitExceeded(describe_refusal(task_id, cap, node, os.getpid(), seen),
                                 limit=cap, peak=seen.resident, node=node, pid=os.getpid(), task=task_id)
    breach.__cause__ = error
    return breach


def kill_descendants() -> None:
    """SIGKILL and reap every process this worker's task started (orphans were reparented to us)."""
    import psutil

    me = psutil.Process()
    children = me.children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)
    try:
        while os.waitpid(-1, os.WNOHANG) != (0, 0):
            pass
    except ChildProcessError:
        pass


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this worker when its daemon dies (Linux), and check it has not already.

    The worker is also made a subreaper, so that processes a task starts and abandons become its children
    and can be stopped when the task ends.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def apply_sys_path() -> None:
    """Put the caller's sys.path first, as multiprocessing's workers inherit it (embedded clusters only)."""
    inherited = os.environ.get("LUCIDITY_SYS_PATH")
    if inherited:
        entries = [p for p in inherited.split(os.pathsep)]
        sys.path[:] = entries + [p for p in sys.path if p not in entries]


class WorkerOptions(NamedTuple):
    """How the daemon configured this worker (see `lucidity node --help`)."""

    memory_limit: Optional[int] = None
    max_tasks: Optional[int] = None
    recycle_memory: Optional[int] = None
    notify_fd: Optional[int] = None


class Arguments(NamedTuple):
    slots: str
    slot_count: int
    slot_index: int
    bind: str
    ready_fd: int
    parent: int
    memory_limit: Optional[int]
    max_tasks: Optional[int]
    recycle_memory: Optional[int]
    ports: Optional[str]  # LO-HI: listen on a port of this range (an operator's firewall opening)


def parse_arguments(argv: list[str]) -> Arguments:
    """The daemon's ``--name value`` arguments (argparse costs a worker start-up time and memory)."""
    given = dict(zip(argv[::2], argv[1::2]))
    unknown = set(given) - {f"--{name.replace('_', '-')}" for name in Arguments._fields}
    if len(argv) % 2 or unknown:
        raise SystemExit(f"lucidity worker: bad arguments {argv} (it is started by `lucidity node`)")
    values: dict[str, Any] = {}
    for name, kind in Arguments.__annotations__.items():
        text = given.get(f"--{name.replace('_', '-')}")
        if text is None and "Optional" not in str(kind):
            raise SystemExit(f"lucidity worker: --{name.replace('_', '-')} is required")
        values[name] = None if text is None else (text if name in ("slots", "bind", "ports") else int(text))
    # argparse-style names: --slot-count, --slot-index, ...
    return Arguments(**values)
