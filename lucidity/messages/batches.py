"""TASKS and RESULTS, the two bodies every task makes one of, and their binary meta (protocol version 7).

Every other body travels as a JSON object checked field by field (`lucidity.messages.fields`). These two
are on the path of every task, twice, and that JSON with its checks was about 40% of a worker's Python per
task (issue 13): here they have a fixed layout, little-endian, read with one `struct` call per message part
and one tuple per task out of `Struct.iter_unpack`. The types of the fields are the layout's, so what is
left to check per entry is a few ranges; and every size is announced up front, so a meta whose parts do not
add up to its length is refused before any entry is read. The rare parts (shipped modules, the main entry,
the module manifest) stay a JSON object at the end, read by `protocol.parse_json` and the same checks as
before. The first byte is the protocol's (`protocol.BINARY_PLAIN`; `protocol.decode` removes a slice
table)::

    TASKS    TASKS_HEAD   marker 0, client (the 32 hex digits as 16 bytes), entry form (0: PLAIN_TASK,
                          1: FULL_TASK), strings, functions (the first of the strings), tasks,
                          bytes of string text, bytes of extras
             text                the strings, UTF-8, each after a NUL but the first (digests and pool
                                 names, which hold none)
             tasks x PLAIN_TASK  id, function (a string's index), mode, layout (offset, length)
                  or FULL_TASK   the same, then initializer (a string's index, or NO_STRING), max tasks,
                                 pool (a string's index), memory, timeout, CPU time
             extras              a JSON object with "ship", "main", "modules" when any is present
    RESULTS  RESULTS_HEAD marker 0, results
             results x RESULT    id, status, seconds, layout (offset, length)

A layout entry of `protocol.pack_items` travels as (offset, length) in the packed frame, or as (-1, count)
for an item of its own frames. Ids and sizes are signed 64-bit fields that must not be negative (so 2**63
and beyond cannot pass), seconds are doubles from 0 to `MAX_SECONDS` (NaN fails). A batch names a function
by its string's index, and a function shared by its tasks is written once. Errors name the entry and the
field as the JSON did ("a TASKS task entry (3) field 'mode'"), so logs read the same.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Sequence

from .. import protocol
from ..errors import ProtocolError
from ..protocol import Kind
from .fields import MAX_SECONDS, Meta, objects, refused, shown
from .record import Record
from .work import MainEntry, Module, ResultEntry, ResultStatus, TaskMode, TaskSpec

__all__ = ["Tasks", "TasksPayload", "Results", "TASKS_HEAD", "PLAIN_TASK", "FULL_TASK", "RESULTS_HEAD", "RESULT",
           "NO_STRING"]

TASKS_HEAD = struct.Struct("<B16sBIIIII")
PLAIN_TASK = struct.Struct("<qIBqq")
FULL_TASK = struct.Struct("<qIBqqIqIqdd")
RESULTS_HEAD = struct.Struct("<BI")
RESULT = struct.Struct("<qBdqq")
# RESULTS_HEAD and one RESULT: an apply's answer, written in one call.
_ONE_RESULT = struct.Struct("<BIqBdqq")
#: The string index of an absent initializer.
NO_STRING = 2 ** 32 - 1
_TASKS_HEAD_SIZE = TASKS_HEAD.size
_RESULTS_HEAD_SIZE = RESULTS_HEAD.size

_PLAIN = protocol.BINARY_PLAIN
# The enums' numbers on the wire, written out (not the enums' order, which may change): a tuple by number for
# reading, a dict by member for writing.
_MODES = (TaskMode.CALL, TaskMode.MAP, TaskMode.STARMAP)
_MODE_NUMBERS = {mode: number for number, mode in enumerate(_MODES)}
_STATUSES = (ResultStatus.OK, ResultStatus.ERROR)
_STATUS_NUMBERS = {status: number for number, status in enumerate(_STATUSES)}
# As in `lucidity.messages.work`: a NamedTuple made in C.
_new_tuple = tuple.__new__


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
    `protocol.pack_items` (`layout`, one entry per task, travels in each task's entry).
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
        # Each field by its slot's own setter (see below the class), here and in `Results`: one of each is made
        # per batch on each side, and object.__setattr__, which finds the slot by name, cost twice as much.
        _set_client(self, client)
        _set_functions(self, functions)
        _set_tasks(self, tasks)
        _set_layout(self, layout)
        _set_ship(self, ship)
        _set_main(self, main)
        _set_modules(self, modules)

    def to_meta(self) -> bytes:
        """The binary meta (see the module docstring). ValueError or struct.error for a field that does not
        fit its layout: a client id that is not hex, an id or size outside 0..2**63 - 1."""
        strings = list(self.functions)
        index = {name: number for number, name in enumerate(strings)} if strings else {}
        full = False
        for spec in self.tasks:
            if spec.initializer is not None or spec.max_tasks or spec.memory or spec.timeout or spec.cpu_time:
                full = True
                break
        if full:
            rows = _full_rows(self.tasks, self.layout, strings, index)
        else:  # the usual batch, every task without options: a plain loop (it runs for every task)
            rows = []
            pack = PLAIN_TASK.pack
            modes = _MODE_NUMBERS
            for spec, layout in zip(self.tasks, self.layout):
                function = index.get(spec.function)
                if function is None:
                    function = index[spec.function] = len(strings)
                    strings.append(spec.function)
                if type(layout) is int:
                    rows.append(pack(spec.id, function, modes[spec.mode], -1, layout))
                else:
                    rows.append(pack(spec.id, function, modes[spec.mode], layout[0], layout[1]))
        extra = b""
        if self.ship or self.main is not None or self.modules is not None:
            extra = protocol.write_json(self._extras())
        joined = "\0".join(strings)
        if strings and joined.count("\0") != len(strings) - 1:
            raise ValueError(f"a string of a TASKS message holds a NUL: {strings}")
        text = joined.encode()
        head = TASKS_HEAD.pack(_PLAIN, bytes.fromhex(self.client), full, len(strings), len(self.functions),
                               len(rows), len(text), len(extra))
        return b"".join((head, text, *rows, extra))

    def _extras(self) -> Meta:
        """The rare parts, which travel as a JSON object at the end of the meta."""
        extras: Meta = {}
        if self.ship:
            extras["ship"] = [module.to_meta() for module in self.ship]
        if self.main is not None:
            extras["main"] = self.main.to_meta()
        if self.modules is not None:
            extras["modules"] = dict(self.modules)
        return extras

    @classmethod
    def from_meta(cls, meta: bytes) -> Tasks:
        """The batch a binary meta holds, every field checked; `ProtocolError` naming what is wrong."""
        where = "TASKS meta"
        if type(meta) is not bytes or meta[:1] != b"\0" or len(meta) < _TASKS_HEAD_SIZE:
            raise _not_binary(meta, where, _TASKS_HEAD_SIZE)
        _, client, full, string_count, function_count, task_count, text_size, extra_size = TASKS_HEAD.unpack_from(
            meta, 0)
        if full > 1:
            raise ProtocolError(f"{where} has an entry form of {full}; 0 (plain) or 1 (with options) is required")
        row = FULL_TASK if full else PLAIN_TASK
        text_start = _TASKS_HEAD_SIZE
        rows_start = text_start + text_size
        extra_start = rows_start + task_count * row.size
        if extra_start + extra_size != len(meta):
            raise ProtocolError(f"{where} is {len(meta)} bytes; its header announces {extra_start + extra_size} "
                                f"({string_count} strings of {text_size} bytes, {task_count} tasks, {extra_size} "
                                "bytes of extras)")
        if function_count > string_count:
            raise ProtocolError(f"{where} announces {function_count} functions among {string_count} strings")
        strings = _strings(meta[text_start:rows_start], where, string_count)
        specs: list[TaskSpec] = []
        layout: list[Any] = []
        modes = _MODES
        if not full:
            for task_id, function, mode, offset, length in PLAIN_TASK.iter_unpack(meta[rows_start:extra_start]):
                if task_id < 0 or function >= string_count or mode >= len(modes):
                    raise _bad_task(len(specs), task_id, function, mode, string_count)
                if offset >= 0 and length >= 0:
                    layout.append([offset, length])
                elif offset == -1 and length >= 1:
                    layout.append(length)
                else:
                    raise _bad_layout(f"a TASKS task entry ({len(specs)})", offset, length)
                specs.append(_new_tuple(TaskSpec, (task_id, strings[function], modes[mode], None, 0, "", 0, 0.0,
                                                   0.0)))
        else:
            for (task_id, function, mode, offset, length, initializer, max_tasks, pool, memory, timeout,
                 cpu_time) in FULL_TASK.iter_unpack(meta[rows_start:extra_start]):
                if task_id < 0 or function >= string_count or mode >= len(modes):
                    raise _bad_task(len(specs), task_id, function, mode, string_count)
                if not (offset >= 0 and length >= 0) and not (offset == -1 and length >= 1):
                    raise _bad_layout(f"a TASKS task entry ({len(specs)})", offset, length)
                _check_options(len(specs), initializer, max_tasks, pool, memory, timeout, cpu_time, string_count)
                layout.append(length if offset == -1 else [offset, length])
                specs.append(TaskSpec(task_id, strings[function], modes[mode],
                                      (strings[initializer] or None) if initializer != NO_STRING else None,
                                      max_tasks, strings[pool], memory, timeout, cpu_time))
        ship: tuple[Module, ...] = ()
        main = None
        modules = None
        if extra_size:
            extras = protocol.parse_json(meta[extra_start:], f"{where}'s extras")
            ship, main, modules = _extras(extras, where)
        return cls(client.hex(), tuple(strings[:function_count]), tuple(specs), tuple(layout), ship, main, modules)

    def split(self, payload: Sequence[Any]) -> TasksPayload:
        """The payload frames by what they carry; `ProtocolError` if they do not add up."""
        shipped = len(self.ship)
        main_frames = 1 if self.main is not None and self.main.has_source else 0
        first_item = shipped + main_frames + len(self.functions)
        if first_item > len(payload):
            raise ProtocolError(f"TASKS announces {first_item} module, script and function frames; "
                                f"it carries {len(payload)} frames in all")
        items = protocol.unpack_items(self.layout, payload[first_item:])
        return _new_tuple(TasksPayload, (payload[:shipped], payload[shipped] if main_frames else None,
                                         payload[shipped + main_frames:first_item], items))


_set_client, _set_functions, _set_tasks, _set_layout, _set_ship, _set_main, _set_modules = (
    Tasks.__dict__[name].__set__ for name in Tasks.__slots__)


class Results(Record):
    """A batch of results from a worker to the client whose tasks they answer.

    The payload is each result's frames as laid out by `protocol.pack_items` (`layout`, one entry per
    result, travels in each result's entry).
    """

    __slots__ = ("results", "layout")

    KIND: ClassVar[Kind] = Kind.RESULTS

    results: tuple[ResultEntry, ...]
    layout: tuple[Any, ...]

    def __init__(self, results: tuple[ResultEntry, ...], layout: tuple[Any, ...]) -> None:
        _set_results(self, results)
        _set_results_layout(self, layout)

    def to_meta(self) -> bytes:
        """The binary meta (see the module docstring)."""
        if len(self.results) == 1:
            (task_id, status, seconds), = self.results
            layout = self.layout[0]
            offset, length = (-1, layout) if type(layout) is int else layout
            return _ONE_RESULT.pack(_PLAIN, 1, task_id, _STATUS_NUMBERS[status], seconds, offset, length)
        rows = [RESULTS_HEAD.pack(_PLAIN, len(self.results))]
        pack = RESULT.pack
        numbers = _STATUS_NUMBERS
        for (task_id, status, seconds), layout in zip(self.results, self.layout):
            if type(layout) is int:
                rows.append(pack(task_id, numbers[status], seconds, -1, layout))
            else:
                rows.append(pack(task_id, numbers[status], seconds, layout[0], layout[1]))
        return b"".join(rows)

    @classmethod
    def from_meta(cls, meta: bytes) -> Results:
        """The results a binary meta holds, every field checked; `ProtocolError` naming what is wrong."""
        where = "RESULTS meta"
        if type(meta) is not bytes or meta[:1] != b"\0" or len(meta) < _RESULTS_HEAD_SIZE:
            raise _not_binary(meta, where, _RESULTS_HEAD_SIZE)
        count = RESULTS_HEAD.unpack_from(meta, 0)[1]
        if _RESULTS_HEAD_SIZE + count * RESULT.size != len(meta):
            raise ProtocolError(f"{where} is {len(meta)} bytes; its header announces "
                                f"{_RESULTS_HEAD_SIZE + count * RESULT.size} ({count} results)")
        results: list[ResultEntry] = []
        layout: list[Any] = []
        statuses = _STATUSES
        for task_id, status, seconds, offset, length in RESULT.iter_unpack(meta[_RESULTS_HEAD_SIZE:]):
            if task_id < 0 or status >= len(statuses) or not 0.0 <= seconds <= MAX_SECONDS:  # NaN fails the last
                raise _bad_result(len(results), task_id, status, seconds)
            if offset >= 0 and length >= 0:
                layout.append([offset, length])
            elif offset == -1 and length >= 1:
                layout.append(length)
            else:
                raise _bad_layout(f"a RESULTS entry ({len(results)})", offset, length)
            results.append(_new_tuple(ResultEntry, (task_id, statuses[status], seconds)))
        return cls(tuple(results), tuple(layout))

    def split(self, payload: Sequence[Any]) -> list[list[memoryview]]:
        """Each result's frames; `ProtocolError` if they do not add up."""
        return protocol.unpack_items(self.layout, payload)

    @classmethod
    def read(cls, meta: bytes, payload: Sequence[Any]) -> list[tuple[int, ResultStatus, float, list[memoryview]]]:
        """`from_meta` and `split` at once: each result's id, status, seconds and frames, with every check of
        both (`ProtocolError` naming what is wrong).

        A batch of tiny results (every one packed in the payload's one frame) is read in a single pass, which
        makes no `ResultEntry`, layout entry or list of frames per result besides the one returned: the client's
        I/O thread reads one per task of a burst. So is a lone result of one frame. Any other batch is read by
        `from_meta` and `split`.
        """
        if len(payload) == 1 and type(meta) is bytes and len(meta) == _ONE_RESULT.size and meta[:1] == b"\0":
            # One result of one frame (an apply's, or the last of a burst): its frame is not packed.
            _, count, task_id, status, seconds, offset, length = _ONE_RESULT.unpack(meta)
            if (count == 1 and task_id >= 0 and status < len(_STATUSES) and 0.0 <= seconds <= MAX_SECONDS
                    and offset == -1 and length == 1):
                return [(task_id, _STATUSES[status], seconds, [_view(payload[0])])]
        elif (len(payload) == 1 and type(meta) is bytes and len(meta) > _RESULTS_HEAD_SIZE + RESULT.size
                and meta[:1] == b"\0"):
            count = RESULTS_HEAD.unpack_from(meta, 0)[1]
            if _RESULTS_HEAD_SIZE + count * RESULT.size == len(meta):
                packed = _view(payload[0])
                size = len(packed)
                statuses = _STATUSES
                read = []
                for task_id, status, seconds, offset, length in RESULT.iter_unpack(meta[_RESULTS_HEAD_SIZE:]):
                    if (task_id < 0 or status >= len(statuses) or not 0.0 <= seconds <= MAX_SECONDS
                            or offset < 0 or length < 0 or offset + length > size):
                        break  # (not packed, or wrong: the general way says which)
                    read.append((task_id, statuses[status], seconds, [packed[offset:offset + length]]))
                else:
                    return read
        body = cls.from_meta(meta)
        return [(task_id, status, seconds, frames)
                for (task_id, status, seconds), frames in zip(body.results, body.split(payload))]


