"""The bodies of the cluster's own messages: membership, clients' sessions with nodes, failure reports, status.

None of these is on the task path (`lucidity.messages.work` has those); see `lucidity.messages` for what
every body class offers. The kinds, by who sends them::

    node    --JOIN (NodeEntry)/BEAT (NodeBeat)/LEAVE-->  control --WELCOME--> node
    client  --WATCH-->  control --NODES (NodeEntry...: the full list, or the changes)--> client
    client  --HELLO/HEARTBEAT/ABANDON/BYE--> node --WORKERS (WorkerEntry...)/TASK_FAILED (FailureReport)--> client
    node    --DROP--> worker
    anyone  --STATUS--> a daemon --STATUS_REPLY (NodeStatus or ControlStatus)--> anyone
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, TypeVar, Union

from ..protocol import Kind
from .fields import (SLOTS, Meta, client_id, flag, maybe_amount, maybe_counts, maybe_integer,
                     maybe_natural, maybe_text, natural, objects, refused, text, texts)

__all__ = ["NodeEntry", "Welcome", "Heartbeat", "Leave", "Watch", "Status", "Nodes", "Hello", "Abandon", "Bye",
           "Drop", "WorkerEntry", "Workers", "FailureReason", "FailureReport", "WorkerStatus", "RecentFailure", "NodeStatus",
           "ControlStatus", "status_reply", "NodeBeat"]


class FailureReason(str, enum.Enum):
    """Why a node reports a task failed: its worker crashed, or the watchdog stopped it over a limit."""

    CRASHED = "crashed"
    MEMORY = "memory"
    TIMEOUT = "timeout"
    CPU = "cpu"


# An enum looked up by value runs Python code; a dictionary is one C call.
_REASONS = {reason.value: reason for reason in FailureReason}


@dataclass(frozen=True, **SLOTS)
class NodeEntry:
    """A node: what it tells the control node in a JOIN (its body: at the start, when the entry changed, or
    when the control node asks), and how the control node lists it (NODES, and the control node's
    STATUS_REPLY)."""

    KIND: ClassVar[Kind] = Kind.JOIN

    name: str
    address: str  # where clients reach the node daemon
    processes: int  # its workers
    instance: str  # new at each start of the daemon: a restarted node is a new instance
    running: int = 0  # its workers running a task at the last heartbeat
    host: str = ""  # the machine's host name, for placement

    def to_meta(self) -> Meta:
        return {"name": self.name, "address": self.address, "processes": self.processes, "instance": self.instance,
                "running": self.running, "host": self.host}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "JOIN meta") -> NodeEntry:
        return cls(text(meta, where, "name"), text(meta, where, "address"), natural(meta, where, "processes"),
                   text(meta, where, "instance"), maybe_natural(meta, where, "running") or 0,
                   maybe_text(meta, where, "host") or "")


@dataclass(frozen=True, **SLOTS)
class NodeBeat:
    """A node's heartbeat to the control node while its entry is unchanged: who it is and its load, a few
    dozen bytes where a full JOIN is a few hundred (issue 13). The control node answers one from a node it
    does not know (it restarted, or dropped the node after a silence) with a WELCOME asking for a JOIN."""

    KIND: ClassVar[Kind] = Kind.BEAT

    name: str
    instance: str  # the node's: a beat of another instance than the one listed is from a stranger
    running: int  # its workers running a task now

    def to_meta(self) -> Meta:
        return {"name": self.name, "instance": self.instance, "running": self.running}

    @classmethod
    def from_meta(cls, meta: Meta) -> NodeBeat:
        where = "BEAT meta"
        return cls(text(meta, where, "name"), text(meta, where, "instance"), natural(meta, where, "running"))


@dataclass(frozen=True, **SLOTS)
class Welcome:
    """The control node's answer to a JOIN or a BEAT; ``rejoin`` asks the node for its full entry (a JOIN),
    because the control node does not know it: it restarted, or dropped the node after a silence."""

    KIND: ClassVar[Kind] = Kind.WELCOME

    instance: str  # the control node's, new at each start
    rejoin: bool = False

    def to_meta(self) -> Meta:
        return {"instance": self.instance, "rejoin": self.rejoin}

    @classmethod
    def from_meta(cls, meta: Meta) -> Welcome:
        return cls(text(meta, "WELCOME meta", "instance"), flag(meta, "WELCOME meta", "rejoin"))


@dataclass(frozen=True, **SLOTS)
class Heartbeat:
    """A client's heartbeat to a node (with its session id), and the node's answer (without)."""

    KIND: ClassVar[Kind] = Kind.HEARTBEAT

    client: Optional[str] = None

    def to_meta(self) -> Meta:
        return {} if self.client is None else {"client": self.client}

    @classmethod
    def from_meta(cls, meta: Meta) -> Heartbeat:
        return cls(None if meta.get("client") is None else client_id(meta, "HEARTBEAT meta"))


@dataclass(frozen=True, **SLOTS)
class Leave:
    """A node leaves the cluster."""

    KIND: ClassVar[Kind] = Kind.LEAVE

    name: str

    def to_meta(self) -> Meta:
        return {"name": self.name}

    @classmethod
    def from_meta(cls, meta: Meta) -> Leave:
        return cls(text(meta, "LEAVE meta", "name"))


_Empty_ = TypeVar("_Empty_", bound="_Empty")
_AboutClient_ = TypeVar("_AboutClient_", bound="_AboutClient")


@dataclass(frozen=True, **SLOTS)
class _Empty:
    def to_meta(self) -> Meta:
        return {}

    @classmethod
    def from_meta(cls: type[_Empty_], meta: Meta) -> _Empty_:
        return cls()


@dataclass(frozen=True, **SLOTS)
class Watch:
    """A client asks the control node for the nodes, now and whenever they change; sent once a second.

    A client that holds the list of one control node names it and the sequence number of the last change
    it applied (`Nodes.seq`): if that is the control node's latest, the answer is an empty change (a few
    dozen bytes); otherwise, and for a WATCH without them (the first, or after a gap), the full list.
    """

    KIND: ClassVar[Kind] = Kind.WATCH

    instance: str = ""  # the control node's whose list the client holds ("": none)
    seq: Optional[int] = None

    def to_meta(self) -> Meta:
        return {} if self.seq is None else {"instance": self.instance, "seq": self.seq}

    @classmethod
    def from_meta(cls, meta: Meta) -> Watch:
        where = "WATCH meta"
        seq = maybe_natural(meta, where, "seq")
        return cls(text(meta, where, "instance"), seq) if seq is not None else cls()


@dataclass(frozen=True, **SLOTS)
class Status(_Empty):
    """Anyone asks a daemon how it is (`lucidity.status`)."""

    KIND: ClassVar[Kind] = Kind.STATUS


@dataclass(frozen=True, **SLOTS)
class Nodes:
    """The control node's nodes, sent to the clients that watch it: the full list, or the changes.

    Every change of the list (nodes joined, changed or left, coalesced by name) gets the next sequence
    number, ``seq``, and goes to every watching client as ``full=False``: ``nodes`` are the entries joined
    or changed, ``left`` the names of the nodes gone. A client applies a change numbered one past the last
    it holds; any other number means it missed one, and its next WATCH asks for the full list
    (``full=True``: ``nodes`` is every node, at ``seq``). An answer to a WATCH of a client that is up to
    date is a change with nothing in it and the client's own ``seq``.
    """

    KIND: ClassVar[Kind] = Kind.NODES

    nodes: tuple[NodeEntry, ...]
    instance: str  # the control node's
    seq: int = 0
    full: bool = True
    left: tuple[str, ...] = ()

    def to_meta(self) -> Meta:
        return {"nodes": [node.to_meta() for node in self.nodes], "instance": self.instance, "seq": self.seq,
                "full": self.full, "left": list(self.left)}

    @classmethod
    def from_meta(cls, meta: Meta) -> Nodes:
        where = "NODES meta"
        nodes = tuple(NodeEntry.from_meta(entry, "a NODES entry") for entry in objects(meta, where, "nodes"))
        return cls(nodes, text(meta, where, "instance"), natural(meta, where, "seq"), flag(meta, where, "full"),
                   texts(meta, where, "left"))


# -- client <-> node daemon --------------------------------------------------------------------------------

@dataclass(frozen=True, **SLOTS)
class _AboutClient:
    KIND: ClassVar[Kind]

    client: str  # the client's session with the node (`links.NodeLink.session`): 32 hex digits

    def to_meta(self) -> Meta:
        return {"client": self.client}

    @classmethod
    def from_meta(cls: type[_AboutClient_], meta: Meta) -> _AboutClient_:
        return cls(client_id(meta, f"{cls.KIND.name} meta"))


@dataclass(frozen=True, **SLOTS)
class Hello(_AboutClient):
    """A client introduces itself to a node, which answers with its workers."""

    KIND: ClassVar[Kind] = Kind.HELLO


@dataclass(frozen=True, **SLOTS)
class Abandon(_AboutClient):
    """A client that terminated asks a node to stop its work."""

    KIND: ClassVar[Kind] = Kind.ABANDON


@dataclass(frozen=True, **SLOTS)
class Bye(_AboutClient):
    """A client closes: the node forgets it (and tells its workers to)."""

    KIND: ClassVar[Kind] = Kind.BYE


@dataclass(frozen=True, **SLOTS)
class Drop(_AboutClient):
    """A node tells its workers to forget a client: its queued tasks and its main namespace."""

    KIND: ClassVar[Kind] = Kind.DROP


@dataclass(frozen=True, **SLOTS)
class WorkerEntry:
    """A worker as its node lists it to clients."""

    id: str  # unique within the node
    pid: int
    address: str  # where clients connect to it

    def to_meta(self) -> Meta:
        return {"id": self.id, "pid": self.pid, "address": self.address}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a WORKERS entry") -> WorkerEntry:
        return cls(text(meta, where, "id"), natural(meta, where, "pid"), text(meta, where, "address"))


@dataclass(frozen=True, **SLOTS)
class Workers:
    """A node's ready workers, sent to each client at HELLO and whenever they change."""

    KIND: ClassVar[Kind] = Kind.WORKERS

    node: str
    workers: tuple[WorkerEntry, ...]

    def to_meta(self) -> Meta:
        return {"node": self.node, "workers": [worker.to_meta() for worker in self.workers]}

    @classmethod
    def from_meta(cls, meta: Meta) -> Workers:
        where = "WORKERS meta"
        node = text(meta, where, "node")
        return cls(node, tuple(WorkerEntry.from_meta(entry) for entry in objects(meta, where, "workers")))


