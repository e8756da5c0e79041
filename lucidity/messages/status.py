"""The bodies of status replies: what a daemon tells anyone who asks how it is (STATUS_REPLY).

Read by `lucidity status`, `lucidity top` and the dashboard; never on the task path. See `lucidity.messages`
for what every body class offers::

    anyone  --STATUS--> a daemon --STATUS_REPLY (NodeStatus or ControlStatus)--> anyone
"""

from __future__ import annotations

import types
from typing import Any, ClassVar, Mapping, Optional, Union

from ..protocol import Kind
from .fields import Meta, maybe_counts, maybe_natural, natural, objects, refused, text
from .membership import NodeEntry
from .record import Record

__all__ = ["WorkerStatus", "RecentFailure", "NodeStatus", "ControlStatus", "status_reply"]

#: The counts of a node that reports none (read-only, so that one empty mapping serves every reply).
_NO_COUNTS: Mapping[str, int] = types.MappingProxyType({})


class WorkerStatus(Record):
    """One worker in its node's STATUS_REPLY."""

    __slots__ = ("pid", "address", "state", "rss", "tasks_done", "task", "peak", "cap")

    pid: int
    address: str
    state: str  # "busy" or a `node.supervision.WorkerState` value, for people
    rss: int  # bytes: the worker and what its task started
    tasks_done: int
    task: Optional[int]  # the task it is running
    peak: int  # bytes
    cap: Optional[int]  # the memory cap of its task, or of its node (bytes)

    def __init__(self, pid: int, address: str, state: str, rss: int, tasks_done: int, task: Optional[int], peak: int,
                 cap: Optional[int]) -> None:
        self._assign(pid, address, state, rss, tasks_done, task, peak, cap)

    def to_meta(self) -> Meta:
        return {"pid": self.pid, "address": self.address, "state": self.state, "rss": self.rss,
                "tasks_done": self.tasks_done, "task": self.task, "peak": self.peak, "cap": self.cap}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a STATUS_REPLY worker") -> WorkerStatus:
        return cls(natural(meta, where, "pid"), text(meta, where, "address"), text(meta, where, "state"),
                   natural(meta, where, "rss"), natural(meta, where, "tasks_done"),
                   maybe_natural(meta, where, "task"), natural(meta, where, "peak"),
                   maybe_natural(meta, where, "cap"))


class RecentFailure(Record):
    """A task a node reported failed (its worker died, or broke a limit), as its STATUS_REPLY lists it."""

    __slots__ = ("time", "task", "pid", "reason", "message")

    time: float  # when, in seconds since the epoch (the node's clock)
    task: int
    pid: int
    reason: str  # a `FailureReason` value
    message: str  # what the node told the task's client

    def __init__(self, time: float, task: int, pid: int, reason: str, message: str) -> None:
        self._assign(time, task, pid, reason, message)

    def to_meta(self) -> Meta:
        return {"time": self.time, "task": self.task, "pid": self.pid, "reason": self.reason, "message": self.message}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a STATUS_REPLY failure") -> RecentFailure:
        when: Any = meta.get("time")
        if not (type(when) is float or type(when) is int) or not 0 <= when < 1e12:  # NaN fails too
            raise refused(meta, where, "time", "a time in seconds since the epoch")
        return cls(float(when), natural(meta, where, "task"), natural(meta, where, "pid"), text(meta, where, "reason"),
                   text(meta, where, "message"))


