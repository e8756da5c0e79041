"""The records of the task path: what a TASKS and a RESULTS message hold, and what goes with them.

See `lucidity.messages` for what every body class offers. The kinds, by who sends them::

    client --TASKS (TaskSpec..., MainEntry, Module...)--> worker --RESULTS (ResultEntry...)--> client
    worker --FETCH--> client --MODULE--> worker             (code shipping, `lucidity.shipping`)
    worker --OUTPUT/PROGRESS--> client                      (what tasks print, how far they are: issue 14)

The TASKS and RESULTS bodies themselves, and their binary meta, are `lucidity.messages.batches`'; this
module has their entries, and `lucidity.messages.alongside` the smaller messages that go with them (CANCEL,
MISSING, REFUSED, FETCH).

TASKS and RESULTS carry up to 256 entries each, and every task makes one of each: their entries are
NamedTuples (cheaper to make than a `Record`, as immutable).
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, NamedTuple, Optional, Sequence

from ..errors import ProtocolError
from ..protocol import META_INT_MAX, Kind
from ..shipping import ModuleSource
from .fields import Meta, flag, maybe_flag, maybe_text, refused, text, texts
from .record import Record

__all__ = ["TaskMode", "ResultStatus", "MainEntry", "Module", "TaskSpec", "ResultEntry", "Output", "Progress"]


class TaskMode(str, enum.Enum):
    """How a worker calls a task's function on its payload."""

    CALL = "call"  # the payload is (args, kwargs)
    MAP = "map"  # the payload is a chunk of items: function(item) for each
    STARMAP = "starmap"  # function(*item) for each


class ResultStatus(str, enum.Enum):
    OK = "ok"  # the payload is the value
    ERROR = "error"  # the payload is the exception the task raised


# How a record's __init__ sets a field, past its own __setattr__ that refuses (see `Record`).
_set = object.__setattr__


class MainEntry(Record):
    """How a worker gives one client's tasks the caller's ``__main__`` (`lucidity.mainscript`): TASKS ``main``.

    With a ``filename``, the script's source follows as a payload frame and the worker imports it as
    ``__mp_main__``; without, the worker makes an empty namespace that the client fills by value.
    """

    __slots__ = ("argv", "start", "filename", "digest", "package")

    argv: tuple[str, ...]
    start: str  # the caller's start method, which names the worker ("" for the platform's default)
    filename: Optional[str]
    digest: str
    package: str  # for ``python -m pkg.mod``: what relative imports resolve against

    def __init__(self, argv: tuple[str, ...], start: str = "", filename: Optional[str] = None, digest: str = "",
                 package: str = "") -> None:
        self._assign(argv, start, filename, digest, package)

    @property
    def has_source(self) -> bool:
        return self.filename is not None

    def to_meta(self) -> Meta:
        meta: Meta = {"argv": list(self.argv), "start": self.start}
        if self.filename is not None:
            meta.update(filename=self.filename, digest=self.digest, package=self.package)
        return meta

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a TASKS main entry") -> MainEntry:
        return cls(texts(meta, where, "argv"), maybe_text(meta, where, "start") or "",
                   maybe_text(meta, where, "filename"), maybe_text(meta, where, "digest") or "",
                   maybe_text(meta, where, "package") or "")


class Module(Record):
    """A module's source as a client ships it (MODULE, answering a FETCH; TASKS ``ship``), or why it cannot.

    A found module's source travels as one payload frame after the meta.
    """

    __slots__ = ("name", "found", "package", "filename", "digest", "reason")

    KIND: ClassVar[Kind] = Kind.MODULE

    name: str
    found: bool
    package: bool  # a package's __init__
    filename: str
    digest: str
    reason: str  # why it was not found

    def __init__(self, name: str, found: bool, package: bool = False, filename: str = "", digest: str = "",
                 reason: str = "") -> None:
        self._assign(name, found, package, filename, digest, reason)

    def to_meta(self) -> Meta:
        if self.found:
            return {"name": self.name, "found": True, "package": self.package, "filename": self.filename,
                    "digest": self.digest}
        return {"name": self.name, "found": False, "reason": self.reason}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "MODULE meta") -> Module:
        name = text(meta, where, "name")
        if not flag(meta, where, "found"):
            return cls(name, False, reason=maybe_text(meta, where, "reason") or "the client cannot find it")
        return cls(name, True, maybe_flag(meta, where, "package"), text(meta, where, "filename"),
                   text(meta, where, "digest"))

    def source(self, frames: Sequence[Any]) -> tuple[Optional[ModuleSource], str]:
        """The shipped module with its one source frame, or None and why the client could not ship it."""
        if not self.found:
            return None, self.reason
        if len(frames) != 1:
            raise ProtocolError(f"module {self.name} came with {len(frames)} source frames, not 1")
        data = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
        return ModuleSource(self.name, self.package, self.filename, self.digest, data), ""


