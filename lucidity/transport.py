"""ZeroMQ contexts, sockets and their options; a thread-safe wakeup.

This module knows sockets, not messages. Every socket lucidity opens is made here, so that options that
must hold everywhere (linger, handshake bound, reconnect back-off, IPv6 for ``::1``) are set in one place.

Habit: each socket has one owning thread. Other threads reach that thread through a `Waker`, never by
touching its sockets.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, Optional

import zmq
import zmq.backend

if TYPE_CHECKING:
    from .addresses import Endpoint

__all__ = ["new_context", "new_socket", "bind", "bind_in_range", "Dialer", "Waker", "private_directory",
           "remove_stale_directories", "NODE_DIRECTORY_PREFIX", "CREATOR_FILE", "has_input",
           "send_frames", "recv_frames"]

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


def bind_in_range(sock: zmq.Socket[Any], endpoint: "Endpoint", ports: tuple[int, int]) -> str:
    """Bind to the first free port of ``ports`` (inclusive), starting at a random one so that workers
    starting together rarely collide; return the address bound. ZMQError EADDRINUSE when all are taken."""
    import random

    first, last = ports
    count = last - first + 1
    start = random.randrange(count)
    for offset in range(count):
        try:
            return bind(sock, endpoint._replace(port=first + (start + offset) % count).zmq)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise zmq.ZMQError(errno.EADDRINUSE, f"every port of {first}-{last} is in use")


def _logger() -> Any:
    import logging  # only dialing processes log here; a worker starts without the logging package

    return logging.getLogger(__name__)


class Dialer:
    """Keeps a DEALER connected to one peer that a name may place at several addresses, or move.

    A name stands for every A/AAAA record it resolves to. The dialer connects to one; when its owner
    hears nothing from the peer for a while (`retry`), it moves to the next record, and once all were
    tried it resolves the name again, so a control node that moved (a restarted pod, a fly machine with a
    new address) is found. An IP address is left to ZeroMQ's own reconnecting: there is nothing to move to.
    """

    def __init__(self, sock: zmq.Socket[Any], address: str) -> None:
        from . import addresses  # here, not at the top: a worker, which never dials, starts without it

        self._addresses = addresses
        self._sock = sock
        self.address = address
        self._endpoint = addresses.parse(address)
        self._candidates: list[str] = []
        self._index = 0
        self.current: Optional[str] = None
        self.retry()

    @property
    def may_move(self) -> bool:
        return not self._endpoint.is_literal or len(self._candidates) > 1

    def retry(self) -> None:
        """Connect to the next record, resolving the name again once every record was tried."""
        if self.current is not None and not self.may_move:
            return
        self._index += 1
        if self._index >= len(self._candidates):
            self._index = 0
            try:
                self._candidates = [e.zmq for e in self._addresses.resolve(self._endpoint)]
            except OSError as exc:
                _logger().warning("cannot resolve %s: %s", self.address, exc)
                if not self._candidates:
                    return
        chosen = self._candidates[self._index]
        if chosen == self.current:
            return
        if self.current is not None:
            try:
                self._sock.disconnect(self.current)
            except zmq.ZMQError:
                pass
        _logger().debug("connecting to %s at %s", self.address, chosen)
        self._sock.connect(chosen)
        self.current = chosen


#: The node daemon's private directory (its slots file, and its workers' ipc:// sockets) starts with this.
NODE_DIRECTORY_PREFIX = "lucidity-node-"
#: The file in a private directory that names its creator: "{pid} {start} {scope}".
CREATOR_FILE = "creator"


def private_directory(prefix: str, *, remove_stale: bool = True) -> str:
    """A new directory only this user can open (0700), for ipc:// sockets and worker state.

    The directory belongs to the process that creates it, which removes it on the way out; one killed with
    SIGKILL cannot (nine killed node daemons left nine, issue 11). So the directory names its creator in a
    file, `CREATOR_FILE`: its pid, the pid's start time in clock ticks since boot, and a tag of this boot
    and pid namespace; and making a directory first removes the directories of the same prefix whose
    creator is provably gone (`remove_stale_directories`). The creator is in a file rather than in the
    name because every ipc:// socket path in the directory must fit in 107 bytes. Without a /proc of this
    pid namespace no creator is recorded and nothing is removed.

    `remove_stale` False leaves that removal to the caller, who calls `remove_stale_directories` when it
    has a moment: `LocalCluster` does it once its daemons are starting, off the way to ``Pool()``'s first
    result (a scan of the temporary directory, 0.5 ms with 70 entries; issue 13).
    """
    import tempfile

    directory = tempfile.mkdtemp(prefix=prefix)
    creator = _creator()
    if creator is not None:
        with open(os.path.join(directory, CREATOR_FILE), "x") as file:
            file.write(creator + "\n")
        if remove_stale:
            remove_stale_directories(prefix, os.path.dirname(directory))
    return directory


def remove_stale_directories(prefix: str, parent: Optional[str] = None, *,
                             creators: Optional[list[int]] = None) -> list[str]:
    """Remove the directories `private_directory(prefix)` made in `parent` whose creator is provably gone.

    Provably gone: no process has the creator's pid, or the one that has it started at another time (the
    pid was recycled). Only directories of this user, made in this boot and pid namespace, are looked at:
    a pid means nothing in another namespace (containers sharing a /tmp), nor after a reboot. A creator
    that is a zombie not yet reaped still counts as alive, and a directory without a readable creator file
    (one being made right now, or made by an older lucidity) is left alone. `creators`, if given, limits
    the search to directories those pids made (an owner that has just reaped them). Returns the paths
    removed (default `parent`: the temporary directory).

    A directory outlives its creator only if something else still uses it, which lucidity never does:
    a node daemon's workers die with it (PR_SET_PDEATHSIG), and an embedded cluster's daemons stop when
    the process that made its directory exits (their parent pipe closes).
    """
    import re
    import shutil
    import stat
    import tempfile

    scope = _pid_scope()
    if scope is None:
        return []
    parent = parent or tempfile.gettempdir()
    # mkdtemp's 8 random characters exactly: "lucidity-" must not take "lucidity-node-…" for its own.
    name = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\Z")
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    for entry in entries:
        if not name.match(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            with open(os.path.join(entry.path, CREATOR_FILE)) as file:
                pid_text, start_text, their_scope = file.read().split()
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            continue
        if their_scope != scope or (creators is not None and pid not in creators) or not _is_gone(pid, start):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)  # fd-based on Linux: a symlink inside is not followed
        _logger().info("removed %s, left behind by process %d, which is gone", entry.path, pid)
        removed.append(entry.path)
    return removed


def _pid_scope() -> Optional[str]:
    """A tag of this boot and pid namespace, within which a pid and its start time name one process."""
    try:
        # The C module under hashlib.blake2b, the same digest: hashlib itself loads OpenSSL, 2 ms of every
        # Pool()'s start on the way to its first result (issue 13).
        from _blake2 import blake2b
    except ImportError:
        from hashlib import blake2b

    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None  # a /proc of another pid namespace: its pids are not ours
        with open("/proc/sys/kernel/random/boot_id", "rb") as file:
            boot = file.read().strip()
        namespace = os.readlink("/proc/self/ns/pid").encode()
    except OSError:
        return None
    return blake2b(boot + b" " + namespace, digest_size=8).hexdigest()


def _creator() -> Optional[str]:
    """``{pid} {start} {scope}`` for this process, or None where /proc cannot prove anything."""
    scope = _pid_scope()
    if scope is None:
        return None
    try:
        return f"{os.getpid()} {_process_start(os.getpid())} {scope}"
    except OSError:
        return None


def _process_start(pid: int) -> int:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat).

    Raises:
        FileNotFoundError, ProcessLookupError: no process has this pid.
        OSError: /proc/PID/stat cannot be read.
    """
    with open(f"/proc/{pid}/stat", "rb") as file:
        fields = file.read()
    # Field 2, the command name, is in parentheses and may hold spaces and parentheses: split after the last.
    return int(fields[fields.rindex(b")") + 2:].split()[19])