class NodeStatus(Record):
    """A node daemon's STATUS_REPLY (role "node")."""

    __slots__ = ("name", "address", "instance", "memory_limit", "processes", "workers", "clients", "tasks_done",
                 "tasks_crashed", "running", "tasks_by_outcome", "kills_by_reason", "recent_failures")

    KIND: ClassVar[Kind] = Kind.STATUS_REPLY

    name: str
    address: str
    instance: str
    memory_limit: Optional[int]  # bytes
    processes: int
    workers: tuple[WorkerStatus, ...]
    clients: int
    tasks_done: int
    tasks_crashed: int
    running: int
    # Tasks by outcome (the metrics' lucidity_tasks_total), limit kills by reason, and the last failures the
    # node reported, newest first, with their text: what `lucidity top` and the dashboard show.
    tasks_by_outcome: Mapping[str, int]
    kills_by_reason: Mapping[str, int]
    recent_failures: tuple[RecentFailure, ...]

    def __init__(self, name: str, address: str, instance: str, memory_limit: Optional[int], processes: int,
                 workers: tuple[WorkerStatus, ...], clients: int, tasks_done: int, tasks_crashed: int, running: int,
                 tasks_by_outcome: Mapping[str, int] = _NO_COUNTS, kills_by_reason: Mapping[str, int] = _NO_COUNTS,
                 recent_failures: tuple[RecentFailure, ...] = ()) -> None:
        self._assign(name, address, instance, memory_limit, processes, workers, clients, tasks_done, tasks_crashed,
                     running, tasks_by_outcome, kills_by_reason, recent_failures)

    def to_meta(self) -> Meta:
        return {"role": "node", "name": self.name, "address": self.address, "instance": self.instance,
                "memory_limit": self.memory_limit, "processes": self.processes,
                "workers": [worker.to_meta() for worker in self.workers], "clients": self.clients,
                "tasks_done": self.tasks_done, "tasks_crashed": self.tasks_crashed, "running": self.running,
                "tasks_by_outcome": dict(self.tasks_by_outcome), "kills_by_reason": dict(self.kills_by_reason),
                "recent_failures": [failure.to_meta() for failure in self.recent_failures]}

    @classmethod
    def from_meta(cls, meta: Meta) -> NodeStatus:
        where = "a node's STATUS_REPLY meta"
        workers = tuple(WorkerStatus.from_meta(entry) for entry in objects(meta, where, "workers"))
        failures = tuple(RecentFailure.from_meta(entry) for entry in objects(meta, where, "recent_failures")
                         ) if "recent_failures" in meta else ()
        return cls(text(meta, where, "name"), text(meta, where, "address"), text(meta, where, "instance"),
                   maybe_natural(meta, where, "memory_limit"), natural(meta, where, "processes"), workers,
                   natural(meta, where, "clients"), natural(meta, where, "tasks_done"),
                   natural(meta, where, "tasks_crashed"), natural(meta, where, "running"),
                   maybe_counts(meta, where, "tasks_by_outcome"), maybe_counts(meta, where, "kills_by_reason"),
                   failures)


class ControlStatus(Record):
    """The control node's STATUS_REPLY (role "control"): the nodes as it lists them."""

    __slots__ = ("address", "instance", "nodes", "watchers")

    KIND: ClassVar[Kind] = Kind.STATUS_REPLY

    address: str
    instance: str
    nodes: tuple[NodeEntry, ...]
    watchers: int  # clients watching the membership

    def __init__(self, address: str, instance: str, nodes: tuple[NodeEntry, ...], watchers: int) -> None:
        self._assign(address, instance, nodes, watchers)

    def to_meta(self) -> Meta:
        return {"role": "control", "address": self.address, "instance": self.instance,
                "nodes": [node.to_meta() for node in self.nodes], "watchers": self.watchers}

    @classmethod
    def from_meta(cls, meta: Meta) -> ControlStatus:
        where = "the control node's STATUS_REPLY meta"
        nodes = tuple(NodeEntry.from_meta(entry, "a STATUS_REPLY node") for entry in objects(meta, where, "nodes"))
        return cls(text(meta, where, "address"), text(meta, where, "instance"), nodes,
                   natural(meta, where, "watchers"))


def status_reply(meta: Meta) -> Union[NodeStatus, ControlStatus]:
    role = meta.get("role")
    if role == "node":
        return NodeStatus.from_meta(meta)
    if role == "control":
        return ControlStatus.from_meta(meta)
    raise refused(meta, "STATUS_REPLY meta", "role", '"node" or "control"')