_set_results, _set_results_layout = (Results.__dict__[name].__set__ for name in Results.__slots__)


def _full_rows(specs: Sequence[TaskSpec], layouts: Sequence[Any], strings: list[str], index: dict[str, int]
               ) -> list[bytes]:
    """The entries of a batch in which some task has options (FULL_TASK), adding their strings to `strings`."""
    def number(name: str) -> int:
        found = index.setdefault(name, len(strings))
        if found == len(strings):
            strings.append(name)
        return found

    rows = []
    for spec, layout in zip(specs, layouts):
        offset, length = (-1, layout) if type(layout) is int else layout
        initializer = NO_STRING if spec.initializer is None else number(spec.initializer)
        pool = number(spec.pool if spec.max_tasks else "")  # a pool's name counts its tasks: only with max_tasks
        rows.append(FULL_TASK.pack(spec.id, number(spec.function), _MODE_NUMBERS[spec.mode], offset, length,
                                   initializer, spec.max_tasks, pool, spec.memory, spec.timeout, spec.cpu_time))
    return rows


def _view(frame: Any) -> memoryview:
    """A payload frame's bytes, not copied (a ZeroMQ frame's buffer)."""
    return memoryview(frame) if isinstance(frame, (bytes, bytearray, memoryview)) else frame.buffer


