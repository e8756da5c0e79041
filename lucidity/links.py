"""The client's view of the cluster: its links to node daemons and workers, and what their reports mean.

Owns what a client keeps per node daemon and per worker besides their tasks (the routing id by which the
client's one socket to them all names each, sessions, what a worker already has: functions, modules),
what a client knows of a node for placement (`NodeInfo`), and the exception for a task a node reported
failed. The tasks a worker holds and its window are the task table's (`lucidity.tasktable.Lane`). The I/O
thread of `lucidity.client` alone creates and uses these objects; nothing here does I/O.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Optional
from .errors import CpuLimitExceeded, JobTimeout, LucidityError, MemoryLimitExceeded, WorkerCrashed
from .messages import FailureReason, FailureReport
from .task import Task
from .tasktable import Lane

__all__ = ["WorkerLink", "NodeLink", "NodeInfo", "failure_error"]


class WorkerLink:
    """The client's end of one worker: its routing id, what it already has, and its lane in the task table."""

    def __init__(self, lane: Lane, worker_id: str, pid: int, peer: bytes, address: str = "") -> None:
        self.key = lane.key
        self.address = address
        self.created = time.monotonic()
        self.unreachable = False  # silent for longer than the node timeout (warned once)
        self.node = lane.node
        self.worker_id = worker_id
        self.pid = pid
        self.peer = peer  # its name on the client's socket (ZMQ_CONNECT_ROUTING_ID)
        self.lane = lane  # the task table's view: its tasks in flight, its window
        self.functions: set[str] = set()
        self.modules: set[str] = set()  # names of modules shipped to this worker
        self.has_shipped = False  # the packages every worker gets went with a batch
        self.has_main = False  # it knows how to give this client's tasks the caller's __main__
        # Its door for this machine's callers (lucidity.directcall), if it has one; the session its node
        # link had when it was listed; the routing id the client's socket has on the worker's.
        self.door: Optional[str] = None
        self.session = ""
        self.routing_id = b""


@dataclass(frozen=True)
class NodeInfo:
    """What a client knows of a node, for placement: its host, workers, and tasks running or queued there."""

    name: str
    host: str
    workers: int
    running: int
    ours: int

    @property
    def load(self) -> float:
        """Tasks per worker: those the node last reported running, plus ours in flight there."""
        return (self.running + self.ours) / max(1, self.workers)


class NodeLink:
    """The client's end of one node daemon: its routing id, what it reported, and its workers.

    ``session`` is the id this client goes by on this node and its workers, new for every link: a client
    that dropped a node (it stopped answering) and found it again comes back as a new session, so when the
    node expires the old, silent one it abandons only the work sent over the old connections (which the
    client has already sent elsewhere), never what the new connection brought.
    """

    def __init__(self, name: str, address: str, instance: str, host: str, peer: bytes) -> None:
        self.session = uuid.uuid4().hex
        self.name = name
        self.address = address
        self.instance = instance
        self.host = host
        self.peer = peer  # its name on the client's socket (ZMQ_CONNECT_ROUTING_ID)
        self.has_reported = False
        self.unreachable = False  # never answered within the node timeout (warned once); still being tried
        self.running = 0
        self.last_seen = time.monotonic()
        self.workers: dict[str, WorkerLink] = {}


def failure_error(task: Task, node: str, report: FailureReport) -> LucidityError:
    """The exception for a task its node reported failed: a limit it broke, or its worker's crash.

    The node knows a task by its number only; the message names what the task carried instead (for a map
    chunk, the items that were running), and the error keeps both as ``task`` and ``items``.
    """
    message = _name_task(report.message, task)
    facts = {"pid": report.pid, "node": node, "task": task.id, "items": task.items}
    if report.reason is FailureReason.MEMORY:
        return MemoryLimitExceeded(message, limit=report.limit, peak=report.peak, **facts)
    if report.reason is FailureReason.TIMEOUT:
        return JobTimeout(message, limit=report.limit, **facts)
    if report.reason is FailureReason.CPU:
        return CpuLimitExceeded(message, limit=report.limit, used=report.measured, **facts)
    if len(task.failures) > 1:
        message += f"\nit was run {len(task.failures)} times, crashing each time:\n  " + "\n  ".join(task.failures)
    if report.stderr.strip():
        message += "\nlast lines of the worker's stderr:\n" + report.stderr.rstrip()
    return WorkerCrashed(message, exit_code=report.exit_code, signal=report.signal, **facts)


def _name_task(message: str, task: Task) -> str:
    """A node's message with "task N" replaced by what the task carried (appended if the node did not name it)."""
    described, found = re.subn(rf"\btask {task.id}\b", lambda _: task.description, message, count=1)
    return described if found else f"{message} ({task.description})"
