"""The bodies of the task path: a client's tasks to a worker, its results back, and what goes with them.

See `lucidity.messages` for what every body class offers. The kinds, by who sends them::

    client --TASKS (TaskSpec..., MainEntry, Module...)--> worker --RESULTS (ResultEntry...)--> client
    worker --FETCH--> client --MODULE--> worker             (code shipping, `lucidity.shipping`)
    worker --OUTPUT/PROGRESS--> client                      (what tasks print, how far they are: issue 14)

and `lucidity.messages.alongside` has the smaller messages that go with them (CANCEL, MISSING, REFUSED,
FETCH).

TASKS and RESULTS carry up to 256 entries each, and every task makes one of each: their entries are
NamedTuples (cheaper to make than a `Record`, as immutable) and are read in plain loops.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Sequence

from .. import protocol
from ..errors import ProtocolError
from ..protocol import META_INT_MAX, Kind
from ..shipping import ModuleSource
from .fields import (MAX_SECONDS, Meta, array, client_id, flag, is_layout, maybe_flag, maybe_natural,
                     maybe_seconds, maybe_text, objects, refused, shown, text, texts)
from .record import Record

__all__ = ["TaskMode", "ResultStatus", "MainEntry", "Module", "TaskSpec", "TasksPayload", "Tasks", "ResultEntry",
           "Results", "Output", "Progress"]


class TaskMode(str, enum.Enum):
    """How a worker calls a task's function on its payload."""

    CALL = "call"  # the payload is (args, kwargs)
    MAP = "map"  # the payload is a chunk of items: function(item) for each
    STARMAP = "starmap"  # function(*item) for each


class ResultStatus(str, enum.Enum):
    OK = "ok"  # the payload is the value
    ERROR = "error"  # the payload is the exception the task raised


# A NamedTuple's own __new__ runs Python code; tuple.__new__ makes the same tuple in C (from_meta of entries).
_new_tuple = tuple.__new__
# How a record's __init__ sets a field, past its own __setattr__ that refuses (see `Record`).
_set = object.__setattr__
# An enum looked up by value runs Python code; a dictionary is one C call (once per task here). A member is a
# str equal to its value and hashed as it, so it finds itself here too (from_meta of a body's to_meta).
_MODES = {mode.value: mode for mode in TaskMode}
_STATUSES = {status.value: status for status in ResultStatus}


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

    def to_meta(self, layout: Any = None) -> Meta:
        """The entry; in a TASKS message, with the layout of the task's frames last, as ``"n"``."""
        task_id, function, mode, initializer, max_tasks, pool, memory, timeout, cpu_time = self
        if initializer is None and not (max_tasks or memory or timeout or cpu_time):  # the usual case, made fast
            if layout is None:
                return {"id": task_id, "fn": function, "mode": mode}
            return {"id": task_id, "fn": function, "mode": mode, "n": layout}
        meta: Meta = {"id": task_id, "fn": function, "mode": mode}
        if initializer is not None:
            meta["init"] = initializer
        if max_tasks:
            meta["max"] = max_tasks
            meta["pool"] = pool
        if memory:
            meta["mem"] = memory
        if timeout:
            meta["timeout"] = timeout
        if cpu_time:
            meta["cpu"] = cpu_time
        if layout is not None:
            meta["n"] = layout
        return meta

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a TASKS task entry") -> TaskSpec:
        task_id = meta.get("id")
        function = meta.get("fn")
        mode = meta.get("mode")
        if type(task_id) is not int or not 0 <= task_id <= META_INT_MAX:
            raise refused(meta, where, "id", "a task id")
        if type(function) is not str:
            raise refused(meta, where, "fn", "a function digest")
        if not isinstance(mode, str) or mode not in _MODES:  # isinstance: a TaskMode is a str (and one of them)
            raise refused(meta, where, "mode", f"one of {', '.join(_MODES)}")
        if len(meta) - ("n" in meta) == 3:  # id, fn, mode (and the layout): no options, the usual case
            return _new_tuple(cls, (task_id, function, _MODES[mode], None, 0, "", 0, 0.0, 0.0))
        return cls(task_id, function, _MODES[mode], maybe_text(meta, where, "init") or None,
                   maybe_natural(meta, where, "max") or 0, maybe_text(meta, where, "pool") or "",
                   maybe_natural(meta, where, "mem") or 0, maybe_seconds(meta, where, "timeout") or 0.0,
                   maybe_seconds(meta, where, "cpu") or 0.0)