@dataclass(frozen=True, **SLOTS)
class FailureReport:
    """Why the task a worker was running failed, as its node tells the task's client (TASK_FAILED).

    A crash carries the worker's exit (``exit_code`` or ``signal``) and the tail of its stderr; a limit the
    watchdog enforced carries the limit, what was measured and the task's peak memory.
    """

    KIND: ClassVar[Kind] = Kind.TASK_FAILED

    task: int
    pid: int
    node: str
    worker: str  # the worker's id in its node's WORKERS entries
    reason: FailureReason
    message: str  # says it all for people, naming "task N"
    limit: Optional[float] = None  # bytes or seconds
    measured: Optional[float] = None
    peak: Optional[int] = None  # bytes
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    stderr: str = ""

    def to_meta(self) -> Meta:
        meta: Meta = {"task": self.task, "pid": self.pid, "node": self.node, "worker": self.worker,
                      "reason": self.reason}
        if self.reason is FailureReason.CRASHED:
            meta.update(exit_code=self.exit_code, signal=self.signal, stderr=self.stderr)
        else:
            meta.update(limit=self.limit, measured=self.measured, peak=self.peak)
        meta["message"] = self.message
        return meta

    @classmethod
    def from_meta(cls, meta: Meta) -> FailureReport:
        where = "TASK_FAILED meta"
        reason = meta.get("reason")
        if not isinstance(reason, str) or reason not in _REASONS:
            raise refused(meta, where, "reason", f"one of {', '.join(_REASONS)}")
        return cls(natural(meta, where, "task"), natural(meta, where, "pid"), text(meta, where, "node"),
                   text(meta, where, "worker"), _REASONS[reason], text(meta, where, "message"),
                   maybe_amount(meta, where, "limit"), maybe_amount(meta, where, "measured"),
                   maybe_natural(meta, where, "peak"), maybe_integer(meta, where, "exit_code"),
                   maybe_natural(meta, where, "signal"), maybe_text(meta, where, "stderr") or "")