def _not_binary(meta: Any, where: str, head_size: int) -> ProtocolError:
    if type(meta) is not bytes:
        return ProtocolError(f"{where} is a {type(meta).__name__}, not a binary meta")
    if meta[:1] != b"\0":
        return ProtocolError(f"{where} is not a binary meta of protocol version {protocol.VERSION}: it begins "
                             f"{shown(meta[:8])}")
    return ProtocolError(f"{where} is {len(meta)} bytes, shorter than its header of {head_size}")


def _strings(text: bytes, where: str, count: int) -> list[str]:
    """The string table: UTF-8 text, the strings separated by NUL (no string is no text, one empty string too)."""
    if not count:
        if text:
            raise ProtocolError(f"{where} announces no strings; it has {len(text)} bytes of their text")
        return []
    try:
        strings = text.decode().split("\0")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{where}'s strings are not UTF-8: {exc}") from None
    if len(strings) != count:
        raise ProtocolError(f"{where} announces {count} strings; its text holds {len(strings)}")
    return strings


def _bad_task(index: int, task_id: int, function: int, mode: int, string_count: int) -> ProtocolError:
    where = f"a TASKS task entry ({index})"
    if task_id < 0:
        return _refused(where, "id", "a task id (0 to 2**63 - 1)", task_id)
    if function >= string_count:
        return _refused(where, "fn", f"a function digest (a string's index, under {string_count})", function)
    return _refused(where, "mode", _numbered(_MODES), mode)