class TaskSpec(NamedTuple):
    """A task's entry in a TASKS message: what to call, how, and within which limits (0: none).

    A NamedTuple, where the other bodies are records (`lucidity.messages.record`): one is made for every
    task on each side, and a frozen record of nine fields costs three times as much to make (700 ns against
    230 in CPython 3.11, measured with frozen dataclasses, which set fields the same way: the difference,
    twice, is about 4 % of the CPU time of a tiny task's round trip). It is as immutable.
    """

    id: int
    function: str  # the function's digest
    mode: TaskMode
    initializer: Optional[str] = None  # its digest: runs once per worker and pool before the pool's first task
    max_tasks: int = 0  # the worker retires after this many tasks of `pool`
    pool: str = ""
    memory: int = 0  # bytes
    timeout: float = 0.0  # seconds of wall time
    cpu_time: float = 0.0  # seconds of CPU time


class ResultEntry(NamedTuple):
    """One task's outcome in a RESULTS message (its value or exception travels in the payload).

    A NamedTuple for speed, as `TaskSpec`.
    """

    id: int
    status: ResultStatus
    seconds: float  # how long the task ran: clients size their windows on it


class Output(Record):
    """What tasks wrote to the worker's stdout and stderr, for the client of the task that was running.

    The bytes travel as one payload frame, as written (lines may be cut anywhere; the client joins them).
    ``task`` is the task running when they were read (0 if none had run yet); ``end``: the worker sent
    them with results, so a last line without its newline is complete as far as that task goes.
    """

    __slots__ = ("task", "end")

    KIND: ClassVar[Kind] = Kind.OUTPUT

    task: int
    end: bool

    def __init__(self, task: int, end: bool = False) -> None:
        _set(self, "task", task)  # field by field: a worker may send one for every task
        _set(self, "end", end)

    def to_meta(self) -> Meta:
        return {"task": self.task, "end": True} if self.end else {"task": self.task}

    @classmethod
    def from_meta(cls, meta: Meta) -> Output:
        where = "OUTPUT meta"
        task = meta.get("task")
        if type(task) is not int or not 0 <= task <= META_INT_MAX:
            raise refused(meta, where, "task", "a task id")
        return cls(task, maybe_flag(meta, where, "end"))


class Progress(Record):
    """How far a running task has come: ``items`` of its chunk finished, and what the task itself last
    reported (`lucidity.report_progress`: ``done`` of ``total``; both 0 if it reported nothing)."""

    __slots__ = ("task", "items", "done", "total")

    KIND: ClassVar[Kind] = Kind.PROGRESS

    task: int
    items: int
    done: float
    total: float

    def __init__(self, task: int, items: int = 0, done: float = 0.0, total: float = 0.0) -> None:
        self._assign(task, items, done, total)

    def to_meta(self) -> Meta:
        return {"task": self.task, "items": self.items, "done": self.done, "total": self.total}

    @classmethod
    def from_meta(cls, meta: Meta) -> Progress:
        where = "PROGRESS meta"
        task = meta.get("task")
        items = meta.get("items")
        if type(task) is not int or not 0 <= task <= META_INT_MAX:
            raise refused(meta, where, "task", "a task id")
        if type(items) is not int or not 0 <= items <= META_INT_MAX:
            raise refused(meta, where, "items", "a count of items")
        numbers: list[float] = []
        for name in ("done", "total"):
            value = meta.get(name)
            if (type(value) is not int and type(value) is not float) or not 0 <= value <= 1e300:  # refuses NaN
                raise refused(meta, where, name, "a finite number, 0 or more")
            numbers.append(float(value))
        return cls(task, items, numbers[0], numbers[1])
