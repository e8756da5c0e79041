"""The worker process: entry point and loop, nothing else.

A worker is started by its node daemon, binds one ROUTER socket and tells the daemon its address through a
pipe. Clients connect to it directly, so a task costs one hop each way::

    client --TASKS--> worker          (batches of tasks, functions by digest)
    client <--RESULTS-- worker        (batches of results)
    daemon ...reads the worker's slot (current task) and supervises its pid...

The loop is single-threaded: it drains whatever has arrived (tasks, cancellations), runs one task, and
sends results in batches when no more work is waiting, so a lone apply is answered at once and a flood of
tiny tasks is answered a batch at a time.
"""

from __future__ import annotations

import collections
import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence

import zmq

from .. import protocol, serialization, shipping, transport, waiting
from .namespaces import MainNamespaces

if TYPE_CHECKING:
    from ..security import Guard
from ..errors import MemoryLimitExceeded, ProtocolError
from . import limits
from ..sizes import format_size
from .slots import SlotTable

ACCEPTED = frozenset({protocol.Kind.TASKS, protocol.Kind.CANCEL, protocol.Kind.MODULE, protocol.Kind.DROP})
#: With a cluster secret: clients send work and modules, the node daemon drops a vanished client's work.
ACCEPTED_BY_ROLE = {
    "client": frozenset({protocol.Kind.TASKS, protocol.Kind.CANCEL, protocol.Kind.MODULE}),
    "node": frozenset({protocol.Kind.DROP}),
}
#: How long a worker waits for a client to answer a module request, in seconds.
FETCH_TIMEOUT = 10.0
#: Stack size of the threads a task starts, in bytes (see main).
THREAD_STACK_SIZE = 1024 * 1024
#: Functions kept per worker, by digest; evicted ones are fetched again through a MISSING reply.
FUNCTION_CACHE_SIZE = 512
#: Send accumulated results once this many are waiting, even while more tasks are queued.
RESULT_BATCH_MAX = 256
#: ... or once the oldest unsent result has waited this long, in seconds.
RESULT_BATCH_DELAY = 0.002
#: Results are batched only in a burst: this many tasks queued, each taking less than this (seconds).
BURST_QUEUE = 8
BURST_TASK_TIME = 0.0002

_MODES = frozenset({"call", "map", "starmap"})
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class _Task:
    __slots__ = ("identity", "client", "spec", "frames", "modules")

    def __init__(self, identity: bytes, client: bytes, spec: dict[str, Any], frames: Sequence[Any],
                 modules: dict[str, str]) -> None:
        self.identity = identity
        self.client = client
        self.spec = spec
        self.frames = frames
        self.modules = modules  # digests of the modules this client shipped here, as of this batch


class WorkerOptions(NamedTuple):
    """How the daemon configured this worker (see `lucidity node --help`)."""

    memory_limit: Optional[int] = None
    max_tasks: Optional[int] = None
    recycle_memory: Optional[int] = None
    notify_fd: Optional[int] = None


