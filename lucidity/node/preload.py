"""The caller's main script, run once in the worker template of its embedded cluster, so that its workers are
forked already holding the script and every module it imports.

Why: a worker imports the caller's script as ``__mp_main__`` the first time a task needs a name of it
(`lucidity.node.namespaces`), and with it whatever the script imports at its top. Every worker paid that
on its first task: a script importing numpy costs each about 0.1 s of CPU, so a first map over 64 workers
on two cores waited seconds for its workers' imports, where multiprocessing's fork workers inherit them
from the caller. Even a task module of nothing cost each worker 0.45 ms of its first task's 0.9 ms, and
on two cores the last of 64 workers started its first task 50 ms after the map began (issue 13). Python's
forkserver preloads the main module for the same reason.

Where: only in a node daemon an embedded cluster started for its caller (``lucidity node --preload-main
FILE``, which `lucidity.cluster.LocalCluster` passes, the file written by it in its private directory):
the script is the caller's own, handed over on the command line of a daemon it started, never received
from a peer. A CLI node serves many clients and runs no one's script before their tasks ask.

How (`lucidity.node.template`): a child of the template runs the script as ``__mp_main__``, with the
caller's ``sys.argv`` and ``sys.path``, its output going nowhere (the caller printed it already, as it
does under fork), and then looks at what the script left behind. A Python thread would make every fork
from it unsafe (it may hold a lock, of logging's, say, that no worker could ever take); a descriptor left
open (a log file, a connection) would be closed under the script in each worker, which keeps no
descriptors but its own. Nor may the script leave it holding more than half of the workers' memory cap,
if they have one: a worker is born with what the template holds resident, which the cap counts, and its
tasks need the rest (a worker that imported the script itself would meet the cap in a task, which fails
with `MemoryLimitExceeded`, rather than at birth). Native thread pools that libraries start on import are no bar: OpenBLAS's (numpy
starts one), OpenMP's and MKL's stop themselves before a fork and start again after it, which is what lets
multiprocessing's fork and forkserver use them. If the script ran, and left neither, the child serves the daemon's
requests in the template's stead; otherwise it exits, the template serves as before, and each worker
imports the script itself when a task first needs it, raising to that task what it raised here. So does a
script that takes longer than `PRELOAD_TIMEOUT` to import.

What the workers then share with one another, as fork's workers share with their parent: the values the
script computed at its top (``os.getpid()`` there is the template's), and the pages of its data until
written. Random generators are not shared: Python's reseeds itself after a fork, and a worker reseeds
numpy's global one (`after_fork`), as each spawned interpreter would seed its own. A worker takes the
environment its daemon gives it, and then the changes the script's top made to ``os.environ`` (again
`after_fork`), as a worker that imported the script would have them.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Optional

from ..mainscript import read_preload_record
from ..sizes import format_size
from .limits import data_of, memory_of
from .namespaces import preload
from .workerprocess import apply_sys_path, flush_output

__all__ = ["run_main_script", "after_fork", "PRELOAD_TIMEOUT"]

#: Seconds the template waits for the caller's script to run before it forks workers without it.
PRELOAD_TIMEOUT = 5.0

#: What the script's top did to ``os.environ``: each name set, with its value, or None if removed.
_environment_changes: dict[str, Optional[str]] = {}


def run_main_script(path: str, memory_limit: Optional[int] = None) -> str:
    """Run the script `path` describes (`lucidity.mainscript.preload_record`) in this process, whose workers
    will be capped at `memory_limit` bytes.

    Returns:
        "" if it ran and workers may be forked from this process; else why not.
    """
    try:
        with open(path, "rb") as file:
            main, source = read_preload_record(file.read())
    except (OSError, ValueError, KeyError) as exc:
        return f"the preload record {path} cannot be read: {exc}"
    apply_sys_path()
    environment = dict(os.environ)
    descriptors = _open_descriptors()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            preload(main, source)
        except BaseException as exc:  # noqa: B036 - a SystemExit of the script's is its failure too
            return f"the script raised {type(exc).__name__}: {exc}"
        finally:
            flush_output()
    finally:
        for fd, copy in zip((0, 1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)
    if threading.active_count() > 1:
        return "the script started a thread"
    if memory_limit:
        held = max(memory_of(os.getpid()) or 0, data_of(os.getpid()) or 0)  # what the watchdog, RLIMIT_DATA count
        if held > memory_limit // 2:
            return (f"the script left {format_size(held)} in this process, more than half the workers' memory cap "
                    f"of {format_size(memory_limit)}")
    opened = _open_descriptors() - descriptors
    if opened:
        return f"the script left descriptors open ({', '.join(map(str, sorted(opened)))})"
    _environment_changes.update((name, value) for name, value in os.environ.items() if environment.get(name) != value)
    _environment_changes.update((name, None) for name in environment if name not in os.environ)
    return ""


def after_fork() -> None:
    """In a worker just forked from a template that ran the caller's script, once it has its environment:
    the script's changes to ``os.environ`` on top of it, and numpy's global generator seeded from the OS
    (else every worker would draw the numbers the template's state gives)."""
    for name, value in _environment_changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def _open_descriptors() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}