class TasksPayload(NamedTuple):
    """A TASKS message's payload frames by what they carry (see `Tasks.split`)."""

    modules: Sequence[Any]  # the source of each shipped module, in `Tasks.ship` order
    main: Optional[Any]  # the caller's script, if `Tasks.main` has a source
    functions: Sequence[Any]  # each function's serialized form, in `Tasks.functions` order
    items: list[list[memoryview]]  # each task's frames, in `Tasks.tasks` order


class Tasks(Record):
    """A batch of tasks from a client to a worker.

    The payload frames follow in this order: each shipped module's source, the main script's source (if
    `main` has one), each function in `functions`, then the tasks' frames as laid out by
    `protocol.pack_items` (`layout`, one entry per task, travels as each task entry's ``"n"``).
    """

    __slots__ = ("client", "functions", "tasks", "layout", "ship", "main", "modules")

    KIND: ClassVar[Kind] = Kind.TASKS

    client: str  # the client's session with the worker's node
    functions: tuple[str, ...]  # digests of the functions sent with this batch
    tasks: tuple[TaskSpec, ...]
    layout: tuple[Any, ...]
    ship: tuple[Module, ...]  # modules sent up front (``ship=``), with the first batch to each worker
    main: Optional[MainEntry]  # with the first batch to each worker, and again when it asks
    modules: Optional[Mapping[str, str]]  # name -> digest of each module shipped to this worker

    def __init__(self, client: str, functions: tuple[str, ...], tasks: tuple[TaskSpec, ...], layout: tuple[Any, ...],
                 ship: tuple[Module, ...] = (), main: Optional[MainEntry] = None,
                 modules: Optional[Mapping[str, str]] = None) -> None:
        # Field by field rather than `_assign`'s loop, here and in `Results`: one of each per batch of tasks.
        _set(self, "client", client)
        _set(self, "functions", functions)
        _set(self, "tasks", tasks)
        _set(self, "layout", layout)
        _set(self, "ship", ship)
        _set(self, "main", main)
        _set(self, "modules", modules)

    def to_meta(self) -> Meta:
        tasks = [spec.to_meta(layout) for spec, layout in zip(self.tasks, self.layout)]
        meta: Meta = {"client": self.client, "functions": list(self.functions), "tasks": tasks}
        if self.ship:
            meta["ship"] = [module.to_meta() for module in self.ship]
        if self.main is not None:
            meta["main"] = self.main.to_meta()
        if self.modules is not None:
            meta["modules"] = dict(self.modules)
        return meta

    @classmethod
    def from_meta(cls, meta: Meta) -> Tasks:
        where = "TASKS meta"
        client = client_id(meta, where)
        functions = texts(meta, where, "functions")
        entries = array(meta, where, "tasks")
        specs = []
        layout = []
        from_entry = TaskSpec.from_meta
        for entry in entries:
            if type(entry) is not dict:
                raise ProtocolError(f"{where} field 'tasks' holds {shown(entry)}, not an object")
            n = entry.get("n")
            if type(n) is list:  # inline `is_layout`: this loop runs for every task
                if len(n) != 2 or type(n[0]) is not int or type(n[1]) is not int or n[0] < 0 or n[1] < 0:
                    raise refused(entry, "a TASKS task entry", "n", "a payload layout entry")
            elif not is_layout(n):
                raise refused(entry, "a TASKS task entry", "n", "a payload layout entry")
            specs.append(from_entry(entry))
            layout.append(n)
        ship: tuple[Module, ...] = ()
        if "ship" in meta:
            ship = tuple(Module.from_meta(entry, "a TASKS ship entry") for entry in objects(meta, where, "ship"))
        main = None
        if meta.get("main") is not None:
            main_meta = meta["main"]
            if type(main_meta) is not dict:
                raise refused(meta, where, "main", "an object")
            main = MainEntry.from_meta(main_meta)
        modules = meta.get("modules")
        if modules is not None and (type(modules) is not dict or not all(
                type(digest) is str for digest in modules.values())):
            raise refused(meta, where, "modules", "an object of module names and digests")
        return cls(client, functions, tuple(specs), tuple(layout), ship, main, modules)

    def split(self, payload: Sequence[Any]) -> TasksPayload:
        """The payload frames by what they carry; `ProtocolError` if they do not add up."""
        shipped = len(self.ship)
        main_frames = 1 if self.main is not None and self.main.has_source else 0
        first_item = shipped + main_frames + len(self.functions)
        if first_item > len(payload):
            raise ProtocolError(f"TASKS announces {first_item} module, script and function frames; "
                                f"it carries {len(payload)} frames in all")
        items = protocol.unpack_items(self.layout, payload[first_item:])
        return TasksPayload(payload[:shipped], payload[shipped] if main_frames else None,
                            payload[shipped + main_frames:first_item], items)