class Worker:
    """Runs tasks from any client that connects, one at a time."""

    def __init__(self, sock: zmq.Socket[Any], slots: SlotTable, index: int,
                 options: WorkerOptions = WorkerOptions(), guard: Optional["Guard"] = None) -> None:
        self._guard = guard
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
        self._outbox: dict[bytes, tuple[list[dict[str, Any]], list[Any]]] = {}
        self._outbox_count = 0
        self._outbox_since = 0.0
        self._tasks_done = 0
        self._mean_task_time = 0.0
        self._pool_counts: collections.Counter[str] = collections.Counter()
        self._waker = transport.Waker()
        waiting.install(self._serve_while_waiting, self._waker.wake)
        self._identity = b""
        self._module_replies: dict[str, tuple[Optional[shipping.ModuleSource], str]] = {}
        self._finder = shipping.ShippedFinder(self._fetch_module, os.environ.get("LUCIDITY_NODE", "?"))
        sys.meta_path.append(self._finder)

    def run(self) -> None:
        while True:
            if not self._queue:
                self._flush()
                self._receive(block=True)
            self._receive(block=False)
            if not self._queue:
                continue
            task = self._queue.popleft()
            self._run(task)
            if self._retiring or self._must_retire(task):
                self._flush()
                return
            # Hold results back for a batch only in a burst of tiny tasks; otherwise a result could wait
            # behind a slow task that happens to come next.
            in_burst = len(self._queue) >= BURST_QUEUE and self._mean_task_time < BURST_TASK_TIME
            if (not in_burst or self._outbox_count >= RESULT_BATCH_MAX
                    or time.monotonic() - self._outbox_since > RESULT_BATCH_DELAY):
                self._flush()

    # -- receiving ---------------------------------------------------------------------------------------

    def _receive(self, block: bool) -> None:
        """Take in every message waiting (and, if `block`, wait for the first)."""
        while block or transport.has_input(self._sock):
            block = False
            frames = self._sock.recv_multipart(copy=False)
            try:
                self._accept(frames)
            except ProtocolError as exc:
                print(f"lucidity worker {os.getpid()}: dropped a message: {exc}", file=sys.stderr)
            except Exception as exc:  # a message this worker could not handle drops itself, never the worker
                print(f"lucidity worker {os.getpid()}: dropped a message it could not handle: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)

    def _accept(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            raise ProtocolError("message without routing identity")
        identity = frames[0].bytes
        accepted = ACCEPTED if self._guard is None else self._guard.accepted(frames[0], self._accepted_by_role, ACCEPTED)
        message = protocol.decode(frames[1:], accepted)
        if message.kind is protocol.Kind.CANCEL:
            ids = message.meta["tasks"]
            if type(ids) is not list or not all(_is_task_id(i) for i in ids):
                raise ProtocolError("CANCEL 'tasks' must be a list of task ids")
            cancelled = set(ids)
            self._queue = collections.deque(
                t for t in self._queue if not (t.identity == identity and t.spec["id"] in cancelled)
            )
            return
        if message.kind is protocol.Kind.DROP:
            gone = _client_id(message.meta["client"])
            self._queue = collections.deque(t for t in self._queue if t.client != gone)
            self._mains.drop(message.meta["client"])
            return
        if message.kind is protocol.Kind.MODULE:
            if identity != self._identity:
                raise ProtocolError("a module arrived from a client this worker did not ask")
            self._module_replies[message.meta["name"]] = _module_from(message)
            return
        meta = message.meta
        payload = message.payload
        client = _client_id(meta["client"])
        functions = meta.get("functions", [])
        shipped = meta.get("ship", [])
        modules = meta.get("modules", {})
        main = meta.get("main")
        main_frames = 1 if isinstance(main, dict) and "filename" in main else 0
        try:
            if not isinstance(shipped, list) or not isinstance(modules, dict):
                raise ProtocolError("TASKS 'ship' must be a list and 'modules' an object")
            if not all(type(entry) is dict for entry in shipped) or not all(
                    type(name) is str and type(digest) is str for name, digest in modules.items()):
                raise ProtocolError("TASKS 'ship' entries must be objects, and 'modules' map names to digests")
            if main is not None and (not isinstance(main, dict) or not isinstance(main.get("argv", []), list)):
                raise ProtocolError("TASKS 'main' must be an object with an 'argv' list")
            _check_batch(functions, meta["tasks"])
            task_frames = protocol.unpack_items([spec["n"] for spec in meta["tasks"]],
                                                payload[len(shipped) + main_frames + len(functions):])
        except ProtocolError as exc:
            # Tell the sender, whose tasks would otherwise wait for results that never come.
            self._send(identity, protocol.encode(protocol.Kind.REFUSED, {"reason": str(exc)}))
            raise
        received = []
        for position, entry in enumerate(shipped):
            received.append(_module_from(protocol.Message(protocol.Kind.MODULE, entry, [payload[position]]))[0])
        # Shipped modules are kept per connection: a client cannot file code under another client's id.
        self._finder.receive(identity, [m for m in received if m is not None])
        offset = len(shipped)
        if main is not None:
            source = payload[offset].bytes if main_frames else None
            self._mains.receive(identity, meta["client"], main, source)
            offset += main_frames
        for name in functions:
            self._functions[name] = [payload[offset], None, b""]  # loaded lazily, on first use
            self._functions.move_to_end(name)
            offset += 1
        while len(self._functions) > FUNCTION_CACHE_SIZE:
            self._functions.popitem(last=False)
        for spec, frames in zip(meta["tasks"], task_frames):
            self._queue.append(_Task(identity, client, spec, frames, modules))

    def _fetch_module(self, name: str) -> tuple[Optional[shipping.ModuleSource], str]:
        """Ask the current task's client for a module's source (called by the import hook)."""
        self._module_replies.pop(name, None)
        self._send(self._identity, protocol.encode(protocol.Kind.FETCH, {"module": name}))
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
            entry[1] = serialization.loads_function(entry[0].buffer)
            entry[2] = self._identity
        self._functions.move_to_end(name)
        return entry[1]  # type: ignore[no-any-return]

    def _run(self, task: _Task) -> None:
        spec = task.spec
        if not self._mains.knows(task.identity):
            # Forgotten (DROP, or too many clients): the client sends its main entry again with the task.
            self._send(task.identity, protocol.encode(protocol.Kind.MISSING, {"tasks": [spec["id"]], "digests": [],
                                                                             "main": True}))
            return
        missing = [name for name in (spec["fn"], spec.get("init")) if name and name not in self._functions]
        if missing:
            self._send(task.identity, protocol.encode(protocol.Kind.MISSING, {"tasks": [spec["id"]], "digests": missing}))
            return
        task_limits = self._limits_of(spec)
        if task_limits.any:
            if task_limits.memory:
                limits.set_task_memory_cap(task_limits.memory)
            self._slots.begin(self._index, spec["id"], task.client, self._tasks_done, task_limits, time.process_time())
            if self._options.notify_fd is not None:
                os.write(self._options.notify_fd, b"L")  # wakes the daemon's watchdog
        else:
            self._slots.begin(self._index, spec["id"], task.client, self._tasks_done)
        started = time.perf_counter()
        self._identity = task.identity
        start_method = self._mains.activate(task.identity)
        if start_method is not None:
            _name_process(self._index, start_method)
        if self._finder.prepare(task.identity, task.modules):
            for entry in self._functions.values():
                entry[1] = None  # functions of forgotten modules must be looked up again
        try:
            frames = self._execute(spec, task.frames)
            status = "ok"
        except BaseException as exc:  # noqa: B036 - SystemExit and KeyboardInterrupt belong to the task
            if task_limits.memory and not isinstance(exc, MemoryLimitExceeded) and (
                    isinstance(exc, MemoryError) or limits.thread_failed_for_memory(exc)):
                exc = self._memory_breach(spec["id"], task_limits.memory, exc)
            frames = serialization.dumps_exception(self._finder.explain(exc), skip_frames_of=__file__)
            status = "error"
        elapsed = time.perf_counter() - started
        self._mean_task_time = 0.8 * self._mean_task_time + 0.2 * elapsed
        self._tasks_done += 1
        self._slots.end(self._index, self._tasks_done)
        if task_limits.memory:
            limits.set_task_memory_cap(None)
        self._after_task()
        results, items = self._outbox.setdefault(task.identity, ([], []))
        results.append({"id": spec["id"], "status": status, "t": elapsed})
        items.append(frames)
        if not self._outbox_count:
            self._outbox_since = time.monotonic()
        self._outbox_count += 1

    def _execute(self, spec: dict[str, Any], frames: Sequence[Any]) -> list[Any]:
        init = spec.get("init")
        initialized = self._mains.initialized(self._identity)
        if init and init not in initialized:
            initializer, initargs = self._function(init)  # type: ignore[misc]
            initializer(*initargs)
            initialized.add(init)
        function = self._function(spec["fn"])
        if function is None:
            raise ProtocolError(f"function {spec['fn']} is not cached on this worker")
        arguments = serialization.loads(frames)
        mode = spec["mode"]
        if mode == "call":
            args, kwargs = arguments
            value = function(*args, **kwargs)
        elif mode == "map":
            value = [function(item) for item in arguments]
        elif mode == "starmap":
            value = [function(*item) for item in arguments]
        else:
            raise ProtocolError(f"unknown task mode {mode!r}")
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
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting_slot = self._slots.read(self._index)
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._waker.read_fd, zmq.POLLIN)
        identity, client = self._identity, self._finder.client
        while not event.is_set():
            if self._queue:
                self._run(self._queue.popleft())
                self._flush()
                self._identity, self._finder.client = identity, client
                self._mains.activate(identity)
                self._slots.restore(self._index, waiting_slot)
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            events = dict(poller.poll(None if remaining is None else int(remaining * 1000)))
            if self._waker.read_fd in events:
                self._waker.drain()
            if self._sock in events:
                self._receive(block=False)
        return event.is_set()

    def _limits_of(self, spec: dict[str, Any]) -> limits.Limits:
        memory = spec.get("mem") or 0
        node_cap = self._options.memory_limit
        if node_cap:
            memory = min(memory, node_cap) if memory else node_cap
        return limits.Limits(int(memory), float(spec.get("timeout") or 0.0), float(spec.get("cpu") or 0.0))

    def _memory_breach(self, task_id: int, cap: int, error: BaseException) -> MemoryLimitExceeded:
        """A MemoryError under a cap: report the breach, and retire (the heap may be fragmented or full)."""
        self._retiring = True
        seen = limits.data_segment(os.getpid())
        node = os.environ.get("LUCIDITY_NODE", "?")
        breach = MemoryLimitExceeded(limits.describe_refusal(task_id, cap, node, os.getpid(), seen),
                                     limit=cap, peak=seen.resident, node=node, pid=os.getpid(), task=task_id)
        breach.__cause__ = error
        return breach

    def _after_task(self) -> None:
        """Kill what the task left behind, and retire if this worker has done its share or grown too big."""
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass  # reap children that already exited
            _kill_descendants()  # some child is still running
        except ChildProcessError:
            pass  # no children: the usual case, one system call
        if self._options.max_tasks and self._tasks_done >= self._options.max_tasks:
            self._retiring = True
        if self._options.recycle_memory:
            resident = limits.memory_of(os.getpid()) or 0
            if resident > self._options.recycle_memory:
                print(f"lucidity worker {os.getpid()}: {format_size(resident)} resident after a task, over "
                      f"the recycle threshold of {format_size(self._options.recycle_memory)}; retiring",
                      file=sys.stderr)
                self._retiring = True

    def _must_retire(self, task: _Task) -> bool:
        limit = task.spec.get("max")
        if not limit:
            return False
        pool = str(task.spec.get("pool", ""))
        self._pool_counts[pool] += 1
        return bool(self._pool_counts[pool] >= limit)

    # -- sending -----------------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._outbox:
            _flush_output()  # what the tasks printed is written before their results leave
        for identity, (results, items) in self._outbox.items():
            layout, frames = protocol.pack_items(items)
            for result, entry in zip(results, layout):
                result["n"] = entry
            # Whole: a client's sockets cap no frame size, and joining slices would cost it a copy.
            self._send(identity, protocol.encode(protocol.Kind.RESULTS, {"results": results}, frames, sliced=False))
        self._outbox.clear()
        self._outbox_count = 0

    def _send(self, identity: bytes, frames: list[Any]) -> None:
        transport.send_frames(self._sock, [identity, *frames])


def _module_from(message: protocol.Message) -> tuple[Optional[shipping.ModuleSource], str]:
    meta = message.meta
    if not meta.get("found"):
        return None, str(meta.get("reason", "the client cannot find it"))
    fields = (meta.get("name"), meta.get("filename"), meta.get("digest"))
    if not all(isinstance(f, str) for f in fields) or len(message.payload) != 1:
        raise ProtocolError("MODULE message without name, filename, digest and one source frame")
    source = message.payload[0]
    data = source.bytes if hasattr(source, "bytes") else bytes(source)
    return shipping.ModuleSource(meta["name"], bool(meta.get("package")), meta["filename"], meta["digest"], data), ""


def _check_batch(functions: Any, tasks: list[Any]) -> None:
    """Refuse a TASKS batch with a malformed entry, before anything is queued (frames: `unpack_items`)."""
    if type(functions) is not list:
        raise ProtocolError("TASKS 'functions' must be a list of digests")
    for name in functions:
        if type(name) is not str:
            raise ProtocolError("TASKS 'functions' must be a list of digests")
    for spec in tasks:
        if type(spec) is not dict or not _is_task_spec(spec):
            raise ProtocolError(f"malformed task entry {str(spec)[:80]}")


#: Bounds of the integers a task spec carries (they go into fixed-width slots, or count tasks).
MAX_INT64 = 2**63 - 1
MAX_SECONDS = 10**9


def _is_task_id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT64


def _client_id(text: Any) -> bytes:
    """A client's id (32 hex digits, 16 bytes in a slot), or ProtocolError."""
    if type(text) is not str or len(text) != 32:
        raise ProtocolError("a client id must be 32 hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ProtocolError("a client id must be 32 hex digits") from None


def _is_task_spec(spec: dict[str, Any]) -> bool:
    if not _is_task_id(spec.get("id")) or type(spec.get("fn")) is not str or "n" not in spec:
        return False
    if spec.get("mode") not in _MODES or type(spec.get("init", "")) is not str:
        return False
    memory = spec.get("mem", 0)
    if type(memory) is not int or not 0 <= memory <= MAX_INT64:
        return False
    for key in ("timeout", "cpu"):
        value = spec.get(key, 0)
        if type(value) not in (int, float) or not 0 <= value <= MAX_SECONDS:  # NaN fails too
            return False
    limit = spec.get("max")
    if limit is not None and (type(limit) is not int or not 0 <= limit <= MAX_INT64):
        return False
    return True


def _flush_output() -> None:
    """Write out what tasks printed: stdout to a file or a pipe is block-buffered, and a worker may be
    stopped at any moment once its results are sent (multiprocessing's workers flush when they exit)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # closed or replaced by the task: nothing of ours to write


def _name_process(index: int, start_method: str) -> None:
    """Name this worker as multiprocessing names a pool's workers ("ForkPoolWorker-3"), with its identity."""
    import multiprocessing
    from multiprocessing import process

    start_method = start_method or multiprocessing.get_all_start_methods()[0]
    prefix = {"fork": "ForkPoolWorker", "spawn": "SpawnPoolWorker", "forkserver": "ForkServerPoolWorker"}
    current = process.current_process()
    current.name = f"{prefix.get(start_method, 'PoolWorker')}-{index + 1}"
    current._identity = (index + 1,)


def _kill_descendants() -> None:
    """SIGKILL and reap every process this worker's task started (orphans were reparented to us)."""
    import psutil

    me = psutil.Process()
    children = me.children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)
    try:
        while os.waitpid(-1, os.WNOHANG) != (0, 0):
            pass
    except ChildProcessError:
        pass


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this worker when its daemon dies (Linux), and check it has not already.

    The worker is also made a subreaper, so that processes a task starts and abandons become its children
    and can be stopped when the task ends.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _apply_sys_path() -> None:
    """Put the caller's sys.path first, as multiprocessing's workers inherit it (embedded clusters only)."""
    inherited = os.environ.get("LUCIDITY_SYS_PATH")
    if inherited:
        entries = [p for p in inherited.split(os.pathsep)]
        sys.path[:] = entries + [p for p in sys.path if p not in entries]


class _Arguments(NamedTuple):
    slots: str
    slot_count: int
    slot_index: int
    bind: str
    ready_fd: int
    parent: int
    memory_limit: Optional[int]
    max_tasks: Optional[int]
    recycle_memory: Optional[int]
    ports: Optional[str]  # LO-HI: listen on a port of this range (an operator's firewall opening)


def _parse(argv: list[str]) -> _Arguments:
    """The daemon's ``--name value`` arguments (argparse costs a worker start-up time and memory)."""
    given = dict(zip(argv[::2], argv[1::2]))
    unknown = set(given) - {f"--{name.replace('_', '-')}" for name in _Arguments._fields}
    if len(argv) % 2 or unknown:
        raise SystemExit(f"lucidity worker: bad arguments {argv} (it is started by `lucidity node`)")
    values: dict[str, Any] = {}
    for name, kind in _Arguments.__annotations__.items():
        text = given.get(f"--{name.replace('_', '-')}")
        if text is None and "Optional" not in str(kind):
            raise SystemExit(f"lucidity worker: --{name.replace('_', '-')} is required")
        values[name] = None if text is None else (text if name in ("slots", "bind", "ports") else int(text))
    # argparse-style names: --slot-count, --slot-index, ...
    return _Arguments(**values)


def main(argv: Optional[list[str]] = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # First, before anything a task could touch: the node's memory cap as a hard limit.
    if args.memory_limit:
        limits.set_hard_memory_cap(args.memory_limit)
    faulthandler.enable()
    # Thread stacks count toward RLIMIT_DATA: 8 MiB each by default would make 16 idle threads cost a
    # 200 MB cap 130 MiB. Python threads a task starts get this much instead (native pools keep theirs).
    threading.stack_size(THREAD_STACK_SIZE)
    _die_with_parent(args.parent)
    _apply_sys_path()
    slots = SlotTable(args.slots, args.slot_count, create=False)
    context = transport.new_context()
    guard = None
    if os.environ.get("LUCIDITY_SECRET") or os.environ.get("LUCIDITY_SECRET_FILE"):
        from ..security import guard_from_environment  # only secured clusters pay for the import

        guard = guard_from_environment(context)
    sock = transport.new_socket(context, zmq.ROUTER)
    if guard is not None:
        guard.listen(sock)
    if args.ports:
        from ..addresses import parse, parse_port_range

        address = transport.bind_in_range(sock, parse(args.bind, allow_port_zero=True), parse_port_range(args.ports))
    else:
        address = transport.bind(sock, args.bind)
    os.write(args.ready_fd, f"{address}\n".encode())
    # The pipe stays open: a byte on it tells the daemon a limited task started.
    options = WorkerOptions(args.memory_limit, args.max_tasks, args.recycle_memory, args.ready_fd)
    try:
        Worker(sock, slots, args.slot_index, options, guard).run()
    finally:
        if guard is not None:
            guard.close()
        sock.close(linger=int(transport.LINGER * 1000))
        context.term()


if __name__ == "__main__":
    main()