def _is_gone(pid: int, start: int) -> bool:
    """Whether the process that had `pid` and started at `start` has exited and been reaped."""
    try:
        return _process_start(pid) != start  # another start: the pid was recycled
    except (FileNotFoundError, ProcessLookupError):
        return True  # no process has this pid
    except OSError:
        return False  # unreadable (hidepid, say): not a proof


# Plain ints: pyzmq's flag enums cost microseconds per operation on the per-message path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
#: Below this many bytes a frame is copied into ZeroMQ rather than lent to it (pyzmq's own threshold).
COPY_THRESHOLD = 65536
# The Cython send under pyzmq's Socket.send, which adds a Python layer of argument handling per call.
_copying_send = zmq.backend.Socket.send


def has_input(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting (cheaper than a receive that raises zmq.Again)."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)


def send_frames(sock: zmq.Socket[Any], frames: list[Any], *, block: bool = True) -> None:
    """Send a multipart message without copying large frames (send_multipart, minus its per-frame overhead).

    Small ``bytes`` frames (every message's header and meta) are copied, through pyzmq's Cython send: a
    zero-copy frame costs more to set up than a copy below `COPY_THRESHOLD` (measured: a message of four
    small frames takes 18 us with ``copy=False`` through pyzmq's Python wrapper, 6 us this way).
    """
    flags = 0 if block else _NOBLOCK
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        more = flags | _SNDMORE if index < last else flags
        if type(frame) is bytes and len(frame) < COPY_THRESHOLD:
            _copying_send(sock, frame, more)
        else:
            sock.send(frame, more, copy=False)


def recv_frames(sock: zmq.Socket[Any]) -> list[zmq.Frame]:
    """Receive one multipart message as frames, never copied: recv_multipart without its
    getsockopt(RCVMORE) per frame, for which pyzmq makes an Enum of the option each time."""
    recv = sock.recv
    frame = recv(copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(copy=False)
        frames.append(frame)
    return frames


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
