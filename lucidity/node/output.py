"""What a worker tells the client of its running task besides the result: its output and its progress.

Two reports travel from a worker to a client, each batched so that a task that prints nothing and reports
nothing costs no message at all::

    task --write(1 or 2)--> pipe --pump thread--> pending bytes --OUTPUT--> client (prints them, prefixed)
    task's chunk (items taken so far) + report_progress(done, total) --PROGRESS, at most every 100 ms--> client

Output. With forwarding on (`lucidity node` without ``--no-forward-output``), the worker points its fds 1
and 2 at pipes when it starts, so what a task writes reaches us however it writes it: ``print``, a C
extension's ``printf``, a subprocess that inherited the fds. A pump thread reads the pipes, writes every
byte on to the worker's original stdout or stderr too (the node's log keeps what it always had), and
keeps it for the client of the task that was running. It is sent:

- with the results, before them (`Reports.flush`, from the worker's loop), so that a caller sees what a
  task printed before its result;
- while a task runs, by the pump thread, at most every `SEND_DELAY` (it may use the worker's socket only
  while it holds the worker's lock, which the worker's thread releases while the caller's code runs);
- while the worker waits for work (`Reports.wait_for_work` polls the socket and the pump's wake-up pipe),
  which is how lines a task's thread writes after its result was sent still arrive.

Python's ``sys.stdout`` on a pipe is block-buffered; the worker makes it line-buffered, as on a terminal,
so that a long task's lines leave as they are printed. Lines are attributed to the task running when they
are read: at a change of client the pipes are drained first, so one client never gets another's lines.
faulthandler writes to the original stderr, since the pump dies with the process it would report on.

Progress. A chunk of a map is iterated through an iterator whose remaining length another thread can read
(`Reports.items`), so counting finished items costs nothing per item; the pump thread sends a PROGRESS
when the count changed, at most every `PROGRESS_INTERVAL`, and only for a chunk that runs that long.
`report` records what a task says of itself (`lucidity.report_progress`) and rides the same messages.

Not here: the messages' shape (`lucidity.messages.work`), what the client does with them
(`lucidity.reports`), and the worker's loop (`lucidity.node.worker`, which calls in here).
"""

from __future__ import annotations

import faulthandler
import operator
import os
import select
import sys
import threading
import time
from typing import IO, Any, Callable, Iterable, Iterator, Optional

import zmq

from .. import messages
from .workerprocess import flush_output

__all__ = ["Reports", "report", "forward_nested", "forwarding_enabled", "SEND_DELAY", "PROGRESS_INTERVAL"]

#: Output waits at most this long to be sent while a task runs or the worker waits, in seconds.
SEND_DELAY = 0.05
#: A running chunk's progress is sent at most this often, in seconds (and only once it ran this long).
PROGRESS_INTERVAL = 0.1
#: Bytes read from a pipe at once.
READ_SIZE = 65536
#: Output kept for sending at most, in bytes: a task printing faster than the client takes it loses the
#: oldest (the node's log still has all of it).
MAX_PENDING = 8 * 1024 * 1024
#: The environment variable by which the node daemon turns forwarding off (``--no-forward-output``).
FORWARD_VARIABLE = "LUCIDITY_FORWARD_OUTPUT"

Send = Callable[[bytes, list[Any]], None]

# The worker's Reports, for `report` (lucidity.report_progress) to find; set once at start-up, as
# `lucidity.waiting`'s helper.
_installed: Optional["Reports"] = None


def forwarding_enabled() -> bool:
    """Whether this worker's node forwards task output to clients (``--no-forward-output`` turns it off)."""
    return os.environ.get(FORWARD_VARIABLE, "1") != "0"


def report(done: float, total: float) -> bool:
    """Record a running task's own progress; False outside a worker (nothing to report to)."""
    reports = _installed
    if reports is None:
        return False
    reports.record(done, total)
    return True


class _Pipe:
    """One captured fd: the pipe now behind it, a copy of what it was (to write everything on to), and the
    start of a line read from it whose end has not come yet."""

    __slots__ = ("fd", "read_fd", "original", "partial")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.original = os.dup(fd)
        self.partial = b""
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.dup2(write_fd, fd)
        os.close(write_fd)


