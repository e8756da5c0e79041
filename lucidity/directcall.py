"""A lone blocking call carried by its caller's own thread, to a worker's door on this machine.

``pool.apply(f, args)`` otherwise goes through four thread hand-offs in the caller's process (caller →
client I/O thread → ZeroMQ I/O thread, and back) and two in the worker's; on two cores each is a wake-up
that costs more than the call. Here the caller's thread writes the task to the worker's door
(`lucidity.node.door`) over a Unix socket of its own and reads the result from it: the worker wakes once,
the caller once, as with a pipe.

The task is still the client's like any other: it is in the task table, sent to that worker's lane, so
whatever else can happen to it happens as it would over ZeroMQ, through the I/O thread: its node reports
it crashed or broke a limit, the worker gives it back (it lacked the function or was busy), the pool is
terminated. Each ends the task or sends it elsewhere, and the I/O thread wakes the caller (`Call`). What
is the caller's alone: reading the result, and telling the table when the door's stream ended without
one (`Client._door_ended`). If the caller is interrupted while it waits, its stream goes to the I/O
thread (`adopt`), which reads the result when it comes, as multiprocessing's result thread would.

This module owns each thread's streams and the wait; the client decides which worker and what the
messages mean.
"""

from __future__ import annotations

import collections
import select
import threading
import time
import weakref
from typing import Any, Callable, Optional

from . import streams, transport
from .task import Task

__all__ = ["Adopted", "Call", "Caller", "Doors", "STREAMS_PER_THREAD"]

#: Doors a thread keeps open at once (the workers it called last).
STREAMS_PER_THREAD = 8


class Call:
    """One call in flight: wraps its task's ``on_done`` so that an outcome the I/O thread delivers wakes the
    caller's wait (an outcome the caller delivers itself needs no wake-up)."""

    __slots__ = ("task", "done", "sent", "handled", "_on_done", "_waker", "_thread")

    def __init__(self, task: Task, waker: transport.Waker) -> None:
        self.task = task
        self.done = False
        self.sent = False  # its TASKS went whole on the stream
        self.handled = False  # an interruption was dealt with by `Doors.wait`
        self._on_done = task.on_done
        self._waker = waker
        self._thread = threading.get_ident()
        task.on_done = self._delivered

    def cancel(self) -> None:
        """The call was not made: the task's ``on_done`` is its own again."""
        self.task.on_done = self._on_done

    def _delivered(self, succeeded: bool, value: Any) -> None:
        try:
            self._on_done(succeeded, value)
        finally:
            self.done = True
            if threading.get_ident() != self._thread:
                self._waker.wake()


class Caller:
    """One thread's streams to doors (by worker key, most recent last) and the waker of its waits.

    Kept in a thread-local: when its thread ends, its files are closed (a program that starts a thread per
    request, each making one call, must not run out of them)."""

    def __init__(self) -> None:
        self.streams: collections.OrderedDict[str, streams.MessageStream] = collections.OrderedDict()
        self.waker = transport.Waker()
        self.poll = select.poll()
        self.poll.register(self.waker.read_fd, select.POLLIN)
        self.busy = False  # in a call: its thread closes its streams when the call returns (`Doors.close`)
        self.close = weakref.finalize(self, _close, self.streams, self.waker)


def _close(open_streams: dict[str, streams.MessageStream], waker: transport.Waker) -> None:
    for stream in open_streams.values():
        stream.close()
    open_streams.clear()
    waker.close()


