"""lucidity.protocol through its public functions: encode/decode round trips, what decode refuses, and
pack_items/unpack_items. Assertions are on behaviour (what comes back, which error), not on the framing,
except for the first byte of a binary meta (TASKS, RESULTS), which is the protocol's own."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from lucidity.errors import ProtocolError, VersionMismatch
from lucidity.protocol import (BINARY_KINDS, BINARY_SLICED, MAX_FRAME_BYTES, VERSION, Kind, Message, decode, encode,
                               pack_items, unpack_items)

CLIENT = uuid.uuid4().hex
#: A valid meta for a few JSON kinds, with the fields each requires.
METAS: dict[Kind, dict[str, Any]] = {
    Kind.JOIN: {"name": "n1", "address": "tcp://127.0.0.1:4000", "processes": 2, "instance": "i-1"},
    Kind.HEARTBEAT: {},
    Kind.HELLO: {"client": CLIENT},
    Kind.MISSING: {"tasks": [1], "digests": ["ab"], "extra": "kept"},
    Kind.MODULE: {"name": "m", "found": True, "package": False, "filename": "m.py", "digest": "d"},
    Kind.TASK_FAILED: {"task": 7, "reason": "crashed", "message": "worker 1 died"},
    Kind.STATUS_REPLY: {"role": "node", "nodes": [{"workers": [{"pid": 1}]}]},
}


def round_trip(kind: Kind, meta: dict[str, Any], payload: list[Any] = []) -> Message:
    return decode(encode(kind, meta, payload), frozenset({kind}))


@pytest.mark.parametrize("kind", list(METAS), ids=lambda kind: kind.name)
def test_a_message_comes_back_as_it_was_sent(kind: Kind) -> None:
    message = round_trip(kind, METAS[kind], [b"first", memoryview(b"second")])
    assert message.kind is kind
    assert message.meta == METAS[kind]
    assert [bytes(frame) for frame in message.payload] == [b"first", b"second"]


def test_payload_frames_are_passed_through_not_copied() -> None:
    buffer = bytearray(b"x" * 1000)
    frames = encode(Kind.MODULE, METAS[Kind.MODULE], [buffer])
    assert frames[-1] is buffer
    assert encode(Kind.RESULTS, b"\0binary", [buffer])[-1] is buffer


def test_a_payload_frame_of_megabytes_comes_back_whole_and_writable() -> None:
    big = bytes(range(256)) * (3 * 2**20 // 256 + 7)  # a few MiB, not a multiple of any power of two
    message = round_trip(Kind.MODULE, METAS[Kind.MODULE], [b"small", big, b"after"])
    assert [bytes(frame) for frame in message.payload] == [b"small", big, b"after"]
    assert message.meta == METAS[Kind.MODULE]  # the protocol's own bookkeeping is not left in the meta
    view = memoryview(message.payload[1])
    assert not view.readonly


# -- binary metas (TASKS, RESULTS) ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(BINARY_KINDS), ids=lambda kind: kind.name)
def test_a_binary_meta_comes_back_as_it_was_sent(kind: Kind) -> None:
    message = round_trip(kind, b"\0any body", [b"first", memoryview(b"second")])
    assert message == Message(kind, b"\0any body", message.payload)
    assert [bytes(frame) for frame in message.payload] == [b"first", b"second"]


def test_a_binary_meta_with_a_large_frame_carries_its_slice_table_and_comes_back_as_sent() -> None:
    big = bytes(range(256)) * (2 * MAX_FRAME_BYTES // 256 + 3)
    frames = encode(Kind.TASKS, b"\0body", [b"small", big, big, b"after"])
    assert frames[1][0] == BINARY_SLICED and len(frames) == 2 + 2 + 3 + 3
    message = decode(frames, frozenset({Kind.TASKS}))
    assert message.meta == b"\0body"
    assert [bytes(frame) for frame in message.payload] == [b"small", big, big, b"after"]
    whole = encode(Kind.TASKS, b"\0body", [big], sliced=False)
    assert whole[1] == b"\0body" and len(whole) == 3


@pytest.mark.parametrize("meta, says", [
    (b"\1", "slice table"), (b"\1\1\0\0", "slice table"), (b"\1\2\0\0\0" + bytes(12), "ends inside"),
    (b"\1\0\0\0\0\0body", "_slices"), (b"\1\1\0\0\0" + bytes(8) + b"\0body", "_slices"),
    (b"\1\1\0\0\0\0\0\0\0\5\0\0\0\0body", "_slices"),
], ids=["no count", "a short count", "a short table", "no slices", "a count of 0", "more slices than frames"])
def test_a_binary_slice_table_that_does_not_add_up_is_refused(meta: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        decode([bytes((VERSION, Kind.RESULTS)), meta, b"a", b"b"], frozenset({Kind.RESULTS}))


def test_any_other_binary_meta_is_left_to_its_body_to_refuse() -> None:
    """A receiver that reads a bad body answers it (a client fails the tasks of a worker whose RESULTS it
    cannot read); one that decode refused could not."""
    for meta in (b"", b"\2", b'{"results": []}'):
        assert decode([bytes((VERSION, Kind.RESULTS)), meta], frozenset({Kind.RESULTS})).meta == meta


def test_a_meta_of_the_wrong_form_for_its_kind_is_not_sent() -> None:
    with pytest.raises(ValueError, match="binary"):
        encode(Kind.TASKS, {"client": CLIENT})
    with pytest.raises(ValueError, match="binary"):
        encode(Kind.HELLO, b"\0")
    with pytest.raises(ValueError, match="binary"):
        encode(Kind.RESULTS, b"\1")  # the slice table is the protocol's to write


def test_a_message_without_payload() -> None:
    assert round_trip(Kind.HEARTBEAT, {}) == Message(Kind.HEARTBEAT, {}, [])


def frames_with(header: bytes = bytes((VERSION, Kind.HELLO)), meta: bytes = json.dumps({"client": CLIENT}).encode(),
                *payload: bytes) -> list[bytes]:
    return [header, meta, *payload]


@pytest.mark.parametrize("frames, says", [
    ([], "frame"),
    ([bytes((VERSION, Kind.HELLO))], "frame"),
    (frames_with(header=bytes((VERSION,))), "header"),
    (frames_with(header=bytes((VERSION, Kind.HELLO, 0))), "header"),
    (frames_with(header=bytes((VERSION, 250))), "unknown message kind 250"),
    (frames_with(header=bytes((VERSION, Kind.JOIN))), "JOIN is not accepted"),
    (frames_with(meta=b"not json"), "not valid JSON"),
    (frames_with(meta=b"\xff\xfe"), "not valid JSON"),
    (frames_with(meta=b"[1, 2]"), "not an object"),
    (frames_with(meta=b'{"client": "%s", "x": NaN}' % CLIENT.encode()), "NaN"),
], ids=["no frames", "one frame", "short header", "long header", "unknown kind", "kind not accepted", "bad JSON",
        "bad UTF-8", "meta a list", "NaN"])
def test_decode_names_what_is_wrong(frames: list[bytes], says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        decode(frames, frozenset({Kind.HELLO}))


def test_another_version_is_a_version_mismatch_naming_it() -> None:
    with pytest.raises(VersionMismatch, match=f"protocol version 99 .*this is version {VERSION}") as caught:
        decode(frames_with(header=bytes((99, Kind.HELLO))), frozenset({Kind.HELLO}))
    assert isinstance(caught.value, ProtocolError)


def test_the_body_is_not_decodes_to_check() -> None:
    """A missing or mistyped field passes the envelope check: `lucidity.messages` refuses it (its tests show
    each field of each kind), so the two checks never drift apart."""
    for meta in (b"{}", b'{"client": 3}', b'{"client": "zz-not-hex"}'):
        assert decode(frames_with(meta=meta), frozenset({Kind.HELLO})).meta == json.loads(meta)


def test_integers_beyond_64_bits_and_deep_nesting_are_refused() -> None:
    with pytest.raises(ProtocolError):
        round_trip(Kind.TASK_FAILED, dict(METAS[Kind.TASK_FAILED], extra=2**64))
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ProtocolError):
        round_trip(Kind.TASK_FAILED, dict(METAS[Kind.TASK_FAILED], extra=deep))
    assert round_trip(Kind.TASK_FAILED, dict(METAS[Kind.TASK_FAILED], extra=2**63 - 1)).meta["extra"] == 2**63 - 1


# -- pack_items / unpack_items ------------------------------------------------------------------------------

def unpacked(items: list[list[bytes]]) -> list[list[bytes]]:
    layout, frames = pack_items(items)
    # The layout travels in the meta: it must survive JSON.
    return [[bytes(buffer) for buffer in item] for item in unpack_items(json.loads(json.dumps(layout)), frames)]


def test_items_come_back_in_order_whatever_their_shape() -> None:
    items = [[b"tiny"], [b""], [b"x" * 100_000], [b"call", b"buffer-1", b"buffer-2"], [b"last"]]
    assert unpacked(items) == items


def test_many_tiny_items_travel_in_one_frame() -> None:
    items = [[f"task {i}".encode()] for i in range(1000)]
    layout, frames = pack_items(items)
    assert len(frames) == 1
    assert unpacked(items) == items


def test_a_lone_item_keeps_its_frames_uncopied() -> None:
    frame = bytearray(b"an apply's one task")
    layout, frames = pack_items([[frame]])
    assert frames[0] is frame
    assert unpacked([[b"tiny"]]) == [[b"tiny"]] and unpacked([[b"a", b"b"]]) == [[b"a", b"b"]]


def test_no_items() -> None:
    assert pack_items([]) == ([], [])
    assert unpack_items([], []) == []


@pytest.mark.parametrize("layout, frames, says", [
    ([2], [b"only one"], "more frames than it carries"),
    ([[0, 10]], [b"short"], "outside its frame"),
    ([1], [b"one", b"two"], "more than announced"),
    (["x"], [b"a"], "bad item layout entry"),
    ([0], [], "bad item layout entry"),
    ([[0, -1]], [b"a"], "bad item layout entry"),
    ([[0, 1, 2]], [b"abc"], "bad item layout entry"),
], ids=["too few frames", "outside the packed frame", "frames left over", "a string", "zero frames",
        "negative length", "three numbers"])
def test_a_layout_that_does_not_add_up_is_a_protocol_error(layout: list[Any], frames: list[bytes], says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        unpack_items(layout, frames)
