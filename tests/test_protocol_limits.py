"""The wire format's limits (issue 11): payload frames sliced to `MAX_FRAME_BYTES` and joined again, and
meta that is too deep, or holds integers beyond 64 bits, refused with `ProtocolError` (never RecursionError).

Unit tests on `protocol.encode` / `protocol.decode` over a real inproc socket pair, then one test against
real daemons of a secured cluster.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest
import zmq

import lucidity
from lucidity import protocol, serialization
from lucidity.errors import ProtocolError, VersionMismatch
from lucidity.status import query_status
from lucidity.protocol import MAX_FRAME_BYTES, MAX_META_DEPTH, Kind
from lucidity.security import ClusterKeys, Role, secure_client

from conftest import CliCluster

ALL = frozenset(Kind)
SIZES = [0, 1, MAX_FRAME_BYTES - 1, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1, 2 * MAX_FRAME_BYTES,
         2 * MAX_FRAME_BYTES + 1, 5 * MAX_FRAME_BYTES - 3]


@pytest.fixture(scope="module")
def wire() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A PAIR of sockets: what `encode` returns is sent as the daemons send it, and received with copy=False."""
    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    sender.bind("inproc://protocol-limits")
    receiver.connect("inproc://protocol-limits")
    yield sender, receiver
    sender.close(0)
    receiver.close(0)
    context.term()


def across(wire: tuple[zmq.Socket, zmq.Socket], frames: list[Any]) -> list[zmq.Frame]:
    sender, receiver = wire
    for index, frame in enumerate(frames):
        sender.send(frame, zmq.SNDMORE if index < len(frames) - 1 else 0, copy=False)
    assert receiver.poll(5000)
    return receiver.recv_multipart(copy=False)


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def raw_message(kind: Kind, meta: bytes, *payload: bytes) -> list[bytes]:
    return [bytes((protocol.VERSION, kind)), meta, *payload]


# ------------------------------------------------------------------------------------------- slicing