class ResultEntry(NamedTuple):
    """One task's outcome in a RESULTS message (its value or exception travels in the payload).

    A NamedTuple for speed, as `TaskSpec`.
    """

    id: int
    status: ResultStatus
    seconds: float  # how long the task ran: clients size their windows on it

    def to_meta(self) -> Meta:
        return {"id": self.id, "status": self.status, "t": self.seconds}

    @classmethod
    def from_meta(cls, meta: Meta, where: str = "a RESULTS entry") -> ResultEntry:
        task_id = meta.get("id")
        status = meta.get("status")
        seconds = meta.get("t")
        if type(task_id) is not int or not 0 <= task_id <= META_INT_MAX:
            raise refused(meta, where, "id", "a task id")
        if not isinstance(status, str) or status not in _STATUSES:
            raise refused(meta, where, "status", f"one of {', '.join(_STATUSES)}")
        if (type(seconds) is not float and type(seconds) is not int) or not 0 <= seconds <= MAX_SECONDS:
            raise refused(meta, where, "t", f"a number of seconds from 0 to {MAX_SECONDS}")
        return _new_tuple(cls, (task_id, _STATUSES[status], seconds))


class Results(Record):
    """A batch of results from a worker to the client whose tasks they answer.

    The payload is each result's frames as laid out by `protocol.pack_items` (`layout`, one entry per
    result, travels as each result entry's ``"n"``).
    """

    __slots__ = ("results", "layout")

    KIND: ClassVar[Kind] = Kind.RESULTS

    results: tuple[ResultEntry, ...]
    layout: tuple[Any, ...]

    def __init__(self, results: tuple[ResultEntry, ...], layout: tuple[Any, ...]) -> None:
        _set(self, "results", results)
        _set(self, "layout", layout)

    def to_meta(self) -> Meta:
        # Each entry as `ResultEntry.to_meta` writes it, and its layout; inline, as this runs for every result.
        return {"results": [{"id": task_id, "status": status, "t": seconds, "n": layout}
                            for (task_id, status, seconds), layout in zip(self.results, self.layout)]}

    @classmethod
    def from_meta(cls, meta: Meta) -> Results:
        entries = array(meta, "RESULTS meta", "results")
        results = []
        layout = []
        from_entry = ResultEntry.from_meta
        for entry in entries:
            if type(entry) is not dict:
                raise ProtocolError(f"RESULTS meta field 'results' holds {shown(entry)}, not an object")
            n = entry.get("n")
            if type(n) is list:  # inline `is_layout`: this loop runs for every result
                if len(n) != 2 or type(n[0]) is not int or type(n[1]) is not int or n[0] < 0 or n[1] < 0:
                    raise refused(entry, "a RESULTS entry", "n", "a payload layout entry")
            elif not is_layout(n):
                raise refused(entry, "a RESULTS entry", "n", "a payload layout entry")
            results.append(from_entry(entry))
            layout.append(n)
        return cls(tuple(results), tuple(layout))

    def split(self, payload: Sequence[Any]) -> list[list[memoryview]]:
        """Each result's frames; `ProtocolError` if they do not add up."""
        return protocol.unpack_items(self.layout, payload)


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
