"""The bodies of the cluster's own messages: membership, clients' sessions with nodes, failure reports.

None of these is on the task path (`lucidity.messages.work` has those; `lucidity.messages.status` the status
replies); see `lucidity.messages` for what every body class offers. The kinds, by who sends them::

    node    --JOIN (NodeEntry)/BEAT (NodeBeat)/LEAVE-->  control --WELCOME--> node
    client  --WATCH-->  control --NODES (NodeEntry...: the full list, or the changes)--> client
    client  --HELLO/HEARTBEAT/ABANDON/BYE--> node --WORKERS (WorkerEntry...)/TASK_FAILED (FailureReport)--> client
    node    --DROP--> worker
    anyone  --STATUS--> a daemon
"""

from __future__ import annotations

import enum
from typing import ClassVar, Optional, TypeVar

from ..protocol import Kind
from .fields import (Meta, client_id, flag, maybe_amount, maybe_integer, maybe_natural, maybe_text, natural, objects,
                     refused, text, texts)
from .record import Record

__all__ = ["NodeEntry", "Welcome", "Heartbeat", "Leave", "Watch", "Status", "Nodes", "Hello", "Abandon", "Bye",
           "Drop", "WorkerEntry", "Workers", "FailureReason", "FailureReport", "NodeBeat"]


class FailureReason(str, enum.Enum):
    """Why a node reports a task failed: its worker crashed, or the watchdog stopped it over a limit."""

    CRASHED = "crashed"
    MEMORY = "memory"
    TIMEOUT = "timeout"
    CPU = "cpu"


# An enum looked up by value runs Python code; a dictionary is one C call.
_REASONS = {reason.value: reason for reason in FailureReason}


class NodeEntry(Record):
    """A node: what it tells the control node in a JOIN (its body: at the start, when the entry changed, or
    when the control node asks), and how the control node lists it (NODES, and the control node's
    STATUS_REPLY)."""

    __slots__ = ("name", "address", "processes", "instance", "running", "host")

    KIND: ClassVar[Kind] = Kind.JOIN

    name: str
    address: str  # where clients reach the node daemon
    processes: int  # its workers
    instance: str  # new at each start of the daemon: a restarted node is a new instance
    running: int  # its workers running a task at the last heartbeat
    host: str  # the machine's host name, for placement

    def __init__(self, name: str, address: str, processes: int, instance: str, running: int = 0,
                 host: str = "") -> None:
        self._assign(name, address, processes, instance, running, host)

    def to_meta(self) -> Meta:
        return {"name": self.name, "address": self.address, "processes": self.processes, "instance": self.instance,
                "running": self.running, "host": self.host}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "JOIN meta") -> NodeEntry:
        return cls(text(meta, where, "name"), text(meta, where, "address"), natural(meta, where, "processes"),
                   text(meta, where, "instance"), maybe_natural(meta, where, "running") or 0,
                   maybe_text(meta, where, "host") or "")


class NodeBeat(Record):
    """A node's heartbeat to the control node while its entry is unchanged: who it is and its load, a few
    dozen bytes where a full JOIN is a few hundred (issue 13). The control node answers one from a node it
    does not know (it restarted, or dropped the node after a silence) with a WELCOME asking for a JOIN."""

    __slots__ = ("name", "instance", "running")

    KIND: ClassVar[Kind] = Kind.BEAT

    name: str
    instance: str  # the node's: a beat of another instance than the one listed is from a stranger
    running: int  # its workers running a task now

    def __init__(self, name: str, instance: str, running: int) -> None:
        self._assign(name, instance, running)

    def to_meta(self) -> Meta:
        return {"name": self.name, "instance": self.instance, "running": self.running}

    @classmethod
    def from_meta(cls, meta: Meta) -> NodeBeat:
        where = "BEAT meta"
        return cls(text(meta, where, "name"), text(meta, where, "instance"), natural(meta, where, "running"))