def _check_options(index: int, initializer: int, max_tasks: int, pool: int, memory: int, timeout: float,
                   cpu_time: float, string_count: int) -> None:
    where = f"a TASKS task entry ({index})"
    if initializer != NO_STRING and initializer >= string_count:
        raise _refused(where, "init", f"a string's index (under {string_count})", initializer)
    if max_tasks < 0:
        raise _refused(where, "max", "an integer from 0 to 2**63 - 1", max_tasks)
    if pool >= string_count:
        raise _refused(where, "pool", f"a string's index (under {string_count})", pool)
    if memory < 0:
        raise _refused(where, "mem", "an integer from 0 to 2**63 - 1", memory)
    for name, seconds in (("timeout", timeout), ("cpu", cpu_time)):
        if not 0.0 <= seconds <= MAX_SECONDS:  # NaN fails too
            raise _refused(where, name, f"a number of seconds from 0 to {MAX_SECONDS}", seconds)


def _bad_result(index: int, task_id: int, status: int, seconds: float) -> ProtocolError:
    where = f"a RESULTS entry ({index})"
    if task_id < 0:
        return _refused(where, "id", "a task id (0 to 2**63 - 1)", task_id)
    if status >= len(_STATUSES):
        return _refused(where, "status", _numbered(_STATUSES), status)
    return _refused(where, "t", f"a number of seconds from 0 to {MAX_SECONDS}", seconds)


