"""lucidity.messages.batches: the binary meta of TASKS and RESULTS (protocol version 7).

The layout byte for byte (two metas written out by hand), round trips of every field, and every way a meta
can be wrong: cut short or too long, counts that do not add up, numbers outside their range (the bits of
2**63 and beyond read as negative), enum values that name nothing, strings that are not UTF-8, a JSON part
that is not a JSON object within the limits, and random corruption, which must end in ProtocolError or a
body that round-trips, never another exception. The round trips of every kind, and the JSON part's fields
one by one, are in tests/unit/test_messages.py.
"""

from __future__ import annotations

import json
import math
import pathlib
import random
import struct
import uuid
from typing import Any, Optional

import pytest

from lucidity import messages, protocol
from lucidity.errors import ProtocolError
from lucidity.messages import MainEntry, Module, ResultEntry, Results, ResultStatus, TaskMode, Tasks, TaskSpec
from lucidity.messages.batches import FULL_TASK, NO_STRING, PLAIN_TASK, RESULT, RESULTS_HEAD, TASKS_HEAD
from lucidity.protocol import Kind

CLIENT = uuid.uuid4().hex
DIGEST = "0123456789abcdef01234567"  # as serialization.digest writes one: 24 hex digits
INIT = "fedcba9876543210fedcba98"
LAYOUT, ITEM_FRAMES = protocol.pack_items([[b"first task"], [b"call", b"buffer"]])
PLAIN = Tasks(CLIENT, (DIGEST,), (TaskSpec(1, DIGEST, TaskMode.MAP), TaskSpec(2, DIGEST, TaskMode.STARMAP)),
              tuple(LAYOUT))
FULL = Tasks(CLIENT, (DIGEST, INIT), (TaskSpec(1, DIGEST, TaskMode.MAP),
                                     TaskSpec(2, DIGEST, TaskMode.CALL, INIT, 3, "pool-1", 2 ** 20, 1.5, 0.5)),
             tuple(LAYOUT), (Module("helpers", True, False, "/app/helpers.py", "h" * 64),),
             MainEntry(("app.py",), "fork"), {"helpers": "h" * 64})
RESULTS = Results((ResultEntry(1, ResultStatus.OK, 0.000125), ResultEntry(2, ResultStatus.ERROR, 2.5)),
                  tuple(LAYOUT))

HEAD_FIELDS = ("marker", "client", "entries", "strings", "functions", "tasks", "text", "extras")
TASK_FIELDS = ("id", "fn", "mode", "offset", "length", "init", "max", "pool", "mem", "timeout", "cpu")
RESULT_FIELDS = ("id", "status", "t", "offset", "length")


def head_of(meta: bytes) -> dict[str, Any]:
    return dict(zip(HEAD_FIELDS, TASKS_HEAD.unpack_from(meta)))


def with_head(meta: bytes, **changes: Any) -> bytes:
    return TASKS_HEAD.pack(*{**head_of(meta), **changes}.values()) + meta[TASKS_HEAD.size:]


def patched(meta: bytes, row: struct.Struct, names: tuple[str, ...], start: int, changes: dict[str, Any]) -> bytes:
    """`meta` with fields of the row at `start` changed; a signed field may be given an unsigned value (its
    bits), as a hostile peer can send them."""
    data = bytearray(meta)
    codes = row.format[1:]
    for name, value in changes.items():
        index = names.index(name)
        code = "Q" if codes[index] == "q" and value >= 2 ** 63 else codes[index]
        struct.pack_into("<" + code, data, start + struct.calcsize("<" + codes[:index]), value)
    return bytes(data)


def with_task(meta: bytes, index: int, **changes: Any) -> bytes:
    head = head_of(meta)
    row = FULL_TASK if head["entries"] else PLAIN_TASK
    return patched(meta, row, TASK_FIELDS, TASKS_HEAD.size + head["text"] + index * row.size, changes)


def with_result(meta: bytes, index: int, **changes: Any) -> bytes:
    return patched(meta, RESULT, RESULT_FIELDS, RESULTS_HEAD.size + index * RESULT.size, changes)


# ------------------------------------------------------------------------------------------------ layout

def test_a_plain_batch_is_written_as_the_layout_says() -> None:
    batch = Tasks(CLIENT, (DIGEST,), (TaskSpec(7, DIGEST, TaskMode.MAP),), ([0, 10],))
    expected = (b"\0" + bytes.fromhex(CLIENT) + b"\0" + struct.pack("<IIIII", 1, 1, 1, len(DIGEST), 0)
                + DIGEST.encode() + struct.pack("<qIBqq", 7, 0, 1, 0, 10))
    assert batch.to_meta() == expected
    assert Tasks.from_meta(expected) == batch


