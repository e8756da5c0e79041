"""The worker process: entry point and loop (what the process does for itself is in `workerprocess`).

A worker is started by its node daemon, binds one ROUTER socket and tells the daemon its address through a
pipe. Clients connect to it directly, so a task costs one hop each way::

    client --TASKS--> worker          (batches of tasks, functions by digest)
    client <--RESULTS-- worker        (batches of results)
    caller thread --TASKS--> door --RESULTS--> caller thread   (a lone blocking call, this machine only)
    daemon ...reads the worker's slot (current task) and supervises its pid...

On a cluster reached over ipc:// without a secret, the worker also has a door (`lucidity.node.door`): a
Unix socket where a caller's own thread brings one task and reads its result. Such a task is its
client's like any other (same queue, same namespace); only its result goes back by the door.

The loop is single-threaded: it drains whatever has arrived (tasks, cancellations), runs one task, and
sends results in batches when no more work is waiting, so a lone apply is answered at once and a flood of
tiny tasks is answered a batch at a time.

Besides the current task, the worker keeps in its slot what it has done (`lucidity.node.slots`): tasks
by outcome, a histogram of their durations, and the bytes it received and sent, which its daemon
exports as metrics without a message per task. `lucidity.node.workerprocess` owns the rest of being a
process: its arguments, dying with its daemon, its name, killing what tasks leave behind.

About 600 lines, past the 500 we aim for: what remains is one class whose loop, message handling and
giving back of queued tasks (to the shedder, a WITHDRAW, a retiring worker's last arrivals) all read and
write the same queue, sockets and lock; the decisions that need none of them live in `shedding`, `output`,
`slots`, `door` and `workerprocess`.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import zmq

from .. import messages, protocol, serialization, shipping, transport, waiting
from ..streams import MessageStream, door_path
from ..errors import MemoryLimitExceeded, ProtocolError
from ..messages import ResultEntry, ResultStatus, TaskMode, TaskSpec
from . import limits
from .door import Door
from .namespaces import MainNamespaces
from .output import Reports, forwarding_enabled
from .shedding import Shedder
from .slots import TALLY_FIELDS, SlotTable
from .workerprocess import (WorkerOptions, apply_sys_path, die_with_parent, flush_output, grown_past,
                            memory_breach, name_process, parse_arguments, reap_children)

if TYPE_CHECKING:
    from ..security import Guard

ACCEPTED = frozenset({protocol.Kind.TASKS, protocol.Kind.CANCEL, protocol.Kind.WITHDRAW, protocol.Kind.MODULE,
                      protocol.Kind.DROP})
#: With a cluster secret: clients send work and modules, the node daemon drops a vanished client's work.
ACCEPTED_BY_ROLE = {"client": frozenset({protocol.Kind.TASKS, protocol.Kind.CANCEL, protocol.Kind.WITHDRAW,
                                          protocol.Kind.MODULE}),
                    "node": frozenset({protocol.Kind.DROP})}
#: How long a worker waits for a client to answer a module request, in seconds.
FETCH_TIMEOUT = 10.0
#: Stack size of the threads a task starts, in bytes (see main).
THREAD_STACK_SIZE = 1024 * 1024
#: Functions kept per worker, by digest; evicted ones are fetched again through a MISSING reply.
FUNCTION_CACHE_SIZE = 512
#: How long a retiring worker stays after its last results, so that its clients read them (see _linger).
RETIRE_LINGER = 0.2
#: Send accumulated results once this many are waiting, even while more tasks are queued.
RESULT_BATCH_MAX = 256
#: ... or once the oldest unsent result has waited this long, in seconds.
RESULT_BATCH_DELAY = 0.002
#: While tasks are queued, the worker looks for new messages between them at most this often, in seconds:
#: a look per task cost a map of tiny tasks a system call or two each. (A long task's arrivals are read by
#: the shedder; an idle worker reads at once.)
LOOK_INTERVAL = 0.001
#: Results are batched only in a burst: this many tasks queued, each taking less than this (seconds).
BURST_QUEUE = 8
BURST_TASK_TIME = 0.0002
#: The modules of a batch that lists none (one object, so that the finder is prepared once per client).
_NO_MODULES: Mapping[str, str] = types.MappingProxyType({})
#: A task without limits, on a node without a memory cap: the usual case.
_NO_LIMITS = limits.Limits()
#: Positions in the worker's counters (`lucidity.node.slots.Tally`).
_OK, _ERROR, _MEMORY, _DROPPED, _RECEIVED, _SENT = range(len(TALLY_FIELDS))



class _Task:
    __slots__ = ("identity", "client", "spec", "frames", "modules", "reply")

    def __init__(self, identity: bytes, client: bytes, spec: TaskSpec, frames: Sequence[Any],
                 modules: Mapping[str, str], reply: Optional[MessageStream]) -> None:
        self.identity = identity
        self.client = client
        self.spec = spec
        self.frames = frames
        self.modules = modules  # digests of the modules this client shipped here, as of this batch
        self.reply = reply  # the door's stream it came by (its result goes back there), or None: ZeroMQ


class Worker:
    """Runs tasks from any client that connects, one at a time."""

    def __init__(self, sock: zmq.Socket[Any], slots: SlotTable, index: int,
                 options: WorkerOptions = WorkerOptions(), guard: Optional["Guard"] = None,
                 door: Optional[Door] = None) -> None:
        self._guard = guard
        self._door = door  # callers on this machine (lucidity.node.door), if it has one
        self._accepted_by_role = {}
        if guard is not None:
            from ..security import Role

            self._accepted_by_role = {Role(role): kinds for role, kinds in ACCEPTED_BY_ROLE.items()}
        self._options = options
        self._retiring = False
        self._sock = sock
        self._slots = slots
        self._index = index
        # digest -> [serialized function, loaded function or None, the connection it was loaded for]
        self._functions: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        self._mains = MainNamespaces()
        self._queue: collections.deque[_Task] = collections.deque()
        # Clients told this worker is busy (their tasks given back behind another's long task): told when it
        # is free again, since they send it nothing until it answers, and it may owe them no answer.
        self._told_busy: set[bytes] = set()
        self._outbox: dict[bytes, tuple[list[ResultEntry], list[Any]]] = {}
        self._outbox_count = 0
        self._outbox_since = 0.0
        self._tasks_done = 0
        self._next_look = 0.0  # when to look for messages between queued tasks next (LOOK_INTERVAL)
        self._mean_task_time = 0.0
        self._pool_counts: collections.Counter[str] = collections.Counter()
        # Views of this worker's slot: counting is a store into memory its daemon reads for the metrics.
        self._tally = slots.counters(index)
        self._counters = self._tally.counts
        self._waker = transport.Waker()
        # Held by this thread except while the caller's code runs: the shedder uses the socket and the
        # queue only under it (lucidity.node.shedding).
        self._lock = threading.RLock()
        self._shedder = Shedder(self._lock, self._give_back_queued, lambda: self._receive(block=False))
        waiting.install(self._serve_while_waiting, self._waker.wake)
        if door is not None:
            door.poller.register(self._waker.read_fd, zmq.POLLIN)  # a nested wait's result came (see below)
        # What tasks print and how far they are, for their clients (lucidity.node.output).
        self._reports = Reports(self._lock, self._send, forwarding_enabled())
        self._reports.install()
        self._identity = b""
        self._prepared_for: tuple[bytes, Mapping[str, str]] = (b"", _NO_MODULES)  # the finder's last prepare
        self._module_replies: dict[str, tuple[Optional[shipping.ModuleSource], str]] = {}
        self._finder = shipping.ShippedFinder(self._fetch_module, os.environ.get("LUCIDITY_NODE", "?"))
        sys.meta_path.append(self._finder)

    def run(self) -> None:
        self._lock.acquire()
        while True:
            if self._queue:
                now = time.monotonic()
                if now >= self._next_look:  # cancellations and more work, between tasks
                    self._next_look = now + LOOK_INTERVAL
                    self._receive(block=False)
            else:
                self._flush()
                if self._door is None:
                    self._reports.wait_for_work(self._sock)
                    self._receive(block=True)
                else:
                    self._receive_any(None)
                if not self._queue:
                    continue
            task = self._queue.popleft()
            self._run(task)
            if self._retiring or self._must_retire(task):
                self._flush()
                self._linger()
                return
            # Hold results back for a batch only in a burst of tiny tasks; otherwise a result could wait
            # behind a slow task that happens to come next.
            in_burst = len(self._queue) >= BURST_QUEUE and self._mean_task_time < BURST_TASK_TIME
            if (not in_burst or self._outbox_count >= RESULT_BATCH_MAX
                    or time.monotonic() - self._outbox_since > RESULT_BATCH_DELAY):
                self._flush()

    # -- receiving ---------------------------------------------------------------------------------------

    def _receive(self, block: bool) -> None:
        """Take in every message waiting (and, if `block`, wait for the first).

        All of them before the next task runs: the shedder gives back only what is queued when a long one starts.
        """
        if self._door is not None and not block:
            self._read_door(self._door.ready_now())
        received = 0
        sock = self._sock
        recv = sock.recv
        identity_as_frame = self._guard is not None  # it reads the peer's key from it; else bytes cost less
        while block or transport.has_input(sock):
            block = False
            # recv_multipart without its getsockopt(RCVMORE) per frame (pyzmq makes an Enum of the option each
            # time: 2.5 us for four frames). A ROUTER's identity frame always has more after it.
            identity = recv(copy=not identity_as_frame)
            frame = recv(copy=False)
            frames = [identity, frame]
            received += len(identity) + len(frame)
            while frame.more:
                frame = recv(copy=False)
                frames.append(frame)
                received += len(frame)
            try:
                self._accept(frames)
            except ProtocolError as exc:
                print(f"lucidity worker {os.getpid()}: dropped a message: {exc}", file=sys.stderr)
            except Exception:  # a bug of ours: the message drops itself, never the worker
                import traceback

                print(f"lucidity worker {os.getpid()}: dropped a message it could not handle:", file=sys.stderr)
                traceback.print_exc()
        if received:
            self._counters[_RECEIVED] += received

    def _receive_any(self, timeout_ms: Optional[int]) -> None:
        """Wait (at most `timeout_ms`) for a message on the ZeroMQ socket or at the door; take in all that came."""
        assert self._door is not None
        zmq_ready, ready = self._door.wait(timeout_ms)
        if self._waker.read_fd in ready:
            self._waker.drain()
            ready.remove(self._waker.read_fd)
        self._read_door(ready)
        if zmq_ready:
            self._receive(block=False)

    def _read_door(self, fds: list[int]) -> None:
        if not fds:
            return
        door = self._door
        assert door is not None
        received = door.received
        for identity, message, stream in door.read(fds, self._refuse):
            try:
                self._accept_tasks(identity, message, stream)
            except ProtocolError:
                door.drop(stream)  # refused, as over ZeroMQ
        self._counters[_RECEIVED] += door.received - received

    def _refuse(self, identity: bytes, reason: str) -> None:
        """Tell the sender of tasks this worker could not read, which would otherwise wait for their results."""
        print(f"lucidity worker {os.getpid()}: refused a message: {reason}", file=sys.stderr)
        self._send(identity, messages.encode(messages.Refused(reason)))

    def _accept(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            raise ProtocolError("message without routing identity")
        identity = frames[0] if type(frames[0]) is bytes else frames[0].bytes
        accepted = ACCEPTED if self._guard is None else self._guard.accepted(frames[0], self._accepted_by_role, ACCEPTED)
        message = protocol.decode(frames[1:], accepted)
        if message.kind is protocol.Kind.TASKS:
            self._accept_tasks(identity, message, None)
            return
        body = messages.parse(message)
        if isinstance(body, (messages.Cancel, messages.Withdraw)):
            named = set(body.tasks)
            kept = collections.deque(t for t in self._queue if not (t.identity == identity and t.spec.id in named))
            if isinstance(body, messages.Withdraw):  # named, as many as it still held: they run elsewhere
                held = tuple(t.spec.id for t in self._queue if t.identity == identity and t.spec.id in named)
                self._send(identity, messages.encode(messages.Missing(held, ())))
            self._queue = kept
        elif isinstance(body, messages.Drop):
            gone = bytes.fromhex(body.client)
            queued = len(self._queue)
            self._queue = collections.deque(t for t in self._queue if t.client != gone)
            self._counters[_DROPPED] += queued - len(self._queue)
            self._mains.drop(body.client)
        elif isinstance(body, messages.Module):
            if identity != self._identity:
                raise ProtocolError("a module arrived from a client this worker did not ask")
            self._module_replies[body.name] = body.source(message.payload)

    def _accept_tasks(self, identity: bytes, message: protocol.Message, reply: Optional[MessageStream]) -> None:
        try:
            body = messages.Tasks.from_meta(message.meta)
            payload = body.split(message.payload)
        except ProtocolError as exc:
            self._refuse(identity, str(exc))
            raise
        if body.ship:  # most batches carry tasks alone: modules, the main entry and functions come first
            received = [entry.source([frame])[0] for entry, frame in zip(body.ship, payload.modules)]
            # Shipped modules are kept per connection: a client cannot file code under another client's id.
            self._finder.receive(identity, [m for m in received if m is not None])
        if body.main is not None:
            self._mains.receive(identity, body.client, body.main, None if payload.main is None else payload.main.bytes)
        if body.functions:
            for name, data in zip(body.functions, payload.functions):
                self._functions[name] = [data, None, b""]  # loaded lazily, on first use
                self._functions.move_to_end(name)
            while len(self._functions) > FUNCTION_CACHE_SIZE:
                self._functions.popitem(last=False)
        client = bytes.fromhex(body.client)
        modules = body.modules or _NO_MODULES
        for spec, frames in zip(body.tasks, payload.items):
            self._queue.append(_Task(identity, client, spec, frames, modules, reply))

    def _fetch_module(self, name: str) -> tuple[Optional[shipping.ModuleSource], str]:
        """Ask the current task's client for a module's source (called by the import hook)."""
        with self._lock:
            self._module_replies.pop(name, None)
            self._send(self._identity, messages.encode(messages.Fetch(name)))
            deadline = time.monotonic() + FETCH_TIMEOUT
            while name not in self._module_replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sock.poll(int(remaining * 1000)):
                    return None, f"the client did not answer within {FETCH_TIMEOUT:.0f} s"
                self._receive(block=False)
            return self._module_replies.pop(name)

    # -- running -----------------------------------------------------------------------------------------

    def _function(self, name: str) -> Optional[Callable[..., Any]]:
        entry = self._functions.get(name)
        if entry is None:
            return None
        if entry[1] is None or entry[2] != self._identity:
            # Loaded for this connection: names of the caller's __main__ resolve in its own namespace.
            entry[1] = serialization.loads_function(getattr(entry[0], "buffer", entry[0]))
            entry[2] = self._identity
        self._functions.move_to_end(name)
        return entry[1]  # type: ignore[no-any-return]

    def _run(self, task: _Task) -> None:
        spec = task.spec
        if not self._mains.knows(task.identity):
            # Forgotten (DROP, or too many clients): the client sends its main entry again with the task.
            self._send(task.identity, messages.encode(messages.Missing((spec.id,), (), main=True)))
            return
        functions = self._functions
        if spec.function not in functions or (spec.initializer and spec.initializer not in functions):
            missing = tuple(name for name in (spec.function, spec.initializer) if name and name not in functions)
            self._send(task.identity, messages.encode(messages.Missing((spec.id,), missing)))
            return
        task_limits = self._limits_of(spec)
        if task_limits is not _NO_LIMITS:
            if task_limits.memory:
                limits.set_task_memory_cap(task_limits.memory)
            self._slots.begin(self._index, spec.id, task.client, self._tasks_done, task_limits, time.process_time())
            if self._options.notify_fd is not None:
                os.write(self._options.notify_fd, b"L")  # wakes the daemon's watchdog
        else:
            self._slots.begin(self._index, spec.id, task.client, self._tasks_done)
        started = time.perf_counter_ns()  # whole nanoseconds: a short repr in the RESULTS meta
        self._identity = task.identity
        start_method = self._mains.activate(task.identity)
        if start_method is not None:
            name_process(self._index, start_method)
        if (task.identity, task.modules) != self._prepared_for:
            # Once per client and batch manifest: the same pair again finds nothing stale.
            self._prepared_for = (task.identity, task.modules)
            if self._finder.prepare(task.identity, task.modules):
                for entry in self._functions.values():
                    entry[1] = None  # functions of forgotten modules must be looked up again
        outcome = _OK
        self._shedder.task_started(bool(self._queue))
        self._reports.task_started(task.identity, spec.id)
        try:
            self._lock.release()  # the caller's code runs: the shedder may give back what waits behind it
            try:
                frames = self._execute(spec, task.frames)
            finally:
                self._lock.acquire()
            status = ResultStatus.OK
        except BaseException as exc:  # noqa: B036 - SystemExit and KeyboardInterrupt belong to the task
            outcome = _ERROR
            if task_limits.memory and not isinstance(exc, MemoryLimitExceeded) and (
                    isinstance(exc, MemoryError) or limits.thread_failed_for_memory(exc)):
                exc = memory_breach(spec.id, task_limits.memory, exc)
                self._retiring = True  # the heap may be fragmented or full
                outcome = _MEMORY
            frames = serialization.dumps_exception(self._finder.explain(exc), skip_frames_of=__file__)
            status = ResultStatus.ERROR
        elapsed = (time.perf_counter_ns() - started) / 1e9
        sent = 0
        if task.reply is not None and not self._reports.task_reported:
            # Its caller waits on the stream: answered first, the bookkeeping after.
            assert self._door is not None
            reap_children()  # what the task left behind is gone before its result arrives, as below
            flush_output()  # and what it printed is written
            sent = self._door.answer(task.reply, ResultEntry(spec.id, status, elapsed), frames)
        self._reports.task_ended()
        self._mean_task_time = 0.8 * self._mean_task_time + 0.2 * elapsed
        self._shedder.task_ended(elapsed)
        if self._told_busy:
            self._tell_free(task.identity)
        self._tasks_done += 1
        self._slots.end(self._index, self._tasks_done)
        self._tally.count_task(outcome, elapsed)
        if task_limits.memory:
            limits.set_task_memory_cap(None)
        self._after_task()
        if sent:
            self._counters[_SENT] += sent
            return  # else (no stream, or it broke) the result goes the ZeroMQ way, with the others
        waiting = self._outbox.get(task.identity)
        if waiting is None:
            waiting = self._outbox[task.identity] = ([], [])
        waiting[0].append(ResultEntry(spec.id, status, elapsed))
        waiting[1].append(frames)
        if not self._outbox_count:
            self._outbox_since = time.monotonic()
        self._outbox_count += 1

    def _execute(self, spec: TaskSpec, frames: Sequence[Any]) -> list[Any]:
        init = spec.initializer
        if init:
            initialized = self._mains.initialized(self._identity)
            if init not in initialized:
                initializer, initargs = self._function(init)  # type: ignore[misc]
                initializer(*initargs)
                initialized.add(init)
        function = self._function(spec.function)
        if function is None:
            raise ProtocolError(f"function {spec.function} is not cached on this worker")
        arguments = serialization.loads(frames)
        mode = spec.mode
        if mode is TaskMode.CALL:
            args, kwargs = arguments
            value = function(*args, **kwargs)
        elif mode is TaskMode.MAP:
            value = [function(item) for item in self._reports.items(arguments)]
        else:
            value = [function(*item) for item in self._reports.items(arguments)]
        try:
            return serialization.dumps(value, "result", serialization.EVERYTHING)
        except Exception as exc:
            from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

            raise MaybeEncodingError(exc, value) from None

    def _serve_while_waiting(self, event: threading.Event, timeout: Optional[float]) -> bool:
        """While the running task waits for other tasks, run the tasks queued here (see lucidity.waiting).

        Without this, workers whose tasks all wait on children queued behind them would deadlock. Tasks
        run here nest on the waiting task's stack; its slot is restored when each one ends.
        """
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            waiting_slot = self._slots.read(self._index)
            poller = zmq.Poller()
            poller.register(self._sock, zmq.POLLIN)
            poller.register(self._waker.read_fd, zmq.POLLIN)
            timeout_ms: Optional[int] = None
            identity, client = self._identity, self._finder.client
            while not event.is_set():
                if self._queue:
                    self._run(self._queue.popleft())
                    self._flush()
                    self._identity, self._finder.client = identity, client
                    self._prepared_for = (b"", _NO_MODULES)  # the finder was pointed back by hand: prepare anew
                    self._mains.activate(identity)
                    self._slots.restore(self._index, waiting_slot)
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                timeout_ms = None if remaining is None else int(remaining * 1000)
                if self._door is not None:
                    self._receive_any(timeout_ms)  # callers at the door too
                    continue
                events = dict(poller.poll(timeout_ms))
                if self._waker.read_fd in events:
                    self._waker.drain()
                if self._sock in events:
                    self._receive(block=False)
            return event.is_set()

    def _limits_of(self, spec: TaskSpec) -> limits.Limits:
        memory = spec.memory
        node_cap = self._options.memory_limit
        if not (memory or node_cap or spec.timeout or spec.cpu_time):
            return _NO_LIMITS
        if node_cap:
            memory = min(memory, node_cap) if memory else node_cap
        return limits.Limits(memory, float(spec.timeout), float(spec.cpu_time))

    def _after_task(self) -> None:
        """Kill what the task left behind, and retire if this worker has done its share or grown too big."""
        reap_children()
        if self._options.max_tasks and self._tasks_done >= self._options.max_tasks:
            self._retiring = True
        if self._options.recycle_memory and grown_past(self._options.recycle_memory):
            self._retiring = True

    def _must_retire(self, task: _Task) -> bool:
        limit = task.spec.max_tasks
        if not limit:
            return False
        self._pool_counts[task.spec.pool] += 1
        return self._pool_counts[task.spec.pool] >= limit

    # -- sending -----------------------------------------------------------------------------------------

    def _linger(self) -> None:
        """A retiring worker stays `RETIRE_LINGER`, giving back what arrives: tasks a client sent it after its
        last results would otherwise wait, unread, until its node reports it gone and the client sends them
        elsewhere. (Its results are safe either way: a client's pipe to a worker outlives the connection.)"""
        deadline = time.monotonic() + RETIRE_LINGER
        while True:
            self._give_back_queued(busy=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sock.poll(max(1, int(remaining * 1000))):
                return
            self._receive(block=False)

    def _give_back_queued(self, busy: bool = True) -> bool:
        """Give every queued task back to its client, to run elsewhere (the shedder's, under the lock)."""
        by_client: dict[bytes, list[int]] = collections.defaultdict(list)
        for task in self._queue:
            by_client[task.identity].append(task.spec.id)
        self._queue.clear()
        for identity, ids in by_client.items():
            self._send(identity, messages.encode(messages.Missing(tuple(ids), (), busy=busy)))
            if busy:
                self._told_busy.add(identity)
        return bool(by_client)

    def _tell_free(self, answered: bytes) -> None:
        """The long task ended: the clients told this worker was busy may send it work again (an empty
        MISSING, not busy). The client of the task that ended learns it from the result."""
        for identity in self._told_busy - {answered}:
            self._send(identity, messages.encode(messages.Missing((), ())))
        self._told_busy.clear()

    def _flush(self) -> None:
        if self._outbox:
            flush_output()  # what the tasks printed is written before their results leave
            self._reports.flush()
        for identity, (results, items) in self._outbox.items():
            layout, frames = protocol.pack_items(items)
            # Whole: a client's sockets cap no frame size, and joining slices would cost it a copy.
            self._send(identity, messages.encode(messages.Results(tuple(results), tuple(layout)), frames, sliced=False))
        self._outbox.clear()
        self._outbox_count = 0

    def _send(self, identity: bytes, frames: list[Any]) -> None:
        sent = 0
        for frame in frames:
            sent += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
        self._counters[_SENT] += sent
        transport.send_frames(self._sock, [identity, *frames])


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    # First, before anything a task could touch: the node's memory cap as a hard limit.
    if args.memory_limit:
        limits.set_hard_memory_cap(args.memory_limit)
    faulthandler.enable()
    # Thread stacks count toward RLIMIT_DATA: 8 MiB each by default would make 16 idle threads cost a
    # 200 MB cap 130 MiB. Python threads a task starts get this much instead (native pools keep theirs).
    threading.stack_size(THREAD_STACK_SIZE)
    die_with_parent(args.parent)
    apply_sys_path()
    slots = SlotTable(args.slots, args.slot_count, create=False)
    context = transport.new_context()
    guard = None
    if os.environ.get("LUCIDITY_SECRET") or os.environ.get("LUCIDITY_SECRET_FILE"):
        from ..security import guard_from_environment  # only secured clusters pay for the import

        guard = guard_from_environment(context)
    sock = transport.new_socket(context, zmq.ROUTER)
    if guard is not None:
        guard.listen(sock)
    door = None
    if args.ports:
        from ..addresses import parse, parse_port_range

        address = transport.bind_in_range(sock, parse(args.bind, allow_port_zero=True), parse_port_range(args.ports))
    else:
        address = transport.bind(sock, args.bind)
    path = door_path(address)
    if path is not None and guard is None and not forwarding_enabled():
        # Callers on this machine may bring a lone call to the door (lucidity.node.door); a cluster with a
        # secret has none, and forwarded output travels with results only over ZeroMQ.
        door = Door(path, sock)
    os.write(args.ready_fd, f"{address}\n".encode())
    # The pipe stays open: a byte on it tells the daemon a limited task started.
    options = WorkerOptions(args.memory_limit, args.max_tasks, args.recycle_memory, args.ready_fd)
    try:
        Worker(sock, slots, args.slot_index, options, guard, door).run()
    finally:
        if door is not None:
            door.close()
        if guard is not None:
            guard.close()
        sock.close(linger=int(transport.LINGER * 1000))
        context.term()


if __name__ == "__main__":
    main()
