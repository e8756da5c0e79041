"""lucidity.messages: every kind's body round-trips (to_meta/from_meta, and encode/decode/parse), a JSON
body travels as the same JSON lucidity sent before the bodies had classes, and every malformed body is
refused by its from_meta with ProtocolError, without touching the meta it was given.

The malformed cases are those of tests/test_malformed.py and tests/test_protocol_limits.py, read by the
body classes directly, plus every field of every kind given a value of each JSON type it must not have.
TASKS and RESULTS have a binary meta (protocol version 7): tests/unit/test_batches.py has their layout and
its malformed cases; here, their round trips and the JSON part of a TASKS (shipped modules, main, modules).
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from typing import Any, Iterator

import pytest

from lucidity import messages, protocol
from lucidity.errors import ProtocolError
from lucidity.messages import (Abandon, Bye, Cancel, Withdraw, ControlStatus, Drop, FailureReason, FailureReport, Fetch,
                               Heartbeat, Hello, Leave, MainEntry, Missing, Module, NodeBeat, NodeEntry, Nodes,
                               NodeStatus, RecentFailure,
                               Output, Progress, Refused, ResultEntry, Results, ResultStatus, Status, TaskMode, Tasks, TaskSpec, Watch,
                               Welcome, WorkerEntry, Workers, WorkerStatus)
from lucidity.messages.batches import TASKS_HEAD
from lucidity.protocol import Kind

CLIENT = uuid.uuid4().hex
DIGEST = "d" * 64
INIT = "i" * 64
LAYOUT, ITEM_FRAMES = protocol.pack_items([[b"first task"], [b"call", b"buffer"]])

NODE = NodeEntry("n1", "tcp://10.0.0.2:4000", 2, "a" * 32, 1, "host-1")
CRASH = FailureReport(17, 4121, "n1", "4121", FailureReason.CRASHED,
                      "worker 4121 on node n1 died with SIGSEGV while running task 17", exit_code=None, signal=11,
                      stderr="Fatal Python error: Segmentation fault\n")
BREACH = FailureReport(18, 4122, "n1", "4122", FailureReason.MEMORY, "task 18 went over its memory cap of 95.4 MiB",
                       limit=100_000_000, measured=150_000_000, peak=150_500_000)
SPECS = (TaskSpec(1, DIGEST, TaskMode.MAP),
         TaskSpec(2, DIGEST, TaskMode.CALL, INIT, 3, "pool-1", 2 ** 20, 1.5, 0.5))
SHIPPED = Module("helpers", True, False, "/app/helpers.py", "h" * 64)
MAIN = MainEntry(("app.py", "-v"), "fork", "/app/app.py", "m" * 64, "")
TASKS = Tasks(CLIENT, (DIGEST,), SPECS, tuple(LAYOUT), (SHIPPED,), MAIN, {"helpers": "h" * 64})
RESULTS = Results((ResultEntry(1, ResultStatus.OK, 0.000125), ResultEntry(2, ResultStatus.ERROR, 2)), tuple(LAYOUT))
NODE_STATUS = NodeStatus("n1", "tcp://10.0.0.2:4000", "a" * 32, None, 2, (
    WorkerStatus(4121, "tcp://10.0.0.2:5000", "busy", 50_000_000, 12, 17, 60_000_000, 100_000_000),
    WorkerStatus(4122, "tcp://10.0.0.2:5001", "ready", 40_000_000, 3, None, 45_000_000, None)), 1, 15, 1, 1,
    {"ok": 14, "error": 1, "crashed": 1}, {"memory": 0, "cpu": 0},
    (RecentFailure(1796000000.5, 9, 4120, "crashed", "worker 4120 on node n1 died with SIGKILL while running task 9"),))

#: One or more valid bodies of each kind, with their payload, and the JSON each travels as: written out as
#: the dicts lucidity built by hand before the bodies had classes, in their key order.
VALID: list[tuple[Any, list[bytes], dict[str, Any]]] = [
    (NODE, [], {"name": "n1", "address": "tcp://10.0.0.2:4000", "processes": 2, "instance": "a" * 32,
                "running": 1, "host": "host-1"}),
    (NodeBeat("n1", "a" * 32, 3), [], {"name": "n1", "instance": "a" * 32, "running": 3}),
    (Welcome("c" * 32, rejoin=True), [], {"instance": "c" * 32, "rejoin": True}),
    (Welcome("c" * 32), [], {"instance": "c" * 32, "rejoin": False}),
    (Heartbeat(), [], {}),
    (Heartbeat(CLIENT), [], {"client": CLIENT}),
    (Leave("n1"), [], {"name": "n1"}),
    (Watch("c" * 32, 17), [], {"instance": "c" * 32, "seq": 17}),
    (Watch(), [], {}),
    (Nodes((NODE, NodeEntry("n2", "ipc:///tmp/n2", 1, "b" * 32)), "c" * 32, 4, full=False, left=("n3",)), [], {
        "nodes": [
            {"name": "n1", "address": "tcp://10.0.0.2:4000", "processes": 2, "instance": "a" * 32, "running": 1,
             "host": "host-1"},
            {"name": "n2", "address": "ipc:///tmp/n2", "processes": 1, "instance": "b" * 32, "running": 0,
             "host": ""}],
        "instance": "c" * 32, "seq": 4, "full": False, "left": ["n3"]}),
    (Nodes((), "c" * 32), [], {"nodes": [], "instance": "c" * 32, "seq": 0, "full": True, "left": []}),
    (Hello(CLIENT), [], {"client": CLIENT}),
    (Workers("n1", (WorkerEntry("4121", 4121, "tcp://10.0.0.2:5000"),)), [],
     {"node": "n1", "workers": [{"id": "4121", "pid": 4121, "address": "tcp://10.0.0.2:5000"}]}),
    (CRASH, [], {"task": 17, "pid": 4121, "node": "n1", "worker": "4121", "reason": "crashed", "exit_code": None,
                 "signal": 11, "stderr": "Fatal Python error: Segmentation fault\n",
                 "message": "worker 4121 on node n1 died with SIGSEGV while running task 17"}),
    (BREACH, [], {"task": 18, "pid": 4122, "node": "n1", "worker": "4122", "reason": "memory", "limit": 100_000_000,
                  "measured": 150_000_000, "peak": 150_500_000,
                  "message": "task 18 went over its memory cap of 95.4 MiB"}),
    (FailureReport(19, 4123, "n1", "4123", FailureReason.TIMEOUT, "task 19 went over its wall-time limit",
                   limit=1.5, measured=1.75, peak=0), [],
     {"task": 19, "pid": 4123, "node": "n1", "worker": "4123", "reason": "timeout", "limit": 1.5, "measured": 1.75,
      "peak": 0, "message": "task 19 went over its wall-time limit"}),
    (Abandon(CLIENT), [], {"client": CLIENT}),
    (Bye(CLIENT), [], {"client": CLIENT}),
    (Status(), [], {}),
    (NODE_STATUS, [], {
        "role": "node", "name": "n1", "address": "tcp://10.0.0.2:4000", "instance": "a" * 32, "memory_limit": None,
        "processes": 2, "workers": [
            {"pid": 4121, "address": "tcp://10.0.0.2:5000", "state": "busy", "rss": 50_000_000, "tasks_done": 12,
             "task": 17, "peak": 60_000_000, "cap": 100_000_000},
            {"pid": 4122, "address": "tcp://10.0.0.2:5001", "state": "ready", "rss": 40_000_000, "tasks_done": 3,
             "task": None, "peak": 45_000_000, "cap": None}],
        "clients": 1, "tasks_done": 15, "tasks_crashed": 1, "running": 1,
        "tasks_by_outcome": {"ok": 14, "error": 1, "crashed": 1}, "kills_by_reason": {"memory": 0, "cpu": 0},
        "recent_failures": [{"time": 1796000000.5, "task": 9, "pid": 4120, "reason": "crashed",
                             "message": "worker 4120 on node n1 died with SIGKILL while running task 9"}]}),
    (ControlStatus("tcp://10.0.0.1:3030", "c" * 32, (NODE,), 3), [], {
        "role": "control", "address": "tcp://10.0.0.1:3030", "instance": "c" * 32, "nodes": [
            {"name": "n1", "address": "tcp://10.0.0.2:4000", "processes": 2, "instance": "a" * 32, "running": 1,
             "host": "host-1"}], "watchers": 3}),
    (Cancel((1, 2, 2 ** 63 - 1)), [], {"tasks": [1, 2, 2 ** 63 - 1]}),
    (Withdraw((3, 4)), [], {"tasks": [3, 4]}),
    (Missing((1,), (DIGEST, INIT)), [], {"tasks": [1], "digests": [DIGEST, INIT]}),
    (Missing((1,), (), main=True), [], {"tasks": [1], "digests": [], "main": True}),
    (Fetch("helpers"), [], {"module": "helpers"}),
    (SHIPPED, [b"helpers source"], {"name": "helpers", "found": True, "package": False,
                                    "filename": "/app/helpers.py", "digest": "h" * 64}),
    (Module("numpy", False, reason="it has compiled parts"), [],
     {"name": "numpy", "found": False, "reason": "it has compiled parts"}),
    (Drop(CLIENT), [], {"client": CLIENT}),
    (Refused("a packed item lies outside its frame"), [], {"reason": "a packed item lies outside its frame"}),
    (Output(17), [b"hello\n"], {"task": 17}),
    (Output(17, end=True), [b"last line without a newline"], {"task": 17, "end": True}),
    (Progress(17, 3, 0.5, 2.0), [], {"task": 17, "items": 3, "done": 0.5, "total": 2.0}),
]


#: The bodies with a binary meta, and their payload.
BATCHES: list[tuple[Any, list[bytes]]] = [
    (TASKS, [b"helpers source", b"app source", b"function", *ITEM_FRAMES]),
    (Tasks(CLIENT, (), (SPECS[0],), (LAYOUT[0],), main=MainEntry(("-c",)), modules={}), [ITEM_FRAMES[0]]),
    (Tasks(CLIENT, (DIGEST,), (SPECS[0], SPECS[0]._replace(id=3)), (LAYOUT[0], 1)), [b"function", *ITEM_FRAMES]),
    (RESULTS, ITEM_FRAMES),
    (Results((), ()), []),
]
#: The JSON part of the fullest TASKS above, as it travels inside its binary meta.
TASKS_EXTRAS: dict[str, Any] = {
    "ship": [{"name": "helpers", "found": True, "package": False, "filename": "/app/helpers.py", "digest": "h" * 64}],
    "main": {"argv": ["app.py", "-v"], "start": "fork", "filename": "/app/app.py", "digest": "m" * 64, "package": ""},
    "modules": {"helpers": "h" * 64}}


def case_id(case: tuple[Any, ...]) -> str:
    return f"{case[0].KIND.name}-{type(case[0]).__name__}"


def test_every_kind_has_a_valid_body_here() -> None:
    assert {body.KIND for body, _, _ in VALID} | {body.KIND for body, _ in BATCHES} == set(Kind) == set(messages.BODIES)
    assert {body.KIND for body, _ in BATCHES} == protocol.BINARY_KINDS


def read_tasks_extras(extras: Any) -> Tasks:
    """A TASKS whose binary meta ends with this JSON part (its shipped modules, main entry and modules)."""
    plain = Tasks(CLIENT, (), (SPECS[0],), (LAYOUT[0],)).to_meta()
    head = list(TASKS_HEAD.unpack_from(plain))
    extra = json.dumps(extras).encode()
    head[-1] = len(extra)
    return Tasks.from_meta(TASKS_HEAD.pack(*head) + plain[TASKS_HEAD.size:] + extra)


def read(kind: Kind, meta: Any) -> Any:
    """The body of a JSON meta; for TASKS, `meta` is the JSON part of its binary meta."""
    return read_tasks_extras(meta) if kind is Kind.TASKS else messages.BODIES[kind](meta)


def test_the_json_part_of_a_batch_is_what_it_was() -> None:
    meta = TASKS.to_meta()
    assert meta.endswith(json.dumps(TASKS_EXTRAS, separators=(",", ":")).encode())
    assert read_tasks_extras(TASKS_EXTRAS).replace(tasks=(), layout=(), functions=()) == TASKS.replace(
        tasks=(), layout=(), functions=())


@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_a_body_travels_as_the_json_lucidity_sent_before(case: tuple[Any, list[bytes], dict[str, Any]]) -> None:
    body, _, wire = case
    dumped = json.dumps(body.to_meta(), separators=(",", ":"))
    assert dumped == json.dumps(wire, separators=(",", ":"))  # the same keys, in the same order


@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_a_body_round_trips_through_its_meta(case: tuple[Any, list[bytes], dict[str, Any]]) -> None:
    body, _, wire = case
    assert messages.BODIES[body.KIND](copy.deepcopy(wire)) == body
    assert messages.BODIES[body.KIND](body.to_meta()) == body


@pytest.mark.parametrize("case", [(body, payload) for body, payload, _ in VALID] + BATCHES, ids=case_id)
def test_a_body_round_trips_through_the_wire(case: tuple[Any, list[bytes]]) -> None:
    body, payload = case
    message = protocol.decode(messages.encode(body, payload), frozenset({body.KIND}))
    assert message.kind is body.KIND
    assert messages.parse(message) == body
    assert [bytes(frame) for frame in message.payload] == payload


def test_a_batch_splits_its_payload_by_what_each_frame_carries() -> None:
    message = protocol.decode(messages.encode(TASKS, [b"helpers", b"app", b"function", *ITEM_FRAMES]),
                              frozenset({Kind.TASKS}))
    parts = Tasks.from_meta(message.meta).split(message.payload)
    assert [bytes(frame) for frame in parts.modules] == [b"helpers"]
    assert bytes(parts.main) == b"app"
    assert [bytes(frame) for frame in parts.functions] == [b"function"]
    assert [[bytes(buffer) for buffer in item] for item in parts.items] == [[b"first task"], [b"call", b"buffer"]]
    results = Results.from_meta(RESULTS.to_meta()).split(ITEM_FRAMES)
    assert [[bytes(buffer) for buffer in item] for item in results] == [[b"first task"], [b"call", b"buffer"]]


@pytest.mark.parametrize("payload", [[b"helpers", b"app"], [b"helpers", b"app", b"function"],
                                     [b"helpers", b"app", b"function", *ITEM_FRAMES, b"one more"]],
                         ids=["no function", "no tasks", "a frame too many"])
def test_a_batch_whose_frames_do_not_add_up_is_refused(payload: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        TASKS.split(payload)


def test_enums_are_their_strings_on_the_wire() -> None:
    assert json.dumps([TaskMode.STARMAP, ResultStatus.ERROR, FailureReason.CPU]) == '["starmap", "error", "cpu"]'
    assert Tasks.from_meta(TASKS.to_meta()).tasks[1].mode is TaskMode.CALL
    assert Results.from_meta(RESULTS.to_meta()).results[0].status is ResultStatus.OK


def test_absent_optional_fields_take_their_defaults() -> None:
    assert NodeEntry.from_meta({"name": "n", "address": "ipc:///n", "processes": 1, "instance": "i"}) == \
        NodeEntry("n", "ipc:///n", 1, "i", 0, "")
    assert Module.from_meta({"name": "m", "found": False}).reason == "the client cannot find it"
    assert MainEntry.from_meta({"argv": []}) == MainEntry(())


# -- malformed bodies ----------------------------------------------------------------------------------------

#: Each malformed body by name: the kind and its meta (for TASKS, the JSON part of its binary meta).
MALFORMED: dict[str, tuple[Kind, Any]] = {
    # tests/test_malformed.py: what a buggy or hostile client sends a worker
    "CANCEL holding lists": (Kind.CANCEL, {"tasks": [[1], [2]]}),
    "CANCEL holding objects": (Kind.CANCEL, {"tasks": [{"a": 1}]}),
    "CANCEL of a string": (Kind.CANCEL, {"tasks": "all"}),
    "WITHDRAW of a string": (Kind.WITHDRAW, {"tasks": "all"}),
    "WITHDRAW holding a float": (Kind.WITHDRAW, {"tasks": [1.5]}),
    "ship entries that are not objects": (Kind.TASKS, {"ship": [1, 2]}),
    "DROP of a number": (Kind.DROP, {"client": 5}),
    # tests/test_protocol_limits.py: integers beyond 64 bits, NaN and Infinity
    "an infinite limit": (Kind.TASK_FAILED, dict(CRASH.to_meta(), reason="cpu", limit=math.inf)),
    # what else the checks that moved here refused
    "a reason that is no reason": (Kind.TASK_FAILED, dict(CRASH.to_meta(), reason="bored")),
    "a role that is no role": (Kind.STATUS_REPLY, dict(NODE_STATUS.to_meta(), role="worker")),
    "a client id of 31 digits": (Kind.HELLO, {"client": "0" * 31}),
    "a client id in capitals": (Kind.BYE, {"client": "A" * 32}),
    "a heartbeat of another client id": (Kind.HEARTBEAT, {"client": "not a client"}),
    "modules that map names to numbers": (Kind.TASKS, {"modules": {"helpers": 1}}),
    "a main entry that is a list": (Kind.TASKS, {"main": ["app.py"]}),
    "an argv of numbers": (Kind.TASKS, {"main": {"argv": [1, 2]}}),
    "a shipped module without a filename": (Kind.TASKS, {"ship": [{"name": "m", "found": True, "digest": "d"}]}),
    "a module that neither was nor was not found": (Kind.MODULE, {"name": "m"}),
    "missing digests that are not strings": (Kind.MISSING, {"tasks": [1], "digests": [None]}),
    "a node entry that is a string": (Kind.NODES, {"nodes": ["n1"], "instance": "c", "seq": 1, "full": True,
                                                   "left": []}),
    "a change numbered -1": (Kind.NODES, {"nodes": [], "instance": "c", "seq": -1, "full": False, "left": []}),
    "nodes left that are numbers": (Kind.NODES, {"nodes": [], "instance": "c", "seq": 1, "full": False,
                                                 "left": [1]}),
    "a WATCH numbered without a control node": (Kind.WATCH, {"seq": 3}),
    "a beat with a negative load": (Kind.BEAT, {"name": "n1", "instance": "i", "running": -1}),
    "a worker entry without a pid": (Kind.WORKERS, {"node": "n1", "workers": [{"id": "1", "address": "ipc:///w"}]}),
    "a negative pid": (Kind.WORKERS, {"node": "n1", "workers": [{"id": "1", "pid": -1, "address": "ipc:///w"}]}),
    "a negative signal": (Kind.TASK_FAILED, dict(CRASH.to_meta(), signal=-11)),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_body_is_refused_and_left_untouched(name: str) -> None:
    kind, meta = MALFORMED[name]
    before = copy.deepcopy(meta)
    with pytest.raises(ProtocolError):
        read(kind, meta)
    assert repr(meta) == repr(before)  # repr: NaN is not equal to itself


#: The JSON types a field of each kind may hold ("absent" if it may be missing, None for null), by path from
#: the meta down: the fields of list entries are named after the list's first entry (index 0).
FIELD_TYPES: dict[Kind, dict[tuple[Any, ...], set[Any]]] = {
    Kind.JOIN: {("name",): {str}, ("address",): {str}, ("processes",): {int}, ("instance",): {str},
                ("running",): {int, None, "absent"}, ("host",): {str, None, "absent"}},
    Kind.BEAT: {("name",): {str}, ("instance",): {str}, ("running",): {int}},
    Kind.WELCOME: {("instance",): {str}, ("rejoin",): {bool}},
    Kind.WATCH: {("instance",): {str}, ("seq",): {int, None, "absent"}},
    Kind.HEARTBEAT: {("client",): {str, None, "absent"}},
    Kind.LEAVE: {("name",): {str}},
    Kind.NODES: {("nodes",): {list}, ("nodes", 0): {dict}, ("nodes", 0, "name"): {str},
                 ("nodes", 0, "address"): {str}, ("nodes", 0, "processes"): {int}, ("nodes", 0, "instance"): {str},
                 ("nodes", 0, "running"): {int, None, "absent"}, ("nodes", 0, "host"): {str, None, "absent"},
                 ("instance",): {str}, ("seq",): {int}, ("full",): {bool}, ("left",): {list}, ("left", 0): {str}},
    Kind.HELLO: {("client",): {str}},
    Kind.WORKERS: {("node",): {str}, ("workers",): {list}, ("workers", 0): {dict}, ("workers", 0, "id"): {str},
                   ("workers", 0, "pid"): {int}, ("workers", 0, "address"): {str}},
    Kind.TASK_FAILED: {("task",): {int}, ("pid",): {int}, ("node",): {str}, ("worker",): {str}, ("reason",): {str},
                       ("message",): {str}, ("exit_code",): {int, None, "absent"}, ("signal",): {int, None, "absent"},
                       ("stderr",): {str, None, "absent"}},
    Kind.ABANDON: {("client",): {str}},
    Kind.BYE: {("client",): {str}},
    Kind.DROP: {("client",): {str}},
    Kind.STATUS_REPLY: {("role",): {str}, ("name",): {str}, ("address",): {str}, ("instance",): {str},
                        ("memory_limit",): {int, None, "absent"}, ("processes",): {int}, ("workers",): {list},
                        ("workers", 0): {dict}, ("workers", 0, "pid"): {int}, ("workers", 0, "address"): {str},
                        ("workers", 0, "state"): {str}, ("workers", 0, "rss"): {int},
                        ("workers", 0, "tasks_done"): {int}, ("workers", 0, "task"): {int, None, "absent"},
                        ("workers", 0, "peak"): {int}, ("workers", 0, "cap"): {int, None, "absent"},
                        ("clients",): {int}, ("tasks_done",): {int}, ("tasks_crashed",): {int}, ("running",): {int},
                        ("tasks_by_outcome",): {dict, None, "absent"}, ("tasks_by_outcome", "ok"): {int, "absent"},
                        ("tasks_by_outcome", "error"): {int, "absent"}, ("tasks_by_outcome", "crashed"): {int, "absent"},
                        ("kills_by_reason",): {dict, None, "absent"}, ("kills_by_reason", "memory"): {int, "absent"},
                        ("kills_by_reason", "cpu"): {int, "absent"}, ("recent_failures",): {list, "absent"},
                        ("recent_failures", 0): {dict}, ("recent_failures", 0, "time"): {int, float},
                        ("recent_failures", 0, "task"): {int}, ("recent_failures", 0, "pid"): {int},
                        ("recent_failures", 0, "reason"): {str}, ("recent_failures", 0, "message"): {str}},
    # TASKS: the JSON part of its binary meta (tests/unit/test_batches.py has the rest; RESULTS has none)
    Kind.TASKS: {("ship",): {list, "absent"},
                 ("ship", 0): {dict}, ("ship", 0, "name"): {str}, ("ship", 0, "found"): {bool},
                 ("ship", 0, "package"): {bool, None, "absent"}, ("ship", 0, "filename"): {str},
                 ("ship", 0, "digest"): {str}, ("main",): {dict, None, "absent"}, ("main", "argv"): {list},
                 ("main", "argv", 0): {str}, ("main", "start"): {str, None, "absent"},
                 ("main", "filename"): {str, None, "absent"}, ("main", "digest"): {str, None, "absent"},
                 ("main", "package"): {str, None, "absent"}, ("modules",): {dict, None, "absent"},
                 ("modules", "helpers"): {str, "absent"}},
    Kind.CANCEL: {("tasks",): {list}, ("tasks", 0): {int}},
    Kind.WITHDRAW: {("tasks",): {list}, ("tasks", 0): {int}},
    Kind.MISSING: {("tasks",): {list}, ("tasks", 0): {int}, ("digests",): {list}, ("digests", 0): {str},
                   ("main",): {bool, None, "absent"}},
    Kind.FETCH: {("module",): {str}},
    Kind.MODULE: {("name",): {str}, ("found",): {bool}, ("package",): {bool, None, "absent"}, ("filename",): {str},
                  ("digest",): {str}},
    Kind.REFUSED: {("reason",): {str}},
}
#: A value of each JSON type.
SAMPLES = {None: None, bool: True, int: 7, float: 1.5, str: "text", list: [], dict: {}}


def valid_meta(kind: Kind) -> dict[str, Any]:
    """The fullest valid meta of the kind (the first in VALID: the one with every optional field)."""
    if kind is Kind.TASKS:
        return copy.deepcopy(TASKS_EXTRAS)
    return copy.deepcopy(next(wire for body, _, wire in VALID if body.KIND is kind))


def with_value(meta: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    meta = copy.deepcopy(meta)
    container: Any = meta
    for step in path[:-1]:
        container = container[step]
    if value == "absent":
        del container[path[-1]]
    else:
        container[path[-1]] = value
    return meta


def wrong_fields() -> Iterator[tuple[str, Kind, dict[str, Any]]]:
    for kind, fields in FIELD_TYPES.items():
        meta = valid_meta(kind)
        for path, allowed in fields.items():
            for json_type, sample in SAMPLES.items():
                if json_type not in allowed:
                    yield f"{kind.name} {'.'.join(map(str, path))} = {json.dumps(sample)}", kind, with_value(
                        meta, path, sample)
            if "absent" not in allowed and type(path[-1]) is str:
                yield f"{kind.name} {'.'.join(map(str, path))} absent", kind, with_value(meta, path, "absent")


WRONG_FIELDS = list(wrong_fields())


def test_every_field_of_every_kind_is_named_for_the_type_checks() -> None:
    def paths(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        if path:
            yield path
        if isinstance(value, dict):
            for key, item in value.items():
                yield from paths(item, (*path, key))
        elif isinstance(value, list) and value and path[-1] != "n":  # a layout entry is one value
            for index in {0, len(value) - 1} if isinstance(value[-1], dict) else {0}:
                yield from paths(value[index], (*path, index))

    for kind, fields in FIELD_TYPES.items():
        named = {path if path[1:2] != (1,) else (path[0], 0, *path[2:]) for path in fields}
        found = {path if path[1:2] != (1,) else (path[0], 0, *path[2:]) for path in paths(valid_meta(kind), ())}
        assert found <= named, f"{kind.name}: fields without a type check here: {found - named}"


@pytest.mark.parametrize("name, kind, meta", WRONG_FIELDS, ids=[name for name, _, _ in WRONG_FIELDS])
def test_a_field_of_the_wrong_type_is_refused(name: str, kind: Kind, meta: dict[str, Any]) -> None:
    before = copy.deepcopy(meta)
    with pytest.raises(ProtocolError):
        read(kind, meta)
    assert meta == before


@pytest.mark.parametrize("name, kind, meta", WRONG_FIELDS, ids=[name for name, _, _ in WRONG_FIELDS])
def test_the_error_names_the_field(name: str, kind: Kind, meta: dict[str, Any]) -> None:
    field = name.split()[1].split(".")
    words = [part for part in field if not part.isdigit()]
    with pytest.raises(ProtocolError, match="|".join(repr(word) for word in words[-1:])):
        read(kind, meta)


def test_a_bad_body_in_a_valid_envelope_passes_decode_and_fails_parse() -> None:
    """decode checks the envelope; the body is parse's (or from_meta's) to check."""
    frames = protocol.encode(Kind.TASK_FAILED, dict(CRASH.to_meta(), reason="bored"))
    message = protocol.decode(frames, frozenset({Kind.TASK_FAILED}))
    with pytest.raises(ProtocolError, match="'reason'"):
        messages.parse(message)


def test_slices_are_the_envelopes_and_never_reach_a_body() -> None:
    source = bytes(range(256)) * (3 * protocol.MAX_FRAME_BYTES // 256 + 1)
    frames = messages.encode(SHIPPED, [source])
    assert len(frames) > 3 and b"_slices" in bytes(frames[1])
    message = protocol.decode(frames, frozenset({Kind.MODULE}))
    assert "_slices" not in message.meta and messages.parse(message) == SHIPPED
    assert [bytes(frame) for frame in message.payload] == [source]