class Welcome(Record):
    """The control node's answer to a JOIN or a BEAT; ``rejoin`` asks the node for its full entry (a JOIN),
    because the control node does not know it: it restarted, or dropped the node after a silence."""

    __slots__ = ("instance", "rejoin")

    KIND: ClassVar[Kind] = Kind.WELCOME

    instance: str  # the control node's, new at each start
    rejoin: bool

    def __init__(self, instance: str, rejoin: bool = False) -> None:
        self._assign(instance, rejoin)

    def to_meta(self) -> Meta:
        return {"instance": self.instance, "rejoin": self.rejoin}

    @classmethod
    def from_meta(cls, meta: Meta) -> Welcome:
        return cls(text(meta, "WELCOME meta", "instance"), flag(meta, "WELCOME meta", "rejoin"))


class Heartbeat(Record):
    """A client's heartbeat to a node (with its session id), and the node's answer (without)."""

    __slots__ = ("client",)

    KIND: ClassVar[Kind] = Kind.HEARTBEAT

    client: Optional[str]

    def __init__(self, client: Optional[str] = None) -> None:
        self._assign(client)

    def to_meta(self) -> Meta:
        return {} if self.client is None else {"client": self.client}

    @classmethod
    def from_meta(cls, meta: Meta) -> Heartbeat:
        return cls(None if meta.get("client") is None else client_id(meta, "HEARTBEAT meta"))


class Leave(Record):
    """A node leaves the cluster."""

    __slots__ = ("name",)

    KIND: ClassVar[Kind] = Kind.LEAVE

    name: str

    def __init__(self, name: str) -> None:
        self._assign(name)

    def to_meta(self) -> Meta:
        return {"name": self.name}

    @classmethod
    def from_meta(cls, meta: Meta) -> Leave:
        return cls(text(meta, "LEAVE meta", "name"))


_Empty_ = TypeVar("_Empty_", bound="_Empty")
_AboutClient_ = TypeVar("_AboutClient_", bound="_AboutClient")


class _Empty(Record):
    __slots__ = ()

    def to_meta(self) -> Meta:
        return {}

    @classmethod
    def from_meta(cls: type[_Empty_], meta: Meta) -> _Empty_:
        return cls()


class Watch(Record):
    """A client asks the control node for the nodes, now and whenever they change; sent once a second.

    A client that holds the list of one control node names it and the sequence number of the last change
    it applied (`Nodes.seq`): if that is the control node's latest, the answer is an empty change (a few
    dozen bytes); otherwise, and for a WATCH without them (the first, or after a gap), the full list.
    """

    __slots__ = ("instance", "seq")

    KIND: ClassVar[Kind] = Kind.WATCH

    instance: str  # the control node's whose list the client holds ("": none)
    seq: Optional[int]

    def __init__(self, instance: str = "", seq: Optional[int] = None) -> None:
        self._assign(instance, seq)

    def to_meta(self) -> Meta:
        return {} if self.seq is None else {"instance": self.instance, "seq": self.seq}

    @classmethod
    def from_meta(cls, meta: Meta) -> Watch:
        where = "WATCH meta"
        seq = maybe_natural(meta, where, "seq")
        return cls(text(meta, where, "instance"), seq) if seq is not None else cls()


class Status(_Empty):
    """Anyone asks a daemon how it is (`lucidity.status`)."""

    __slots__ = ()

    KIND: ClassVar[Kind] = Kind.STATUS


class Nodes(Record):
    """The control node's nodes, sent to the clients that watch it: the full list, or the changes.

    Every change of the list (nodes joined, changed or left, coalesced by name) gets the next sequence
    number, ``seq``, and goes to every watching client as ``full=False``: ``nodes`` are the entries joined
    or changed, ``left`` the names of the nodes gone. A client applies a change numbered one past the last
    it holds; any other number means it missed one, and its next WATCH asks for the full list
    (``full=True``: ``nodes`` is every node, at ``seq``). An answer to a WATCH of a client that is up to
    date is a change with nothing in it and the client's own ``seq``.
    """

    __slots__ = ("nodes", "instance", "seq", "full", "left")

    KIND: ClassVar[Kind] = Kind.NODES

    nodes: tuple[NodeEntry, ...]
    instance: str  # the control node's
    seq: int
    full: bool
    left: tuple[str, ...]

    def __init__(self, nodes: tuple[NodeEntry, ...], instance: str, seq: int = 0, full: bool = True,
                 left: tuple[str, ...] = ()) -> None:
        self._assign(nodes, instance, seq, full, left)

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

