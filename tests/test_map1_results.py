"""`Results.read`, the client's one-pass reading of a RESULTS batch, against `from_meta` and `split`.

The client's I/O thread reads a batch of tiny results in one pass (`lucidity.messages.batches.Results.read`)
instead of making a `ResultEntry`, a layout entry and a list of frames per result first. It must read what
`from_meta` and `split` read, and refuse what they refuse: here for batches of every shape, and for many
random corruptions of the meta and of the payload. No process, no socket.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from lucidity import protocol
from lucidity.errors import ProtocolError
from lucidity.messages import ResultEntry, Results, ResultStatus
from lucidity.messages.batches import RESULT, RESULTS_HEAD

OK, ERROR = ResultStatus.OK, ResultStatus.ERROR


def batch(items: list[list[bytes]], statuses: list[ResultStatus]) -> tuple[bytes, list[Any]]:
    """A RESULTS meta and payload as a worker writes them."""
    layout, frames = protocol.pack_items(items)
    entries = tuple(ResultEntry(100 + number, status, 0.001 * number) for number, status in enumerate(statuses))
    return Results(entries, tuple(layout)).to_meta(), frames


def the_long_way(meta: bytes, payload: list[Any]) -> list[tuple[int, ResultStatus, float, list[bytes]]]:
    body = Results.from_meta(meta)
    return [(entry.id, entry.status, entry.seconds, [bytes(frame) for frame in frames])
            for entry, frames in zip(body.results, body.split(payload))]


def read(meta: bytes, payload: list[Any]) -> list[tuple[int, ResultStatus, float, list[bytes]]]:
    return [(task_id, status, seconds, [bytes(frame) for frame in frames])
            for task_id, status, seconds, frames in Results.read(meta, payload)]


SHAPES = {
    "packed": [[b"r%d" % n] for n in range(40)],
    "one": [[b"alone"]],
    "empty items": [[b""], [b""], [b"x"]],
    "out of band": [[b"head", b"buffer-1", b"buffer-2"], [b"small"], [b"x" * (protocol.PACK_LIMIT + 1)]],
    "none": [],
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_read_reads_what_from_meta_and_split_read(shape: str) -> None:
    items = SHAPES[shape]
    meta, payload = batch(items, [OK if n % 3 else ERROR for n in range(len(items))])
    assert read(meta, payload) == the_long_way(meta, payload)
    assert [frames for *_, frames in read(meta, payload)] == items


def test_a_packed_item_outside_its_frame_or_a_frame_too_many_is_refused() -> None:
    meta, payload = batch(SHAPES["packed"], [OK] * 40)
    with pytest.raises(ProtocolError, match="outside its frame"):
        Results.read(meta, [payload[0][:-1]])
    with pytest.raises(ProtocolError, match="more than announced"):
        Results.read(meta, [*payload, b"extra"])
    with pytest.raises(ProtocolError):
        Results.read(meta, [])


@pytest.mark.parametrize("field, value, says", [
    (0, -1, "'id'"), (1, 2, "'status'"), (2, -0.5, "'t'"), (2, float("nan"), "'t'"), (3, -2, "'n'"), (4, -1, "'n'"),
])
def test_an_entry_out_of_range_is_refused_as_from_meta_refuses_it(field: int, value: Any, says: str) -> None:
    meta, payload = batch(SHAPES["packed"], [OK] * 40)
    rows = [list(row) for row in RESULT.iter_unpack(meta[RESULTS_HEAD.size:])]
    rows[17][field] = value
    bad = meta[:RESULTS_HEAD.size] + b"".join(RESULT.pack(*row) for row in rows)
    with pytest.raises(ProtocolError, match=says) as long_way:
        Results.from_meta(bad)
    with pytest.raises(ProtocolError) as raised:
        Results.read(bad, payload)
    assert str(raised.value) == str(long_way.value)


def test_random_corruption_is_refused_or_read_as_the_long_way_reads_it() -> None:
    rng = random.Random(1301)
    refused = 0
    for _ in range(3000):
        items = [[bytes([rng.randrange(256)]) * rng.randrange(4)] for _ in range(rng.randrange(1, 12))]
        meta, payload = batch(items, [rng.choice([OK, ERROR]) for _ in items])
        damaged = bytearray(meta)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.2:
            damaged = damaged[:rng.randrange(len(damaged))]
        corrupt = bytes(damaged)
        try:
            expected = the_long_way(corrupt, payload)
        except ProtocolError as exc:
            with pytest.raises(ProtocolError) as raised:
                read(corrupt, payload)
            assert str(raised.value) == str(exc)
            refused += 1
            continue
        assert read(corrupt, payload) == expected
    assert refused > 1000  # most corruption is caught; the rest changes a value within its range


def test_a_count_that_does_not_add_up_is_refused() -> None:
    meta, payload = batch(SHAPES["packed"], [OK] * 40)
    wrong = struct.pack("<BI", 0, 41) + meta[RESULTS_HEAD.size:]
    with pytest.raises(ProtocolError, match="41 results"):
        Results.read(wrong, payload)
