"""A worker's door for callers on this machine: a Unix socket beside its ipc:// ZeroMQ socket.

A caller's thread making a lone blocking call connects here, says which routing id its client has on the
worker's ZeroMQ socket (so that the task is that client's in every way: its main script, its functions,
and every message but the result, which go over ZeroMQ as always), sends TASKS of one task, and reads
that task's RESULTS from the same connection (`lucidity.streams`, `lucidity.directcall`).

The door owns the listening socket, the connections, the poller the worker blocks in when it has
nothing to do (which watches the ZeroMQ socket too), and the two messages it carries: TASKS in, RESULTS
out. A connection that breaks, or sends what no caller of ours sends, is closed; its caller then learns
the outcome of its task the ZeroMQ way (a TASKS it cannot read is refused there, as the worker's socket
refuses one: the client fails what it sent).
"""

from __future__ import annotations

import os
import select
import socket
import struct
from typing import Any, Callable, Iterator, Optional

import zmq

from .. import messages, protocol, streams
from ..errors import ProtocolError
from ..messages import ResultEntry

__all__ = ["Door", "IO_TIMEOUT"]

#: A result that cannot be written within this many seconds (its caller stopped reading) goes the ZeroMQ
#: way instead, and the connection is closed; a message begun and not finished within it is dropped, with
#: its connection. A stalled caller never holds a worker other clients share.
IO_TIMEOUT = 5.0
#: What a caller sends at the door: tasks alone; anything else goes over ZeroMQ.
ACCEPTS = frozenset({protocol.Kind.TASKS})


class Door:
    """The listening socket at `path`, its connections, and a poller over them and the worker's socket."""

    def __init__(self, path: str, zmq_socket: zmq.Socket[Any]) -> None:
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(path)
            self._listener.listen(64)
        except BaseException:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self._listener_fd = self._listener.fileno()
        self._zmq_socket = zmq_socket
        # fd -> (stream, the client's routing id; b"" until its hello)
        self._streams: dict[int, tuple[streams.MessageStream, bytes]] = {}
        self.poller = zmq.Poller()  # what the worker blocks in when idle
        self.poller.register(zmq_socket, zmq.POLLIN)
        self.poller.register(self._listener_fd, zmq.POLLIN)
        self._ready = select.poll()  # the same fds, for a look that does not block
        self._ready.register(self._listener_fd, select.POLLIN)
        self.received = 0  # bytes of messages read, for the worker's tally

    def wait(self, timeout_ms: Optional[int] = None) -> tuple[bool, list[int]]:
        """Block until something arrives: (ZeroMQ has input, the door's fds that are ready)."""
        events = self.poller.poll(timeout_ms)
        zmq_ready = False
        ready = []
        for item, _ in events:
            if item is self._zmq_socket:
                zmq_ready = True
            else:
                ready.append(item)
        return zmq_ready, ready

    def ready_now(self) -> list[int]:
        """The door's fds with input now (one poll call)."""
        return [fd for fd, _ in self._ready.poll(0)]

    def read(self, fds: list[int], refuse: Callable[[bytes, str], None]
             ) -> Iterator[tuple[bytes, protocol.Message, streams.MessageStream]]:
        """Accept waiting connections and read the messages that arrived: (client routing id, the TASKS
        message, the stream to answer on) for each a caller sent. One that cannot be read is `refuse`d
        (client routing id, why) and its stream closed."""
        for fd in fds:
            if fd == self._listener_fd:
                self._accept()
                continue
            entry = self._streams.get(fd)
            if entry is None:
                continue
            stream, identity = entry
            while True:
                try:
                    frames = stream.recv()
                except (OSError, ValueError):
                    frames = None
                if frames is None:
                    self.drop(stream)
                    break
                if not identity:
                    if len(frames) != 2 or frames[0] != streams.HELLO or not frames[1]:
                        self.drop(stream)
                        break
                    identity = bytes(frames[1])
                    self._streams[fd] = (stream, identity)
                else:
                    self.received += sum(len(frame) for frame in frames)
                    try:
                        message = protocol.decode(frames, ACCEPTS)
                    except ProtocolError as exc:
                        refuse(identity, str(exc))
                        self.drop(stream)
                        break
                    yield identity, message, stream
                if not stream.buffered:
                    break

    def answer(self, stream: streams.MessageStream, entry: ResultEntry, frames: list[Any]) -> int:
        """Send a task's result on the stream it came by: the bytes sent, or 0 (and the stream closed) if it
        cannot go, and must go the ZeroMQ way."""
        if stream.sock.fileno() < 0:
            return 0
        layout, packed = protocol.pack_items([frames])
        message = messages.encode(messages.Results((entry,), tuple(layout)), packed, sliced=False)
        try:
            stream.send(message)
        except OSError:
            self.drop(stream)
            return 0
        return sum(len(frame) if type(frame) is bytes else memoryview(frame).nbytes for frame in message)

    def drop(self, stream: streams.MessageStream) -> None:
        fd = stream.sock.fileno()
        if fd >= 0 and self._streams.pop(fd, None) is not None:
            self.poller.unregister(fd)
            self._ready.unregister(fd)
        stream.close()

    def close(self) -> None:
        for stream, _ in list(self._streams.values()):
            self.drop(stream)
        self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of files, say: the caller's connect succeeded, its hello is read as EOF
            # Blocking, with the kernel's timeouts: Python's own (settimeout) polls before every call.
            sock.setblocking(True)
            timeout = struct.pack("ll", int(IO_TIMEOUT), 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
            fd = sock.fileno()
            self._streams[fd] = (streams.MessageStream(sock), b"")
            self.poller.register(fd, zmq.POLLIN)
            self._ready.register(fd, select.POLLIN)