class _AboutClient(Record):
    __slots__ = ("client",)

    KIND: ClassVar[Kind]

    client: str  # the client's session with the node (`links.NodeLink.session`): 32 hex digits

    def __init__(self, client: str) -> None:
        self._assign(client)

    def to_meta(self) -> Meta:
        return {"client": self.client}

    @classmethod
    def from_meta(cls: type[_AboutClient_], meta: Meta) -> _AboutClient_:
        return cls(client_id(meta, f"{cls.KIND.name} meta"))


class Hello(_AboutClient):
    """A client introduces itself to a node, which answers with its workers."""

    __slots__ = ()

    KIND: ClassVar[Kind] = Kind.HELLO


class Abandon(_AboutClient):
    """A client that terminated asks a node to stop its work."""

    __slots__ = ()

    KIND: ClassVar[Kind] = Kind.ABANDON


class Bye(_AboutClient):
    """A client closes: the node forgets it (and tells its workers to)."""

    __slots__ = ()

    KIND: ClassVar[Kind] = Kind.BYE


class Drop(_AboutClient):
    """A node tells its workers to forget a client: its queued tasks and its main namespace."""

    __slots__ = ()

    KIND: ClassVar[Kind] = Kind.DROP


class WorkerEntry(Record):
    """A worker as its node lists it to clients."""

    __slots__ = ("id", "pid", "address")

    id: str  # unique within the node
    pid: int
    address: str  # where clients connect to it

    def __init__(self, id: str, pid: int, address: str) -> None:
        self._assign(id, pid, address)

    def to_meta(self) -> Meta:
        return {"id": self.id, "pid": self.pid, "address": self.address}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a WORKERS entry") -> WorkerEntry:
        return cls(text(meta, where, "id"), natural(meta, where, "pid"), text(meta, where, "address"))


class Workers(Record):
    """A node's ready workers, sent to each client at HELLO and whenever they change."""

    __slots__ = ("node", "workers")

    KIND: ClassVar[Kind] = Kind.WORKERS

    node: str
    workers: tuple[WorkerEntry, ...]

    def __init__(self, node: str, workers: tuple[WorkerEntry, ...]) -> None:
        self._assign(node, workers)

    def to_meta(self) -> Meta:
        return {"node": self.node, "workers": [worker.to_meta() for worker in self.workers]}

    @classmethod
    def from_meta(cls, meta: Meta) -> Workers:
        where = "WORKERS meta"
        node = text(meta, where, "node")
        return cls(node, tuple(WorkerEntry.from_meta(entry) for entry in objects(meta, where, "workers")))


class FailureReport(Record):
    """Why the task a worker was running failed, as its node tells the task's client (TASK_FAILED).

    A crash carries the worker's exit (``exit_code`` or ``signal``) and the tail of its stderr; a limit the
    watchdog enforced carries the limit, what was measured and the task's peak memory.
    """

    __slots__ = ("task", "pid", "node", "worker", "reason", "message", "limit", "measured", "peak", "exit_code",
                 "signal", "stderr")

    KIND: ClassVar[Kind] = Kind.TASK_FAILED

    task: int
    pid: int
    node: str
    worker: str  # the worker's id in its node's WORKERS entries
    reason: FailureReason
    message: str  # says it all for people, naming "task N"
    limit: Optional[float]  # bytes or seconds
    measured: Optional[float]
    peak: Optional[int]  # bytes
    exit_code: Optional[int]
    signal: Optional[int]
    stderr: str

    def __init__(self, task: int, pid: int, node: str, worker: str, reason: FailureReason, message: str,
                 limit: Optional[float] = None, measured: Optional[float] = None, peak: Optional[int] = None,
                 exit_code: Optional[int] = None, signal: Optional[int] = None, stderr: str = "") -> None:
        self._assign(task, pid, node, worker, reason, message, limit, measured, peak, exit_code, signal, stderr)

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