@pytest.mark.parametrize("size", SIZES)
def test_a_payload_frame_of_any_size_round_trips(wire: Any, size: int) -> None:
    data = pattern(size, size)
    frames = protocol.encode(Kind.MODULE, {"results": []}, [b"head", data, b"tail"])
    assert all(protocol._frame_size(frame) <= MAX_FRAME_BYTES for frame in frames[2:])
    received = across(wire, frames)
    message = protocol.decode(received, ALL)
    assert message.meta == {"results": []}
    assert [bytes(frame) for frame in message.payload] == [b"head", data, b"tail"]
    sliced = size > MAX_FRAME_BYTES
    assert len(received) == 2 + 2 + (-(-size // MAX_FRAME_BYTES) if sliced else 1)
    assert isinstance(message.payload[1], protocol.JoinedFrame) == sliced


def test_slices_are_views_of_the_callers_buffer() -> None:
    data = pattern(3 * MAX_FRAME_BYTES + 5)
    frames = protocol.encode(Kind.MODULE, {"results": []}, [data])
    slices = frames[2:]
    assert len(slices) == 4 and all(isinstance(s, memoryview) and s.obj is data for s in slices)
    assert json.loads(frames[1]) == {"results": [], "_slices": [[0, 4]]}


def test_encode_leaves_the_callers_meta_alone_and_refuses_its_own_field() -> None:
    meta = {"results": []}
    protocol.encode(Kind.MODULE, meta, [bytes(MAX_FRAME_BYTES + 1)])
    assert meta == {"results": []}
    with pytest.raises(ValueError, match="_slices"):
        protocol.encode(Kind.MODULE, {"results": [], "_slices": 1}, [bytes(MAX_FRAME_BYTES + 1)])


def test_many_frames_of_mixed_sizes_keep_their_order(wire: Any) -> None:
    rng = random.Random(11)
    sizes = [rng.choice([0, 3, 4096, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1, 3 * MAX_FRAME_BYTES // 2,
                         2 * MAX_FRAME_BYTES]) for _ in range(40)]
    payload = [pattern(size, index) for index, size in enumerate(sizes)]
    message = protocol.decode(across(wire, protocol.encode(Kind.MODULE, {"results": []}, payload)), ALL)
    assert [bytes(frame) for frame in message.payload] == payload


def test_every_kind_of_buffer_is_sliced_without_loss(wire: Any) -> None:
    numpy = pytest.importorskip("numpy")
    base = pattern(2 * MAX_FRAME_BYTES + 100)
    array = numpy.frombuffer(base, dtype=numpy.uint8)[:2 * MAX_FRAME_BYTES].reshape(2, -1).view(numpy.float32)
    buffers = [base, bytearray(base), memoryview(base), zmq.Frame(base), pickle.PickleBuffer(base), array]
    message = protocol.decode(across(wire, protocol.encode(Kind.MODULE, {"results": []}, buffers)), ALL)
    for original, joined in zip(buffers, message.payload):
        assert isinstance(joined, protocol.JoinedFrame)
        assert memoryview(joined) == memoryview(original).cast("B")


def test_a_joined_frame_behaves_as_a_received_frame(wire: Any) -> None:
    """Writable, with .bytes and .buffer: what the worker and client do with a zmq.Frame works on it."""
    data = pattern(MAX_FRAME_BYTES + 10)
    joined = protocol.decode(across(wire, protocol.encode(Kind.MODULE, {"results": []}, [data])), ALL).payload[0]
    assert joined.bytes == data and isinstance(joined.bytes, bytes)
    assert joined.buffer.nbytes == len(data) and not joined.buffer.readonly
    assert protocol.unpack_items([1], [joined])[0][0] == data


def test_pickled_data_with_out_of_band_buffers_round_trips(wire: Any) -> None:
    numpy = pytest.importorskip("numpy")
    value = {"array": numpy.arange(3 * MAX_FRAME_BYTES // 8 + 3, dtype=numpy.float64), "small": b"x" * 10}
    layout, frames = protocol.pack_items([serialization.dumps(value)])
    message = protocol.decode(across(wire, protocol.encode(Kind.MODULE, {"results": [{"n": layout[0]}]}, frames)),
                              ALL)
    [item] = protocol.unpack_items([entry["n"] for entry in message.meta["results"]], message.payload)
    back = serialization.loads(item)
    assert numpy.array_equal(back["array"], value["array"]) and back["small"] == value["small"]
    assert back["array"].flags.writeable


@pytest.mark.parametrize("slices", [
    "x", [], [[0]], [[0, 2, 1]], [["0", 2]], [[0, True]], [[-1, 2]], [[0, 1]], [[0, 5]], [[1, 2], [0, 2]],
    [[0, 2], [0, 2]], [[3, 2]],
])
def test_bad_slice_tables_are_refused(slices: Any) -> None:
    meta = json.dumps({"results": [], "_slices": slices}).encode()
    with pytest.raises(ProtocolError, match="_slices"):
        protocol.decode(raw_message(Kind.MODULE, meta, b"a", b"b", b"c"), ALL)


def test_the_version_changed_with_the_wire_and_an_older_peer_is_named() -> None:
    assert protocol.VERSION == 7  # 7: TASKS and RESULTS have a binary meta, which a peer of 6 cannot read
    with pytest.raises(VersionMismatch) as caught:
        protocol.decode([bytes((6, Kind.MODULE)), b'{"results": []}'], ALL)
    assert caught.value.version == 6


# ---------------------------------------------------------------------------------------------- depth


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def meta_with(value: str) -> bytes:
    return ('{"results":[],"x":' + value + "}").encode()


@pytest.mark.parametrize("depth", [1, MAX_META_DEPTH - 1])
def test_meta_up_to_the_depth_limit_is_accepted(depth: int) -> None:
    # The object itself is level 1, so a value nested `depth` levels makes depth + 1.
    for value in (nested(depth), '{"a":' * depth + "1" + "}" * depth):
        message = protocol.decode(raw_message(Kind.MODULE, meta_with(value)), ALL)
        assert message.meta["x"] == json.loads(value)


@pytest.mark.parametrize("value", [
    nested(MAX_META_DEPTH),
    '{"a":' * MAX_META_DEPTH + "1" + "}" * MAX_META_DEPTH,
    "[{" * 20 + "}]" * 20,
    nested(200_000),  # about 400 KB: ended daemons with RecursionError
    "[" * 200_000,  # never closed
    "[" * 100 + "]" * 200,  # unbalanced the other way
    '["\\\\"' + "[" * 5000,  # an escaped backslash ends no string
])
def test_deep_meta_is_refused_before_parsing(value: str) -> None:
    with pytest.raises(ProtocolError, match="deeper than"):
        protocol.decode(raw_message(Kind.MODULE, meta_with(value)), ALL)


@pytest.mark.parametrize("text", ["[" * 1000, "]" * 1000 + "[" * 1000, '\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"',
                                  "\\\\" * 40 + "[" * 40])
def test_brackets_inside_strings_do_not_count(text: str) -> None:
    meta = {"results": [text] * 3, "s": {"k" * 3: text}}
    assert protocol.decode(raw_message(Kind.MODULE, json.dumps(meta).encode()), ALL).meta == meta


def random_value(rng: random.Random, depth: int) -> Any:
    choice = rng.random()
    if depth <= 0 or choice < 0.3:
        return rng.choice([1, -2, 3.5, None, True, "".join(rng.choice('[]{}"\\ab\u00e9\n') for _ in range(rng.randint(0, 6)))])
    if choice < 0.65:
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {str(random_value(rng, 0)): random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))}


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def test_the_depth_check_agrees_with_json_on_random_metas() -> None:
    rng = random.Random(5)
    seen = set()
    for _ in range(3000):
        meta = {"results": [], "x": random_value(rng, rng.randint(0, MAX_META_DEPTH + 6))}
        depth = depth_of(meta)
        seen.add(depth > MAX_META_DEPTH)
        frames = raw_message(Kind.MODULE, json.dumps(meta, ensure_ascii=rng.random() < 0.5).encode())
        if depth <= MAX_META_DEPTH:
            assert protocol.decode(frames, ALL).meta == meta
        else:
            with pytest.raises(ProtocolError, match="deeper than"):
                protocol.decode(frames, ALL)
    assert seen == {True, False}


# ------------------------------------------------------------------------------------------- integers


@pytest.mark.parametrize("number", [2 ** 63 - 1, -(2 ** 63), 0, 10 ** 18, -1])
def test_integers_within_64_bits_are_accepted(number: int) -> None:
    message = protocol.decode(raw_message(Kind.MODULE, meta_with(f"[{number}]")), ALL)
    assert message.meta["x"] == [number]


@pytest.mark.parametrize("number", [2 ** 63, -(2 ** 63) - 1, 2 ** 70, 10 ** 4000, -(10 ** 30)])
def test_integers_beyond_64_bits_are_refused(number: int) -> None:
    meta = {"tasks": [{"id": number, "fn": "f", "mode": "call", "n": 1}], "client": "0" * 32}
    with pytest.raises(ProtocolError, match="64 bits"):
        protocol.decode(raw_message(Kind.MODULE, json.dumps(meta).encode()), ALL)


def test_long_digit_runs_in_strings_and_floats_are_not_integers() -> None:
    meta = {"results": ["123456789012345678901234567890"], "t": 1.2345678901234567890123, "d": "0" * 40}
    assert protocol.decode(raw_message(Kind.MODULE, json.dumps(meta).encode()), ALL).meta == meta


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    with pytest.raises(ProtocolError, match="not a number"):
        protocol.decode(raw_message(Kind.MODULE, meta_with(f"[{constant}]")), ALL)


def test_oversized_and_invalid_meta_are_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode(raw_message(Kind.MODULE, b" " * (protocol.MAX_META_BYTES + 1)), ALL)
    for bad in (b"\xff{}", b'{"results": [}', b"[]"):
        with pytest.raises(ProtocolError):
            protocol.decode(raw_message(Kind.MODULE, bad), ALL)


# ------------------------------------------------------------------------------------- real daemons


def identity(x: Any) -> Any:
    return x


@pytest.fixture
def secured(tmp_path: Any) -> Iterator[tuple[CliCluster, str, bytes]]:
    """A control node and a node daemon of one worker, started with a secret file made by `lucidity secret`."""
    secret_file = str(tmp_path / "secret")
    subprocess.run([sys.executable, "-m", "lucidity", "secret", secret_file], check=True, timeout=30,
                   capture_output=True)
    secret = open(secret_file, "rb").read().strip()
    cluster = CliCluster()
    try:
        cluster._start("control", "control", "--bind", cluster.address, "--secret-file", secret_file)
        cluster._start("n1", "node", cluster.address, "--processes", "1", "--name", "n1", "--secret-file", secret_file)
        deadline = time.monotonic() + 30
        while True:
            try:
                report = query_status(cluster.address, timeout=1.0, secret=secret)
                if report["nodes"] and len(report["nodes"][0].get("workers", [])) == 1:
                    break
            except lucidity.ClusterUnavailable:
                pass
            assert time.monotonic() < deadline, "the secured cluster did not start"
            time.sleep(0.05)
        yield cluster, secret_file, secret
    finally:
        cluster.close()


def send_with_secret(address: str, secret: bytes, messages: list[list[bytes]]) -> None:
    """Send messages as an authenticated client would, and wait until they are out."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    linger = 0
    try:
        secure_client(sock, ClusterKeys.derive(secret), Role.CLIENT)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            sock.connect(address)
            assert monitor.poll(10_000), f"no handshake with {address}"
        finally:
            sock.disable_monitor()
            monitor.close(0)
        for message in messages:
            sock.send_multipart(message)
        linger = 10_000
    finally:
        sock.close(linger=linger)
        context.term()


def test_deep_meta_and_huge_integers_leave_every_daemon_serving(secured: Any) -> None:
    cluster, secret_file, secret = secured
    report = query_status(cluster.address, timeout=5.0, secret=secret)
    node = report["nodes"][0]
    worker = node["workers"][0]
    deep = ('{"client":"' + "0" * 32 + '","x":' + nested(200_000) + "}").encode()  # about 400 KB
    huge_task = json.dumps({"client": "0" * 32, "functions": [], "tasks": [
        {"id": 2 ** 70, "fn": "f", "mode": "call", "n": 1, "mem": 2 ** 70}]}).encode()
    send_with_secret(cluster.address, secret, [raw_message(Kind.STATUS, deep), raw_message(Kind.WATCH, deep)])
    send_with_secret(node["address"], secret, [raw_message(Kind.STATUS, deep), raw_message(Kind.HELLO, deep)])
    send_with_secret(worker["address"], secret, [raw_message(Kind.TASKS, deep),
                                                 raw_message(Kind.TASKS, huge_task, b"payload")])
    for key in ("control", "n1"):
        assert cluster.processes[key].poll() is None, f"{key} exited"
    done = subprocess.run([sys.executable, "-m", "lucidity", "status", cluster.address, "--json",
                           "--secret-file", secret_file], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    after = json.loads(done.stdout)
    assert [n["name"] for n in after["nodes"]] == ["n1"]
    assert after["nodes"][0]["workers"][0]["pid"] == worker["pid"], "the worker was replaced"
    with lucidity.Pool(address=cluster.address, secret=secret.decode()) as pool:
        assert pool.map(identity, range(20)) == list(range(20))