def test_results_are_written_as_the_layout_says() -> None:
    results = Results((ResultEntry(7, ResultStatus.ERROR, 0.5),), (2,))
    expected = struct.pack("<BI", 0, 1) + struct.pack("<qBdqq", 7, 1, 0.5, -1, 2)
    assert results.to_meta() == expected
    assert Results.from_meta(expected) == results


def test_a_function_shared_by_a_batch_is_written_once() -> None:
    layout, _ = protocol.pack_items([[b"x"]] * 100)
    batch = Tasks(CLIENT, (), tuple(TaskSpec(i, DIGEST, TaskMode.CALL) for i in range(100)), tuple(layout))
    meta = batch.to_meta()
    assert head_of(meta)["strings"] == 1 and meta.count(DIGEST.encode()) == 1
    assert len(meta) == TASKS_HEAD.size + len(DIGEST) + 100 * PLAIN_TASK.size
    assert Tasks.from_meta(meta) == batch


@pytest.mark.parametrize("batch", [PLAIN, FULL], ids=["plain", "with options"])
def test_a_batch_round_trips(batch: Tasks) -> None:
    meta = batch.to_meta()
    assert head_of(meta)["entries"] == (batch is FULL)
    assert Tasks.from_meta(meta) == batch
    assert Tasks.from_meta(meta).tasks[1].mode is batch.tasks[1].mode


def test_a_batch_of_nothing_round_trips() -> None:
    empty = Tasks(CLIENT, (), (), ())
    assert empty.to_meta() == TASKS_HEAD.pack(0, bytes.fromhex(CLIENT), 0, 0, 0, 0, 0, 0)
    assert Tasks.from_meta(empty.to_meta()) == empty


def test_strings_of_any_characters_round_trip() -> None:
    spec = TaskSpec(1, "digest-é", TaskMode.CALL, "init-😀", 2, "pool-ü", 0, 0.0, 0.0)
    batch = Tasks(CLIENT, ("digest-é",), (spec,), (1,))
    assert Tasks.from_meta(batch.to_meta()) == batch


def test_an_empty_initializer_is_none_and_a_pool_without_max_tasks_is_not_sent() -> None:
    spec = TaskSpec(1, DIGEST, TaskMode.CALL, "", 0, "pool-1", 0, 0.0, 0.0)
    [read] = Tasks.from_meta(Tasks(CLIENT, (), (spec,), (1,)).to_meta()).tasks
    assert read == TaskSpec(1, DIGEST, TaskMode.CALL)


def test_numbers_at_the_ends_of_their_ranges_round_trip() -> None:
    spec = TaskSpec(2 ** 63 - 1, DIGEST, TaskMode.CALL, None, 2 ** 63 - 1, "p", 2 ** 63 - 1, 1e9, 0.0)
    batch = Tasks(CLIENT, (), (spec,), ([2 ** 63 - 1, 0],))
    assert Tasks.from_meta(batch.to_meta()) == batch
    results = Results((ResultEntry(2 ** 63 - 1, ResultStatus.OK, 1e9), ResultEntry(0, ResultStatus.OK, 0.0)),
                      (2 ** 63 - 1, [0, 0]))
    assert Results.from_meta(results.to_meta()) == results


def test_a_full_batch_is_read() -> None:
    layout, _ = protocol.pack_items([[b"x"]] * 256)
    tasks = Tasks.from_meta(Tasks(CLIENT, (), tuple(TaskSpec(i, DIGEST, TaskMode.CALL) for i in range(256)),
                                  tuple(layout)).to_meta())
    assert [spec.id for spec in tasks.tasks] == list(range(256)) and list(tasks.layout) == layout
    results = Results.from_meta(Results(tuple(ResultEntry(i, ResultStatus.OK, 0.001) for i in range(256)),
                                        tuple(layout)).to_meta())
    assert [entry.id for entry in results.results] == list(range(256)) and list(results.layout) == layout


def test_what_does_not_fit_the_layout_is_not_sent() -> None:
    with pytest.raises(ValueError):
        Tasks("zz" * 16, (), (TaskSpec(1, DIGEST, TaskMode.CALL),), (1,)).to_meta()
    with pytest.raises(ValueError, match="NUL"):
        Tasks(CLIENT, (), (TaskSpec(1, "a\0b", TaskMode.CALL),), (1,)).to_meta()
    with pytest.raises(struct.error):
        Tasks(CLIENT, (), (TaskSpec(2 ** 63, DIGEST, TaskMode.CALL),), (1,)).to_meta()


# --------------------------------------------------------------------------------------------- malformed

