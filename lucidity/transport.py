"""ZeroMQ contexts, sockets and their options; a thread-safe wakeup.

This module knows sockets, not messages. Every socket lucidity opens is made here, so that options that
must hold everywhere (linger, handshake bound, reconnect back-off, IPv6 for ``::1``) are set in one place.

Habit: each socket has one owning thread. Other threads reach that thread through a `Waker`, never by
touching its sockets.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import zmq

__all__ = ["new_context", "new_socket", "bind", "Waker", "private_directory", "is_loopback", "has_input",
           "send_frames"]

#: How long a socket keeps unsent messages after close, in seconds.
LINGER = 1.0
#: Bound on a connection's handshake, in seconds (a silent peer is dropped after this).
HANDSHAKE_TIMEOUT = 5.0
#: Reconnect back-off: first try, and the cap of the exponential back-off, in seconds.
RECONNECT_INTERVAL = 0.1
RECONNECT_INTERVAL_MAX = 2.0


def new_context() -> zmq.Context[Any]:
    """A fresh context; create one per process after it starts, never before a fork."""
    return zmq.Context()


def new_socket(context: zmq.Context[Any], kind: int, *, identity: Optional[bytes] = None) -> zmq.Socket[Any]:
    """A socket with lucidity's standard options."""
    sock: zmq.Socket[Any] = context.socket(kind)
    sock.setsockopt(zmq.LINGER, int(LINGER * 1000))
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_TIMEOUT * 1000))
    sock.setsockopt(zmq.RECONNECT_IVL, int(RECONNECT_INTERVAL * 1000))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(RECONNECT_INTERVAL_MAX * 1000))
    sock.setsockopt(zmq.IPV6, 1)
    # High-water marks are handled by lucidity's own windows; never drop or block silently below them.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    return sock


def bind(sock: zmq.Socket[Any], address: str) -> str:
    """Bind and return the address actually bound (a port of 0 is replaced by the one chosen)."""
    sock.bind(address)
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    bound = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
    # With IPv6 enabled, an IPv4 bind reports the mapped form tcp://[::ffff:127.0.0.1]:port.
    return bound.replace("[::ffff:", "").replace("]:", ":") if "[::ffff:" in bound else bound


def is_loopback(address: str) -> bool:
    """True for ipc:// and inproc:// addresses and for tcp:// on 127.0.0.0/8, ::1 or localhost; False for
    anything else (other hosts, interface names, wildcards and other transports)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def private_directory(prefix: str) -> str:
    """A new directory only this user can open (0700), for ipc:// sockets and worker state."""
    import tempfile

    return tempfile.mkdtemp(prefix=prefix)


# Plain ints: pyzmq's flag enums cost microseconds per operation on the per-message path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


def has_input(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting (cheaper than a receive that raises zmq.Again)."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)


def send_frames(sock: zmq.Socket[Any], frames: list[Any], *, block: bool = True) -> None:
    """Send a multipart message without copying large frames (send_multipart, minus its per-frame overhead)."""
    flags = 0 if block else _NOBLOCK
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, flags | _SNDMORE if index < last else flags, copy=False)


class Waker:
    """Wakes a thread blocked in poll from any thread (or a signal handler), through a pipe.

    The read end is registered in the owner's poller; `wake` may be called from anywhere and coalesces.
    """

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)

    def wake(self) -> None:
        try:
            os.write(self._write_fd, b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending (pipe full) or closing: either way the owner will wake

    def drain(self) -> None:
        try:
            os.read(self.read_fd, 65536)  # more than this many wakes in a row just wakes the owner again
        except (BlockingIOError, OSError):
            pass

    @property
    def write_fd(self) -> int:
        return self._write_fd

    def close(self) -> None:
        for fd in (self.read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