class _Pending:
    """Output read for one client and not sent yet."""

    __slots__ = ("task", "data", "since")

    def __init__(self, task: int) -> None:
        self.task = task  # the task running when the first of it was read
        self.data = bytearray()
        self.since = time.monotonic()


class Reports:
    """A worker's output forwarding and progress reports.

    Args:
        lock: the worker's lock, held by its thread except while the caller's code runs; the pump thread
            uses the socket only under it.
        send: sends frames to a client by its routing identity (the worker's, under the lock).
        capture: forward output (point fds 1 and 2 at pipes); progress is reported either way.
    """

    def __init__(self, lock: threading.RLock, send: Send, capture: bool) -> None:
        self._lock = lock
        self._send = send
        self._capture = capture
        self._pending = threading.Lock()  # guards `_outputs` and the reading of the pipes
        self._outputs: dict[bytes, _Pending] = {}  # by client identity
        # (client identity, task id) of the running task, and of those it waits for while tasks queued here
        # run nested on its stack (`lucidity.waiting`); the last one run stays once the stack is empty.
        self._stack: list[tuple[bytes, int]] = []
        self._current = (b"", 0)
        self._chunk: Optional[Iterator[Any]] = None  # the running chunk's iterator, if it has several items
        self._chunk_size = 0
        self._chunk_since = 0.0
        self._reported = (0, 0.0, 0.0)  # the last PROGRESS sent for this task: items, done, total
        self._reported_at = 0.0
        self._own: Optional[tuple[float, float]] = None  # what the running task said of itself
        self._pipes: list[_Pipe] = []
        self._fault_file: Optional[IO[str]] = None
        self._wake_read, self._wake_write = _wake_pipe()  # wakes the pump
        self._main_read, self._main_write = _wake_pipe()  # wakes the worker's thread waiting for work
        self._ticking = False  # the pump wakes on a timer (else only on output or a wake-up)
        self._main_wake = False  # the pump asked the worker's waiting thread to send
        self._poller = select.poll()  # the pump's: a poll object may not be polled by two threads at once
        self._check = select.poll()  # the worker thread's, at a flush
        self._work_poller: Optional[zmq.Poller] = None
        if capture:
            self._start_capture()
        self._thread = threading.Thread(target=self._pump, name="lucidity-output", daemon=True)
        self._thread.start()

    def install(self) -> None:
        """Make this the worker's reports for `report` (`lucidity.report_progress`) and `forward_nested`."""
        global _installed
        _installed = self

    def _start_capture(self) -> None:
        flush_output()  # what Python buffered so far goes where it was going, before the fds move
        self._pipes = [_Pipe(1), _Pipe(2)]
        for pipe in self._pipes:
            self._poller.register(pipe.read_fd, select.POLLIN)
            self._check.register(pipe.read_fd, select.POLLIN)
        # A crash's traceback must reach the node's log: the pump that would copy it dies with the process.
        self._fault_file = os.fdopen(os.dup(self._pipes[1].original), "w")
        faulthandler.enable(file=self._fault_file)
        stdout = sys.stdout
        if stdout is not None and hasattr(stdout, "reconfigure"):
            stdout.reconfigure(line_buffering=True)  # as on a terminal: a long task's lines leave as printed

    @property
    def is_capturing(self) -> bool:
        return self._capture

    # -- the worker's thread ---------------------------------------------------------------------------

    def task_started(self, identity: bytes, task_id: int) -> None:
        """The worker starts a task (under its lock): what is read from now on is this task's client's."""
        if self._capture and identity != self._current[0]:
            self._drain()  # what the previous client's task wrote stays its own
        self._current = (identity, task_id)
        self._stack.append(self._current)
        self._own = None
        self._reported = (0, 0.0, 0.0)

    def items(self, chunk: Iterable[Any]) -> Iterator[Any]:
        """Iterate a chunk so that the pump thread can count its finished items (nothing per item)."""
        iterator = iter(chunk)
        size = operator.length_hint(iterator)
        if size > 1:
            self._chunk_size = size
            self._chunk_since = time.monotonic()
            self._chunk = iterator
            if not self._ticking:
                self._wake()
        return iterator

    @property
    def task_reported(self) -> bool:
        """The running task reported its own progress (`record`): its reports travel over ZeroMQ, and so must
        its result, after them (a worker's door would let the result overtake the last report)."""
        return self._own is not None

    def task_ended(self) -> None:
        """The task returned or raised (under the worker's lock): a task it waited in, if any, is current again."""
        self._chunk = None
        self._own = None
        if self._stack:
            self._stack.pop()
        if self._stack:
            if self._capture:
                self._drain()
            self._current = self._stack[-1]

    def flush(self) -> None:
        """Send the output read so far, before results leave (the worker's thread, under its lock)."""
        if self._capture:
            self._send_outputs(end=True, drain=True)

    def wait_for_work(self, sock: zmq.Socket[Any]) -> None:
        """Block until a message waits on `sock`, sending late output meanwhile (a task's thread may print
        after its result was sent). Without forwarding, returns at once: the caller's recv blocks instead."""
        if not self._capture:
            return
        poller = self._work_poller
        if poller is None:
            poller = self._work_poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._main_read, zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._main_read in events:
                _clear(self._main_read)
                self._main_wake = False
                self.flush()
            if sock in events:
                return

    # -- any thread ------------------------------------------------------------------------------------

    def record(self, done: float, total: float) -> None:
        """The running task's own report of its progress (`lucidity.report_progress`)."""
        self._own = (float(done), float(total))
        if not self._ticking:
            self._wake()

    def forward_nested(self, data: bytes) -> None:
        """Output that a client in this worker received for its tasks (a task that submits tasks): it goes to
        the client of the outermost running task, the one that made that client, and never through the pipes,
        where it would be read again as this worker's own output, and sent back to that same client."""
        _write_all(self._pipes[1].original if self._pipes else 2, data)
        if not self._capture:
            return
        identity, task = self._stack[0] if self._stack else self._current
        with self._pending:
            self._keep(identity, task, data)
        if not self._ticking:
            self._wake()

    # -- the pump thread -------------------------------------------------------------------------------

    def _pump(self) -> None:
        self._poller.register(self._wake_read, select.POLLIN)
        while True:
            try:
                self._pump_once()
            except Exception:  # a bug of ours: the pump must go on, or a task printing a pipe-full would block
                import traceback

                text = f"lucidity worker {os.getpid()}: the output pump failed:\n{traceback.format_exc()}"
                _write_all(self._pipes[1].original if self._pipes else 2, text.encode(errors="replace"))

    def _pump_once(self) -> None:
        # Cleared before the look at what is due: a chunk starting meanwhile sees it clear and wakes us.
        self._ticking = False
        timeout = self._next_timeout()
        self._ticking = timeout is not None
        ready = self._poller.poll(None if timeout is None else max(1, int(timeout * 1000)))
        if any(fd == self._wake_read for fd, _ in ready):
            _clear(self._wake_read)
        if self._capture and any(fd != self._wake_read for fd, _ in ready):
            self._drain(whole=False)
        self._send_due()

    def _next_timeout(self) -> Optional[float]:
        """Seconds until something is due, or None when nothing is (wait for output or a wake-up)."""
        due = []
        outputs = list(self._outputs.values())
        if outputs:
            due.append(min(pending.since for pending in outputs) + SEND_DELAY)
        if self._chunk is not None or self._own is not None:
            since = max(self._chunk_since if self._chunk is not None else 0.0, self._reported_at)
            due.append(since + PROGRESS_INTERVAL)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _send_due(self) -> None:
        now = time.monotonic()
        output_due = any(now - pending.since >= SEND_DELAY for pending in list(self._outputs.values()))
        progress = self._progress_due(now)
        if not output_due and progress is None:
            return
        if not self._lock.acquire(blocking=False):
            # The worker's thread holds the lock: between tasks (it sends with the results), or waiting for
            # work (it sends when woken here).
            if output_due and not self._main_wake:
                self._main_wake = True
                _signal(self._main_write)
            return
        try:
            if output_due:
                self._send_outputs(end=False)
            identity, task = self._current
            if progress is not None and task == progress.task:
                self._send(identity, messages.encode(progress))
                self._reported = (progress.items, progress.done, progress.total)
            self._reported_at = now
        finally:
            self._lock.release()

    def _progress_due(self, now: float) -> Optional[messages.Progress]:
        chunk, own = self._chunk, self._own
        if chunk is None and own is None:
            return None
        if now - max(self._chunk_since if chunk is not None else 0.0, self._reported_at) < PROGRESS_INTERVAL:
            return None
        items = 0
        if chunk is not None:
            # The iterator has handed out (size - remaining) items; the last of them is still running.
            items = max(0, self._chunk_size - operator.length_hint(chunk) - 1)
        done, total = own if own is not None else (0.0, 0.0)
        if (items, done, total) == self._reported:
            return None
        return messages.Progress(self._current[1], items, done, total)

    # -- output ----------------------------------------------------------------------------------------

    def _drain(self, whole: bool = True) -> None:
        with self._pending:
            self._drain_locked(whole)

    def _drain_locked(self, whole: bool = True) -> None:
        """Read whatever the pipes hold now, copy it to the original fds, and keep it for the current client.

        Kept line by line: stdout and stderr share one stream at the client, so a line's start waits in its
        pipe's `partial` for its end (``print`` unbuffered writes a line and its newline separately), unless
        `whole` (the task ended, or the client changes) or it grew past `READ_SIZE`.
        """
        identity, task = self._current
        for pipe in self._pipes:
            while True:
                try:
                    data = os.read(pipe.read_fd, READ_SIZE)
                except BlockingIOError:
                    break
                if not data:
                    break
                _write_all(pipe.original, data)
                data = pipe.partial + data
                end = data.rfind(b"\n") + 1 if len(data) < READ_SIZE else len(data)
                pipe.partial = data[end:]
                if end:
                    self._keep(identity, task, data[:end])
        if whole:
            self._keep_partials()

    def _keep_partials(self) -> None:
        identity, task = self._current
        for pipe in self._pipes:
            if pipe.partial:
                self._keep(identity, task, pipe.partial)
                pipe.partial = b""

    def _keep(self, identity: bytes, task: int, data: bytes) -> None:
        if not identity:
            return  # no task has run yet: nobody to send it to (the node's log has it)
        pending = self._outputs.get(identity)
        if pending is None:
            pending = self._outputs[identity] = _Pending(task)
        pending.data += data
        if len(pending.data) > MAX_PENDING:
            del pending.data[:len(pending.data) - MAX_PENDING]

    def _send_outputs(self, end: bool, drain: bool = False) -> None:
        """Send what is kept for each client (under the worker's lock); with `drain`, what the pipes hold too.

        Under `_pending`, so after a drain the pump thread may be in the middle of: what it read goes now,
        not after the results that are about to leave.
        """
        with self._pending:
            if drain and self._check.poll(0):
                self._drain_locked()
            elif drain:
                self._keep_partials()
            if not self._outputs:
                return
            outputs, self._outputs = self._outputs, {}
        for identity, pending in outputs.items():
            self._send(identity, messages.encode(messages.Output(pending.task, end), [bytes(pending.data)]))

    def _wake(self) -> None:
        _signal(self._wake_write)


def forward_nested(data: bytes) -> bool:
    """Hand output a client in a worker received to the worker (see `Reports.forward_nested`); False outside one."""
    reports = _installed
    if reports is None:
        return False
    reports.forward_nested(data)
    return True


def _wake_pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


def _signal(write_fd: int) -> None:
    try:
        os.write(write_fd, b"w")
    except BlockingIOError:
        pass  # already signalled


def _clear(read_fd: int) -> None:
    try:
        while os.read(read_fd, 512):
            pass
    except BlockingIOError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except OSError:
            return  # the node's log is gone: the client still gets the output
        view = view[written:]
