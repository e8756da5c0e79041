"""A supervised worker process as its node daemon sees it, and what the daemon says about it.

Owns: the worker's states and their legal moves, its pipes (readiness and limited-task notices; stderr,
passed through with its tail kept for crash reports, or with JSON logs logged line by line through the
logger ``lucidity.worker`` with the worker's pid and the task its slot shows), the watchdog round that enforces limits
(`lucidity.node.limits` decides, this module kills), and the report of why a worker's task failed. The
daemon (`lucidity.node.daemon`) spawns workers, watches their pidfds and talks to clients and control.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import zmq

from ..errors import describe_exit
from ..messages import FailureReason, FailureReport, WorkerEntry
from . import limits
from ..sizes import format_size
from .processes import Child
from .logformat import context
from .slots import SlotState, SlotTable, SlotView

logger = logging.getLogger(__name__)
#: Where a worker's stderr goes when the daemon logs it line by line (JSON logs).
output_logger = logging.getLogger("lucidity.worker")

__all__ = ["WorkerState", "WorkerProcess", "enforce_limits", "failure_report", "peak_rss"]

#: Bytes of each worker's stderr kept for crash reports, and the part sent with a report.
STDERR_TAIL = 8192
STDERR_REPORT = 2000


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"


_WORKER_TRANSITIONS = {
    WorkerState.STARTING: {WorkerState.READY, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.READY: {WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.STOPPING: {WorkerState.EXITED},
    WorkerState.EXITED: set(),
}


@dataclass
class WorkerProcess:
    """One supervised worker: its process, where it listens, what state it is in, what the watchdog saw."""

    index: int
    child: Child
    ready_fd: Optional[int]
    state: WorkerState = WorkerState.STARTING
    address: str = ""
    history: list[WorkerState] = field(default_factory=list)
    stderr_tail: bytearray = field(default_factory=bytearray)
    last_memory: int = 0
    task_peak: int = 0
    pressure: int = 0
    breach: Optional[limits.Breach] = None
    abandoned: bool = False  # stopped because the client of its task went away: not a failure to report
    control: Optional[zmq.Socket[Any]] = None  # the daemon's line to the worker, for DROP
    output_slots: Optional[SlotTable] = None  # set: stderr is logged by line, with the task in this worker's slot
    partial_line: bytearray = field(default_factory=bytearray)

    def move(self, new: WorkerState) -> None:
        if new not in _WORKER_TRANSITIONS[self.state]:
            raise RuntimeError(f"worker {self.child.pid}: illegal move {self.state.value} -> {new.value} "
                               f"(history {[s.value for s in self.history]})")
        self.history.append(self.state)
        self.state = new

    def describe(self) -> WorkerEntry:
        return WorkerEntry(str(self.child.pid), self.child.pid, self.address)

    def close_links(self) -> None:
        """Close the daemon's socket to the worker, and its pipes."""
        if self.control is not None:
            self.control.close(linger=0)
            self.control = None
        self.close_pipes()

    def close_pipes(self) -> None:
        """Close the readiness pipe, and stderr after passing on what is left in it."""
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        stderr = self.child.popen.stderr
        if stderr is not None and not stderr.closed:
            self.pump_stderr()
            stderr.close()
        if self.partial_line:
            self._log_line(bytes(self.partial_line))
            self.partial_line.clear()

    def pump_stderr(self) -> None:
        """Pass the worker's stderr through to ours, keeping its tail for crash reports."""
        stderr = self.child.popen.stderr
        if stderr is None or stderr.closed:
            return
        try:
            data = os.read(stderr.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            stderr.close()
            return
        self.stderr_tail += data
        del self.stderr_tail[:-STDERR_TAIL]
        if self.output_slots is None:
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
            return
        self.partial_line += data
        *lines, rest = bytes(self.partial_line).split(b"\n")
        self.partial_line[:] = rest
        for line in lines:
            self._log_line(line)

    def _log_line(self, line: bytes) -> None:
        task_id = client_id = None
        if self.output_slots is not None:
            slot = self.output_slots.read(self.index)
            if slot.state is SlotState.RUNNING:
                task_id, client_id = slot.task_id, slot.client.hex()
        output_logger.warning("%s", line.decode(errors="replace").rstrip("\r"),
                              extra=context(self.child.pid, task_id, client_id))


def enforce_limits(workers: Iterable[WorkerProcess], slots: SlotTable, now: float, node: str) -> bool:
    """One watchdog round over the workers running limited tasks; True while any still runs.

    A worker over a limit has its process group killed and its breach recorded; its exit is then reported
    like any other, through `failure_report`.
    """
    limited = False
    for worker in workers:
        if worker.state is not WorkerState.READY:
            continue
        slot = slots.read(worker.index)
        if slot.state is not SlotState.RUNNING or not slot.limits.any:
            worker.task_peak = worker.pressure = 0
            continue
        limited = True
        pid = worker.child.pid
        memory = limits.memory_of(pid) if slot.limits.memory else None
        pinned = None
        if memory is not None:
            worker.last_memory = memory
            worker.task_peak = max(worker.task_peak, memory)
            pinned = limits.pinned_segment(pid, slot.limits.memory)  # in the rlimit's headroom: allocations fail
            worker.pressure = worker.pressure + 1 if pinned else 0
        cpu = limits.cpu_seconds(pid) if slot.limits.cpu_time else None
        breach = limits.check(slot.limits, now - slot.started, memory,
                              None if cpu is None else cpu - slot.cpu_start, worker.pressure, pinned)
        if breach is not None:
            worker.breach = breach
            worker.move(WorkerState.STOPPING)
            worker.child.signal_group(signal.SIGKILL)
            logger.warning("node %s killed worker %d running task %d: %s %s over its limit of %s",
                           node, pid, slot.task_id, breach.kind.value, _measure(breach),
                           _measure(limits.Breach(breach.kind, breach.limit, breach.limit)),
                           extra=context(pid, slot.task_id, slot.client.hex()))
    return limited


def failure_report(worker: WorkerProcess, slot: SlotView, code: int, node: str) -> FailureReport:
    """Why the task a worker was running when it ended failed: a limit it broke, or a crash."""
    pid, task_id = worker.child.pid, slot.task_id
    tail = bytes(worker.stderr_tail).decode(errors="replace")
    breach = worker.breach
    if breach is None and limits.looks_like_memory_failure(tail, worker.last_memory, slot.limits.memory):
        breach = limits.Breach(limits.LimitKind.MEMORY, slot.limits.memory, worker.task_peak)
    if breach is not None:
        what = {"memory": "memory cap", "timeout": "wall-time limit", "cpu": "CPU-time limit"}[breach.kind.value]
        reached = breach.detail or f"reached {_measure(breach)}"
        message = (f"task {task_id} went over its {what} of "
                   f"{_measure(limits.Breach(breach.kind, breach.limit, breach.limit))} on node "
                   f"{node} (worker {pid} {reached}); the worker was stopped and replaced")
        return FailureReport(task_id, pid, node, str(pid), FailureReason(breach.kind.value), message,
                             limit=breach.limit, measured=breach.measured,
                             peak=max(worker.task_peak, worker.last_memory))
    message = f"worker {pid} on node {node} {describe_exit(code)} while running task {task_id}"
    return FailureReport(task_id, pid, node, str(pid), FailureReason.CRASHED, message,
                         exit_code=code if code >= 0 else None, signal=-code if code < 0 else None,
                         stderr=tail[-STDERR_REPORT:])


def _measure(breach: limits.Breach) -> str:
    if breach.kind is limits.LimitKind.MEMORY:
        return format_size(int(breach.measured))
    return f"{breach.measured:.2f} s"


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