def _bad_layout(where: str, offset: int, length: int) -> ProtocolError:
    return ProtocolError(f"{where} field 'n' is not a payload layout entry: offset {offset}, length {length} "
                         "(an offset of 0 or more and a length of 0 or more, or -1 and a count of 1 or more)")


def _numbered(members: Sequence[Any]) -> str:
    return "one of " + ", ".join(f"{number} ({member.value})" for number, member in enumerate(members))


def _refused(where: str, name: str, wanted: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{where} field {name!r} is not {wanted}: {shown(value)}")


def _extras(extras: Meta, where: str) -> tuple[tuple[Module, ...], Optional[MainEntry], Optional[dict[str, str]]]:
    """The rare parts of a TASKS meta, checked as they were when the whole meta was JSON."""
    ship: tuple[Module, ...] = ()
    if "ship" in extras:
        ship = tuple(Module.from_meta(entry, "a TASKS ship entry") for entry in objects(extras, where, "ship"))
    main = None
    if extras.get("main") is not None:
        main_meta = extras["main"]
        if type(main_meta) is not dict:
            raise refused(extras, where, "main", "an object")
        main = MainEntry.from_meta(main_meta)
    modules = extras.get("modules")
    if modules is not None and (type(modules) is not dict or not all(
            type(digest) is str for digest in modules.values())):
        raise refused(extras, where, "modules", "an object of module names and digests")
    return ship, main, modules
