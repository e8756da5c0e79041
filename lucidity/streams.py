"""Multipart messages over a Unix stream socket: the machine-local door to a worker, without ZeroMQ.

A worker of a cluster reached over ``ipc://`` (the embedded cluster, and CLI clusters bound on ipc)
also listens on a Unix socket beside its ZeroMQ one (`door_path`). A caller's thread that makes a lone
blocking call sends the task there itself and reads the result itself (`lucidity.directcall`): no hand-off
to the client's I/O thread, and no ZeroMQ I/O thread on either side, which on two cores is most of a round
trip (docs/performance.md, "A caller's own socket to its worker").

The door is protected as the ipc:// sockets beside it are: they live in a directory only the cluster's
user can open, and a cluster with a secret has no door (its peers prove the secret through CURVE first).

This module knows frames, not messages: a message travels as its frame count, each frame's length, then
the frames, as ZeroMQ would carry them. Whole messages only: a stream that ends inside one has ended.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Optional, Sequence

__all__ = ["MessageStream", "door_path", "connect", "MAX_FRAMES"]

#: A message has at most this many frames (a bound on what a header can make a reader allocate).
MAX_FRAMES = 1 << 16
#: A frame at least this large is received into its own buffer (an array, used in place), not copied.
LARGE_FRAME = 16 * 1024
#: The area small frames are read into, per stream: most messages arrive whole in one read. Small, since a
#: worker keeps one per caller's thread connected to it, inside its memory cap.
READ_SIZE = 32 * 1024
#: Buffers per sendmsg (Linux's IOV_MAX is 1024).
IOV_MAX = 1000
#: The first message a caller sends on a new connection: this, and its routing id on the worker's socket.
HELLO = b"lucidity-door-1"
#: The suffix that turns a worker's ipc:// socket path into its door's.
DOOR_SUFFIX = ".door"

_COUNT = struct.Struct("<I")


def door_path(zmq_address: str) -> Optional[str]:
    """The Unix socket beside a worker's ipc:// ZeroMQ socket; None for other transports (no door)."""
    if not zmq_address.startswith("ipc://"):
        return None
    return zmq_address[len("ipc://"):] + DOOR_SUFFIX


def connect(path: str) -> socket.socket:
    """A connected stream socket to a door (OSError if nobody listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class MessageStream:
    """Whole multipart messages over one connected stream socket, in both directions.

    Reading: small frames come out of one area that a single read usually fills with the whole message (a
    fixed bytearray, read into: a fresh buffer per read would cost the allocator an mmap and a munmap); a
    large one is received straight into a bytearray of its own, which the reader may keep (an array's
    data, used in place by pickle's out-of-band buffers).
    """

    __slots__ = ("sock", "_area", "_view", "_start", "_end")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._area = bytearray(READ_SIZE)
        self._view = memoryview(self._area)
        self._start = 0  # the unread bytes are _area[_start:_end]
        self._end = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def buffered(self) -> bool:
        """Bytes of a next message are already read (a poll on the socket would not show them)."""
        return self._start < self._end

    def send(self, frames: Sequence[Any]) -> None:
        """Send one message (OSError, including a timeout, if the stream broke: it is then unusable)."""
        buffers = [frame if type(frame) is bytes else _flat(frame) for frame in frames]
        lengths = [len(buffer) for buffer in buffers]
        header = struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)
        pending: list[Any] = [header, *buffers]
        start = 0
        sendmsg = self.sock.sendmsg
        while start < len(pending):
            sent = sendmsg(pending[start:start + IOV_MAX])
            while sent:  # drop what went, keep the rest of a buffer sent in part
                size = len(pending[start])
                if sent >= size:
                    sent -= size
                    start += 1
                else:
                    pending[start] = memoryview(pending[start])[sent:]
                    sent = 0
            while start < len(pending) and not len(pending[start]):
                start += 1

    def recv(self) -> Optional[list[Any]]:
        """The next message's frames (bytes, or bytearray for large ones); None if the stream ended.

        Blocks until the whole message is in. Raises ValueError for a header no sender of ours writes.
        """
        head = self._take(_COUNT.size)
        if head is None:
            return None
        count = _COUNT.unpack(head)[0]
        if not 0 < count <= MAX_FRAMES:
            raise ValueError(f"a message on the stream announces {count} frames")
        raw = self._take(8 * count)
        if raw is None:
            return None
        frames: list[Any] = []
        for length in struct.unpack(f"<{count}Q", raw):
            frame = self._take(length)
            if frame is None:
                return None
            frames.append(frame)
        return frames

    def close(self) -> None:
        self.sock.close()

    def _take(self, size: int) -> Optional[Any]:
        start, end, view = self._start, self._end, self._view
        available = end - start
        if available >= size:
            self._start = start + size
            return bytes(view[start:start + size])
        if size >= LARGE_FRAME:
            frame = bytearray(size)
            frame[:available] = view[start:end]
            self._start = self._end = 0
            rest = memoryview(frame)[available:]
            recv_into = self.sock.recv_into
            while rest:
                got = recv_into(rest)
                if not got:
                    return None
                rest = rest[got:]
            return frame
        if start:  # what is left of the area is too short for this frame: its start moves to the front
            view[:available] = bytes(view[start:end])
            self._start, end = 0, available
        recv_into = self.sock.recv_into
        while end < size:
            got = recv_into(view[end:])
            if not got:
                self._end = end
                return None
            end += got
        self._start, self._end = size, end
        return bytes(view[:size])


def _flat(frame: Any) -> Any:
    """A frame's bytes as one flat buffer, without copying (ZeroMQ frames, memoryviews, pickle buffers)."""
    view = memoryview(getattr(frame, "buffer", frame))
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