def refused(read: Any, meta: Any, says: Optional[str] = None) -> None:
    with pytest.raises(ProtocolError, match=says):
        read(meta)


@pytest.mark.parametrize("body", [PLAIN, FULL, RESULTS], ids=["plain", "with options", "results"])
def test_a_meta_cut_short_or_too_long_is_refused(body: Any) -> None:
    meta = body.to_meta()
    for end in range(len(meta)):
        refused(type(body).from_meta, meta[:end])
    refused(type(body).from_meta, meta + b"\0", "bytes")


@pytest.mark.parametrize("changes, says", [
    ({"tasks": 3}, "announces"), ({"tasks": 1}, "announces"), ({"tasks": 2 ** 32 - 1}, "announces"),
    ({"strings": 2}, "strings"), ({"strings": 0}, "strings"), ({"functions": 3}, "functions among"),
    ({"text": 0}, "announces"), ({"extras": 5}, "announces"), ({"entries": 2}, "entry form"),
    ({"marker": 1}, "binary meta"), ({"marker": ord("{")}, "binary meta"),
], ids=lambda value: str(value))
def test_a_header_that_does_not_add_up_is_refused(changes: dict[str, Any], says: str) -> None:
    refused(Tasks.from_meta, with_head(PLAIN.to_meta(), **changes), says)


def test_the_count_of_results_must_add_up() -> None:
    meta = RESULTS.to_meta()
    for count in (0, 1, 3, 2 ** 32 - 1):
        refused(Results.from_meta, RESULTS_HEAD.pack(0, count) + meta[RESULTS_HEAD.size:], "announces")


@pytest.mark.parametrize("changes, says", [
    ({"id": 2 ** 63}, "'id'"), ({"id": 2 ** 64 - 1}, "'id'"), ({"fn": 1}, "'fn'"), ({"fn": 2 ** 32 - 1}, "'fn'"),
    ({"mode": 3}, "'mode'"), ({"mode": 255}, "'mode'"), ({"offset": -1, "length": 0}, "'n'"),
    ({"offset": -2, "length": 1}, "'n'"), ({"length": -1}, "'n'"), ({"offset": 2 ** 63}, "'n'"),
], ids=lambda value: str(value))
def test_a_plain_task_entry_out_of_range_is_refused(changes: dict[str, Any], says: str) -> None:
    meta = PLAIN.to_meta()
    refused(Tasks.from_meta, with_task(meta, 1, **changes), says)
    refused(Tasks.from_meta, with_task(meta, 1, **changes), r"entry \(1\)")  # names the entry


@pytest.mark.parametrize("changes, says", [
    ({"id": 2 ** 63}, "'id'"), ({"mode": 3}, "'mode'"), ({"fn": 99}, "'fn'"), ({"init": 99}, "'init'"),
    ({"max": 2 ** 63}, "'max'"), ({"pool": 99}, "'pool'"), ({"pool": NO_STRING}, "'pool'"),
    ({"mem": 2 ** 64 - 1}, "'mem'"), ({"timeout": math.nan}, "'timeout'"), ({"timeout": -1.0}, "'timeout'"),
    ({"timeout": 1e10}, "'timeout'"), ({"timeout": math.inf}, "'timeout'"), ({"cpu": math.nan}, "'cpu'"),
    ({"cpu": -math.inf}, "'cpu'"), ({"offset": -1, "length": 0}, "'n'"),
], ids=lambda value: str(value))
def test_a_task_entry_with_options_out_of_range_is_refused(changes: dict[str, Any], says: str) -> None:
    refused(Tasks.from_meta, with_task(FULL.to_meta(), 1, **changes), says)


@pytest.mark.parametrize("changes, says", [
    ({"id": 2 ** 63}, "'id'"), ({"id": 2 ** 64 - 1}, "'id'"), ({"status": 2}, "'status'"),
    ({"status": 255}, "'status'"), ({"t": math.nan}, "'t'"), ({"t": -0.5}, "'t'"), ({"t": math.inf}, "'t'"),
    ({"t": 1e10}, "'t'"), ({"offset": -1, "length": 0}, "'n'"), ({"offset": -5, "length": 5}, "'n'"),
    ({"length": -1}, "'n'"),
], ids=lambda value: str(value))
def test_a_result_entry_out_of_range_is_refused(changes: dict[str, Any], says: str) -> None:
    refused(Results.from_meta, with_result(RESULTS.to_meta(), 1, **changes), says)


