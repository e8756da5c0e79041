"""lucidity.serialization round trips in this process: data with out-of-band buffers, functions by reference
and by value, exceptions with their remote traceback, and what a value that cannot travel raises."""

from __future__ import annotations

import pickle
import socket
import sys
from multiprocessing.pool import RemoteTraceback
from typing import Any

import pytest

from lucidity import serialization
from lucidity.errors import RemoteError
from tasks import Boom, Unpicklable, make_adder, raise_boom, square


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def round_trip(value: Any) -> Any:
    return serialization.loads(serialization.dumps(value))


@pytest.mark.parametrize("value", [
    None, True, 3, 2.5, 1 + 2j, "text", b"bytes", bytearray(b"mutable"), (1, (2, 3)), [1, [2]], {"a": {1, 2}},
    frozenset({4}), Point(1, 2), ValueError("as a value"), range(3, 9), list(range(10_000)),
], ids=lambda value: type(value).__name__)
def test_values_come_back_equal_and_of_their_type(value: Any) -> None:
    back = round_trip(value)
    assert type(back) is type(value)
    assert (back.args == value.args) if isinstance(value, Exception) else (back == value)


def test_a_large_buffer_travels_out_of_band_and_is_used_in_place() -> None:
    data = bytearray(b"x" * 1_000_000)
    frames = serialization.dumps(pickle.PickleBuffer(data))
    assert len(frames) == 2 and len(frames[0]) < 1000  # the pickle names the buffer; the bytes go beside it
    received = bytearray(frames[1])  # as a writable received frame
    back = serialization.loads([frames[0], received])
    assert bytes(back) == bytes(data)


def test_a_numpy_array_arrives_as_a_view_of_its_frame() -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(100_000, dtype=numpy.float64).reshape(100, 1000)
    frames = serialization.dumps(array)
    received = [frames[0], *(bytearray(frame) for frame in frames[1:])]
    back = serialization.loads(received)
    assert back.shape == array.shape and back.dtype == array.dtype and (back == array).all()
    assert not back.flags.owndata and back.flags.writeable  # no copy made by the unpickler


@pytest.mark.parametrize("value, what", [
    (Unpicklable(), "Unpicklable"),
    ((i for i in range(3)), "generator"),
])
def test_a_value_that_cannot_travel_raises_the_picklers_error_naming_what_it_was(value: Any, what: str) -> None:
    with pytest.raises(TypeError, match=what) as caught:
        serialization.dumps(value, what="items 0..9")
    notes = getattr(caught.value, "__notes__", None)
    if sys.version_info >= (3, 11):
        assert notes and "items 0..9" in notes[0] and "nothing was sent" in notes[0]


def test_an_unpicklable_socket_is_refused_too() -> None:
    with socket.socket() as sock:
        with pytest.raises(TypeError):
            serialization.dumps(sock)


def test_a_module_function_travels_by_reference() -> None:
    data = serialization.dumps_function(square)
    assert serialization.loads_function(data) is square
    assert b"square" in data and len(data) < 200


def test_lambdas_and_closures_travel_by_value() -> None:
    offset = 10
    closure = make_adder(5)
    for function, argument, expected in [(lambda x: x + offset, 1, 11), (closure, 2, 7)]:
        rebuilt = serialization.loads_function(serialization.dumps_function(function))
        assert rebuilt is not function and rebuilt(argument) == expected


def test_a_function_that_cannot_travel_raises_naming_it() -> None:
    class Local:
        lock = Unpicklable()

        def __call__(self) -> None:
            pass

    with pytest.raises(TypeError):
        serialization.dumps_function(Local())


def test_the_digest_names_the_bytes() -> None:
    data = serialization.dumps_function(square)
    assert serialization.digest(data) == serialization.digest(bytes(data))
    assert serialization.digest(data) != serialization.digest(data + b"x")
    assert isinstance(serialization.digest(data), str)


def raised(function: Any, *args: Any) -> BaseException:
    try:
        function(*args)
    except BaseException as exc:  # noqa: B902 - the point is to keep whatever it raised
        return exc
    raise AssertionError(f"{function.__name__} did not raise")


def test_an_exception_comes_back_as_itself_with_the_remote_traceback_as_its_cause() -> None:
    error = serialization.loads_exception(serialization.dumps_exception(raised(raise_boom, "bad", 7)))
    assert type(error) is Boom and error.args == ("bad", 7)
    assert isinstance(error.__cause__, RemoteTraceback)
    text = str(error.__cause__)
    assert "Traceback" in text and "raise_boom" in text and "raise Boom(message, code)" in text
    assert error.__traceback__ is None  # the remote frames are in the text, shown once


def test_an_exception_that_cannot_travel_becomes_a_remote_error_keeping_its_story() -> None:
    def fail() -> None:
        raise ValueError("carrying", Unpicklable())

    error = serialization.loads_exception(serialization.dumps_exception(raised(fail)))
    assert isinstance(error, RemoteError)
    assert "ValueError" in str(error) and "carrying" in str(error)
    assert "fail" in str(error.__cause__)


def test_the_workers_own_frames_are_left_out_of_the_traceback() -> None:
    error = raised(raise_boom, "bad", 7)
    text = str(serialization.loads_exception(serialization.dumps_exception(error, skip_frames_of=__file__)).__cause__)
    assert "test_serialization.py" not in text and "raise_boom" in text


def test_call_repr_names_the_function_and_where_it_is_defined() -> None:
    assert serialization.call_repr(square).startswith("square, defined in ")
    assert serialization.call_repr(square).endswith(f"tasks.py:{square.__code__.co_firstlineno}")
    assert serialization.call_repr(len) == "len"