# -- status (anyone <-> a daemon) --------------------------------------------------------------------------

@dataclass(frozen=True, **SLOTS)
class WorkerStatus:
    """One worker in its node's STATUS_REPLY."""

    pid: int
    address: str
    state: str  # "busy" or a `node.supervision.WorkerState` value, for people
    rss: int  # bytes: the worker and what its task started
    tasks_done: int
    task: Optional[int]  # the task it is running
    peak: int  # bytes
    cap: Optional[int]  # the memory cap of its task, or of its node (bytes)

    def to_meta(self) -> Meta:
        return {"pid": self.pid, "address": self.address, "state": self.state, "rss": self.rss,
                "tasks_done": self.tasks_done, "task": self.task, "peak": self.peak, "cap": self.cap}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a STATUS_REPLY worker") -> WorkerStatus:
        return cls(natural(meta, where, "pid"), text(meta, where, "address"), text(meta, where, "state"),
                   natural(meta, where, "rss"), natural(meta, where, "tasks_done"),
                   maybe_natural(meta, where, "task"), natural(meta, where, "peak"),
                   maybe_natural(meta, where, "cap"))


@dataclass(frozen=True, **SLOTS)
class RecentFailure:
    """A task a node reported failed (its worker died, or broke a limit), as its STATUS_REPLY lists it."""

    time: float  # when, in seconds since the epoch (the node's clock)
    task: int
    pid: int
    reason: str  # a `FailureReason` value
    message: str  # what the node told the task's client

    def to_meta(self) -> Meta:
        return {"time": self.time, "task": self.task, "pid": self.pid, "reason": self.reason, "message": self.message}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a STATUS_REPLY failure") -> RecentFailure:
        when: Any = meta.get("time")
        if not (type(when) is float or type(when) is int) or not 0 <= when < 1e12:  # NaN fails too
            raise refused(meta, where, "time", "a time in seconds since the epoch")
        return cls(float(when), natural(meta, where, "task"), natural(meta, where, "pid"), text(meta, where, "reason"),
                   text(meta, where, "message"))


@dataclass(frozen=True, **SLOTS)
class NodeStatus:
    """A node daemon's STATUS_REPLY (role "node")."""

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
    tasks_by_outcome: Mapping[str, int] = field(default_factory=dict)
    kills_by_reason: Mapping[str, int] = field(default_factory=dict)
    recent_failures: tuple[RecentFailure, ...] = ()

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


@dataclass(frozen=True, **SLOTS)
class ControlStatus:
    """The control node's STATUS_REPLY (role "control"): the nodes as it lists them."""

    KIND: ClassVar[Kind] = Kind.STATUS_REPLY

    address: str
    instance: str
    nodes: tuple[NodeEntry, ...]
    watchers: int  # clients watching the membership

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