def test_the_last_bad_entry_of_a_full_batch_refuses_the_whole_batch() -> None:
    layout, _ = protocol.pack_items([[b"x"]] * 256)
    meta = Tasks(CLIENT, (), tuple(TaskSpec(i, DIGEST, TaskMode.CALL) for i in range(256)), tuple(layout)).to_meta()
    refused(Tasks.from_meta, with_task(meta, 255, mode=9), r"\(255\) field 'mode'")


def test_strings_that_are_not_utf8_or_not_as_many_as_announced_are_refused() -> None:
    meta = PLAIN.to_meta()
    text = slice(TASKS_HEAD.size, TASKS_HEAD.size + len(DIGEST))
    refused(Tasks.from_meta, meta[:text.start] + b"\xff" * len(DIGEST) + meta[text.stop:], "UTF-8")
    refused(Tasks.from_meta, meta[:text.start] + b"\0" * len(DIGEST) + meta[text.stop:], "strings")


@pytest.mark.parametrize("extras, says", [
    (b"not json", "not valid JSON"), (b"[1, 2]", "not an object"), (b'{"main": NaN}', "not a number"),
    (b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}", "deeper than"), (b'{"x": 18446744073709551616}', "64 bits"),
    (b'{"ship": [1]}', "'ship'"), (b'{"main": {"argv": "app.py"}}', "'argv'"), (b'{"modules": [1]}', "'modules'"),
], ids=["not JSON", "a list", "NaN", "too deep", "2**64", "ship of numbers", "argv a string", "modules a list"])
def test_a_json_part_that_is_wrong_is_refused(extras: bytes, says: str) -> None:
    meta = with_head(PLAIN.to_meta(), extras=len(extras)) + extras
    refused(Tasks.from_meta, meta, says)


@pytest.mark.parametrize("read", [Tasks.from_meta, Results.from_meta], ids=["TASKS", "RESULTS"])
def test_a_meta_of_another_form_is_refused(read: Any) -> None:
    for meta in ({"results": []}, '{"client": "x"}', b'{"results": []}', b"", b"\x02" + bytes(100), None):
        refused(read, meta, "binary meta|shorter")


def test_random_corruption_ends_in_a_protocol_error_or_a_body_that_round_trips() -> None:
    rng = random.Random(13)
    refusals = 0
    for body in (PLAIN, FULL, RESULTS):
        meta = body.to_meta()
        for _ in range(1500):
            data = bytearray(meta)
            for _ in range(rng.choice((1, 1, 2, 5))):
                data[rng.randrange(len(data))] = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            try:
                read = type(body).from_meta(bytes(data))
            except ProtocolError:
                refusals += 1
                continue
            assert type(body).from_meta(read.to_meta()) == read
    assert refusals > 1000  # most corruption is caught; the rest changes a value within its range


# ------------------------------------------------------------------------------------------------ the wire

def test_a_bad_batch_passes_decode_and_fails_parse() -> None:
    """decode checks the envelope; the body is parse's (or from_meta's) to check: a receiver that answers a
    bad body (a worker REFUSED, a client failing a worker's tasks) gets to answer it."""
    frames = protocol.encode(Kind.TASKS, with_task(PLAIN.to_meta(), 0, mode=7), ITEM_FRAMES)
    with pytest.raises(ProtocolError, match="'mode'"):
        messages.parse(protocol.decode(frames, frozenset({Kind.TASKS})))
    json_results = [bytes((protocol.VERSION, Kind.RESULTS)), json.dumps({"results": []}).encode()]
    with pytest.raises(ProtocolError, match="binary meta"):
        messages.parse(protocol.decode(json_results, frozenset({Kind.RESULTS})))


def test_a_batch_with_a_large_frame_travels_sliced_and_comes_back_whole() -> None:
    big = bytes(range(256)) * (3 * protocol.MAX_FRAME_BYTES // 256 + 5)
    layout, frames = protocol.pack_items([[b"small"], [big]])
    batch = Tasks(CLIENT, (), (TaskSpec(1, DIGEST, TaskMode.CALL), TaskSpec(2, DIGEST, TaskMode.CALL)), tuple(layout))
    sent = messages.encode(batch, frames)
    assert len(sent) == 2 + 1 + 4 and sent[1][0] == protocol.BINARY_SLICED
    message = protocol.decode(sent, frozenset({Kind.TASKS}))
    assert message.meta == batch.to_meta() and messages.parse(message) == batch
    items = batch.split(message.payload).items
    assert [[bytes(buffer) for buffer in item] for item in items] == [[b"small"], [big]]


def test_the_benchmark_of_these_metas_runs_each_of_its_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/metas.py measures through the public API; this fails if that API moves under it."""
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[2]))
    from benchmarks import metas

    assert len(metas.OPERATIONS) == 8
    for name in metas.OPERATIONS:
        metas.operation(name)()