class Doors:
    """Every thread's streams of one client (`Caller`s), and the wait for a call's outcome."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._callers: weakref.WeakSet[Caller] = weakref.WeakSet()  # to close at shutdown

    def caller(self) -> Caller:
        caller: Optional[Caller] = getattr(self._local, "caller", None)
        if caller is None:
            caller = self._local.caller = Caller()
            with self._lock:
                self._callers.add(caller)
        return caller

    def send(self, caller: Caller, key: str, path: str, routing_id: bytes,
             message: list[Any]) -> Optional[streams.MessageStream]:
        """Send a call's TASKS on this thread's stream to a worker's door, opened (with its hello) if need be;
        the stream, or None if there is no door or the stream broke (the call then goes the ZeroMQ way)."""
        stream = caller.streams.get(key)
        try:
            if stream is None:
                stream = streams.MessageStream(streams.connect(path))
                stream.send([streams.HELLO, routing_id])
                if len(caller.streams) >= STREAMS_PER_THREAD:
                    _, oldest = caller.streams.popitem(last=False)
                    oldest.close()
                caller.streams[key] = stream
            else:
                caller.streams.move_to_end(key)
            stream.send(message)
        except OSError:
            if stream is not None:
                self.forget(caller, key)
                stream.close()
            return None
        return stream

    def discard(self, caller: Caller, key: str) -> None:
        """Close this thread's stream to a worker, whatever state a cut-short send left it in."""
        stream = caller.streams.pop(key, None)
        if stream is not None:
            stream.close()

    def forget(self, caller: Caller, key: str) -> bool:
        """The stream to a worker is done with (it broke, or went to the I/O thread); False if it already was."""
        return caller.streams.pop(key, None) is not None

    def wait(self, caller: Caller, call: Call, key: str, stream: Optional[streams.MessageStream],
             on_message: Callable[[list[Any]], None], on_end: Callable[[], None],
             adopt: Callable[[streams.MessageStream], None], abandon: Callable[[], None],
             timeout: Optional[float] = None) -> None:
        """Until the call's outcome is delivered: read its result from `stream` (`on_message`), or learn that
        the stream ended without one (`on_end`: the task is the I/O thread's from then on), or be woken by
        the I/O thread having delivered it; or until `timeout` seconds have passed, when the stream goes to
        `adopt` (for the I/O thread: `Adopted`) and the task on as if it had been submitted.

        Raises only what interrupts the wait (KeyboardInterrupt), after making sure the task still ends: a
        stream whose result may still come goes to `adopt` (for the I/O thread: `Adopted`); a result already
        read is delivered; if the interruption cut its delivery short, the task is ended by `abandon` (its
        caller, interrupted, no longer waits for it; the pool must not either)."""
        poll = caller.poll
        fd = stream.fileno() if stream is not None else -1
        if fd >= 0:
            poll.register(fd, select.POLLIN)
        caller.busy = True
        frames: Optional[list[Any]] = None  # a message read and not yet delivered
        deadline = None if timeout is None else time.monotonic() + timeout
        wait_ms: Optional[float] = None
        try:
            while not call.done:
                if deadline is not None:
                    wait_ms = max(0.0, deadline - time.monotonic()) * 1000
                    if not wait_ms:
                        if fd >= 0 and stream is not None:
                            poll.unregister(fd)
                            fd = -1
                            self.forget(caller, key)
                            adopt(stream)
                        break
                for ready, _ in poll.poll(wait_ms):
                    if ready == fd:
                        try:
                            frames = stream.recv() if stream is not None else None
                        except (OSError, ValueError):
                            frames = None
                        if frames is None:
                            poll.unregister(fd)
                            fd = -1
                            self.forget(caller, key)
                            if stream is not None:
                                stream.close()
                            on_end()
                        else:
                            on_message(frames)
                            frames = None
                    else:
                        caller.waker.drain()
        except BaseException:
            call.handled = True
            if frames is not None and not call.done:
                try:
                    on_message(frames)
                finally:
                    if not call.done:
                        abandon()
            elif fd >= 0 and stream is not None and not call.done:
                poll.unregister(fd)
                fd = -1
                self.forget(caller, key)
                adopt(stream)
            raise
        finally:
            if fd >= 0:
                poll.unregister(fd)
            caller.busy = False
        # A wake-up that came after the loop saw the outcome stays in the pipe: the next call's first poll
        # drains it (one turn of its loop), rather than every call paying a read for it.

    def close(self, caller: Optional[Caller] = None) -> None:
        """The client shut down: close this thread's `caller` (streams and waker), or the streams of every
        thread not in a call (their wakers close with their threads: one may be about to poll it)."""
        if caller is not None:
            with self._lock:
                self._callers.discard(caller)
            caller.close()
            self._local.caller = None
            return
        with self._lock:
            idle = [c for c in self._callers if not c.busy]
        for other in idle:
            for stream in list(other.streams.values()):
                stream.close()


class Adopted:
    """Streams whose callers were interrupted while they waited: the I/O thread reads each until its task
    has its outcome (a stream is handed over with its link and task, and given back to the callbacks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: list[tuple[streams.MessageStream, Any]] = []  # handed over, not yet watched
        self._watched: dict[int, tuple[streams.MessageStream, Any]] = {}  # the I/O thread's, by fd

    def __bool__(self) -> bool:
        return bool(self._new or self._watched)

    def __contains__(self, fd: object) -> bool:
        return fd in self._watched

    def add(self, stream: streams.MessageStream, owner: tuple[Any, Task]) -> None:
        """Any thread: the stream of an interrupted call, with (its worker's link, its task)."""
        with self._lock:
            self._new.append((stream, owner))

    def watch(self, poller: Any) -> None:
        """The I/O thread, each turn: watch the streams handed over; close those whose task has ended."""
        with self._lock:
            new, self._new = self._new, []
        for stream, owner in new:
            self._watched[stream.fileno()] = (stream, owner)
            poller.register(stream.fileno(), select.POLLIN)
        for fd, (_, (_, task)) in list(self._watched.items()):
            if task.is_final:
                self._close(fd, poller)

    def read(self, fd: int, poller: Any, on_message: Callable[[list[Any], Any, Task], None],
             on_end: Callable[[Any, Task], None]) -> None:
        """The I/O thread: a watched stream has input: its result (`on_message`), or its end (`on_end`)."""
        stream, (link, task) = self._watched[fd]
        try:
            frames = stream.recv()
        except (OSError, ValueError):
            frames = None
        if frames is None:
            self._close(fd, poller)
            on_end(link, task)
            return
        on_message(frames, link, task)
        if task.is_final:
            self._close(fd, poller)

    def close(self, poller: Any) -> None:
        for fd in list(self._watched):
            self._close(fd, poller)
        with self._lock:
            new, self._new = self._new, []
        for stream, _ in new:
            stream.close()

    def _close(self, fd: int, poller: Any) -> None:
        stream, _ = self._watched.pop(fd)
        poller.unregister(fd)
        stream.close()
