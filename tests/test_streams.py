"""Whole multipart messages over a Unix stream socket (lucidity.streams), as a worker's door carries them."""

from __future__ import annotations

import socket
import threading

import pytest

from lucidity import streams


@pytest.fixture
def pair():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a, b = streams.MessageStream(left), streams.MessageStream(right)
    yield a, b
    a.close()
    b.close()


SIZES = [0, 1, 2, 7, 4096, streams.LARGE_FRAME - 1, streams.LARGE_FRAME, streams.READ_SIZE + 3, 5 * 1024 * 1024]


def frame_of(size, seed):
    return bytes((seed + i) % 251 for i in range(min(size, 4096))) * (size // 4096) + bytes(size % 4096)


def test_messages_of_every_size_come_whole_and_in_order(pair):
    a, b = pair
    sent = [[frame_of(size, n), b"meta", memoryview(frame_of(size // 2 + 1, n + 1))] for n, size in enumerate(SIZES)]
    writer = threading.Thread(target=lambda: [a.send(message) for message in sent])
    writer.start()
    for message in sent:
        got = b.recv()
        assert [bytes(frame) for frame in got] == [bytes(frame) for frame in message]
    writer.join()
    assert not b.buffered


def test_small_messages_sent_together_are_read_one_at_a_time_from_the_buffer(pair):
    a, b = pair
    for n in range(50):
        a.send([b"x" * n, b"y"])
    assert b.recv() == [b"", b"y"]
    assert b.buffered, "the rest arrived in the same read"
    for n in range(1, 50):
        assert b.recv() == [b"x" * n, b"y"]


def test_a_large_frame_is_its_own_writable_buffer(pair):
    a, b = pair
    payload = frame_of(streams.READ_SIZE * 2, 3)
    writer = threading.Thread(target=a.send, args=([b"head", payload],))
    writer.start()
    head, body = b.recv()
    writer.join()
    assert head == b"head" and type(body) is bytearray and body == payload


def test_more_frames_than_one_sendmsg_takes(pair):
    a, b = pair
    frames = [bytes([n % 256]) * (n % 5) for n in range(3 * streams.IOV_MAX)]
    writer = threading.Thread(target=a.send, args=(frames,))
    writer.start()
    assert b.recv() == frames
    writer.join()


@pytest.mark.parametrize("cut", [0, 2, 4, 11, 20])
def test_a_stream_that_ends_inside_a_message_has_ended(pair, cut):
    a, b = pair
    whole = [b"0123456789"]
    probe_left, probe_right = socket.socketpair()
    streams.MessageStream(probe_left).send(whole)
    raw = probe_right.recv(1024)
    probe_left.close()
    probe_right.close()
    a.sock.sendall(raw[:cut])
    a.sock.shutdown(socket.SHUT_WR)
    assert b.recv() is None


def test_a_header_no_sender_writes_is_refused(pair):
    a, b = pair
    a.sock.sendall((streams.MAX_FRAMES + 1).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="frames"):
        b.recv()


def test_door_paths_exist_only_beside_ipc_sockets():
    assert streams.door_path("ipc:///run/x/w0-1") == "/run/x/w0-1" + streams.DOOR_SUFFIX
    assert streams.door_path("tcp://127.0.0.1:5555") is None
