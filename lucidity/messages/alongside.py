"""The task path's smaller messages: what travels alongside a client's tasks and a worker's results.

See `lucidity.messages` for what every body class offers. The kinds, by who sends them::

    client --CANCEL/WITHDRAW--> worker                      worker --MISSING/REFUSED--> client
    worker --FETCH--> client (whose MODULE answers it: `lucidity.messages.work`; code shipping)
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from ..protocol import Kind
from .fields import Meta, maybe_flag, task_ids, text, texts
from .record import Record

__all__ = ["Cancel", "Withdraw", "Missing", "Fetch", "Refused"]


_Named = TypeVar("_Named", bound="_TaskList")


class _TaskList(Record):
    """A client names some of its tasks to a worker: the shape CANCEL and WITHDRAW share."""

    __slots__ = ("tasks",)

    KIND: ClassVar[Kind]

    tasks: tuple[int, ...]

    def __init__(self, tasks: tuple[int, ...]) -> None:
        self._assign(tasks)

    def to_meta(self) -> Meta:
        return {"tasks": list(self.tasks)}

    @classmethod
    def from_meta(cls: type[_Named], meta: Meta) -> _Named:
        return cls(task_ids(meta, f"{cls.KIND.name} meta", "tasks"))


class Cancel(_TaskList):
    """A terminating client cancels its tasks queued at a worker."""

    __slots__ = ()

    KIND: ClassVar[Kind] = Kind.CANCEL


class Withdraw(_TaskList):
    """A client takes back tasks queued at a worker, for workers that have run out (work stealing). The worker
    answers with a MISSING naming those it still held (perhaps none): the rest it has run or is running."""

    __slots__ = ()

    KIND: ClassVar[Kind] = Kind.WITHDRAW


class Missing(Record):
    """A worker gives tasks back unrun: it lacks what it names (functions evicted from its cache, or the
    client's main entry), and the client sends them again with it; or it is ``busy`` with a long task, and
    the client sends them to another worker and this one nothing until its task ends (its result says so,
    or, if the task was another client's, an empty MISSING that is not ``busy``). It also answers a
    WITHDRAW."""

    __slots__ = ("tasks", "digests", "main", "busy")

    KIND: ClassVar[Kind] = Kind.MISSING

    tasks: tuple[int, ...]
    digests: tuple[str, ...]
    main: bool
    busy: bool

    def __init__(self, tasks: tuple[int, ...], digests: tuple[str, ...], main: bool = False,
                 busy: bool = False) -> None:
        self._assign(tasks, digests, main, busy)

    def to_meta(self) -> Meta:
        meta: Meta = {"tasks": list(self.tasks), "digests": list(self.digests)}
        if self.main:
            meta["main"] = True
        if self.busy:
            meta["busy"] = True
        return meta

    @classmethod
    def from_meta(cls, meta: Meta) -> Missing:
        where = "MISSING meta"
        return cls(task_ids(meta, where, "tasks"), texts(meta, where, "digests"), maybe_flag(meta, where, "main"),
                   maybe_flag(meta, where, "busy"))


class Fetch(Record):
    """A worker asks the client of its current task for a module's source (`lucidity.shipping`)."""

    __slots__ = ("module",)

    KIND: ClassVar[Kind] = Kind.FETCH

    module: str

    def __init__(self, module: str) -> None:
        self._assign(module)

    def to_meta(self) -> Meta:
        return {"module": self.module}

    @classmethod
    def from_meta(cls, meta: Meta) -> Fetch:
        return cls(text(meta, "FETCH meta", "module"))


class Refused(Record):
    """A worker could not read a batch of tasks: the client fails what it sent there."""

    __slots__ = ("reason",)

    KIND: ClassVar[Kind] = Kind.REFUSED

    reason: str

    def __init__(self, reason: str) -> None:
        self._assign(reason)

    def to_meta(self) -> Meta:
        return {"reason": self.reason}

    @classmethod
    def from_meta(cls, meta: Meta) -> Refused:
        return cls(text(meta, "REFUSED meta", "reason"))
