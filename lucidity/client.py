"""The one core under the three faces: membership, routing, the in-flight table and flow control.

A `Client` owns one I/O thread, which owns its two sockets: a DEALER to the control node, and one ROUTER
connected to every node daemon and worker it uses, each named by a routing id of our choosing
(``ZMQ_CONNECT_ROUTING_ID``), so that a client costs a file per peer, not a socket's four::

    caller threads --submit/cancel (under a lock) + Waker--> I/O thread
    I/O thread --WATCH--> control --NODES--> I/O thread            (where the nodes are)
    I/O thread --HELLO/HEARTBEAT--> node daemon --WORKERS/TASK_FAILED--> I/O thread
    I/O thread --TASKS--> worker --RESULTS--> I/O thread --on_done--> the faces
    caller thread --TASKS--> worker's door --RESULTS--> caller thread   (`call`: lucidity.directcall)

Tasks go straight to workers (one hop each way). Each worker gets a window of tasks in flight: small for
slow tasks, so that work spreads evenly, and larger for tiny ones, so that they travel in batches; the
window adapts to the task durations the worker reports. Tasks a worker had not started when it went away
are sent again elsewhere; the task it was running fails with `WorkerCrashed`, as its node reports.

The faces (Pool, Executor, jobs) build `Task`s, call `submit`, and receive each outcome exactly once
through the task's ``on_done``, called on the I/O thread.

What is decided here is only what needs a socket: the decisions live in pure modules the I/O thread
consults, each tested without one: `lucidity.tasktable` (which task goes to which worker, resends, retries,
cancellation), `lucidity.roster` (what the control node's lists and the nodes' reports mean) and
`lucidity.packing` (what each worker lacks). What stays is one thread's sockets, its loop, and the
caller-facing methods that hand it work (`call` among them, a lone blocking call its caller's thread
carries to a worker's door on this machine, with the task in the same table); they share every field with
it, which is why they are one module (about 800 lines) rather than two that would pass the same state back
and forth.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import struct
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Optional, Sequence

import zmq

from . import (addresses, directcall, mainscript, messages, protocol, reports, security, serialization, shipping,
               streams, transport, waiting)
from .errors import (AuthenticationError, ClusterUnavailable, NodeLost, ProtocolError, SerializationError,
                     VersionMismatch)
from .links import NodeInfo, NodeLink, WorkerLink, failure_error
from .messages import FailureReason, FailureReport, ResultStatus, TaskMode, WorkerEntry
from .packing import FunctionCache, Packer
from .roster import HEARTBEAT_INTERVAL, Roster
from .task import FunctionRef, Task, TaskMaker
from .tasktable import Lane, TaskTable

logger = logging.getLogger(__name__)

__all__ = ["Client", "NodeInfo"]  # NodeInfo is defined in lucidity.links

#: How long the client waits for a cluster with at least one worker when it starts, in seconds.
CONNECT_TIMEOUT = 30.0
#: How long queued tasks wait while no worker is known before they fail, in seconds.
NO_WORKER_TIMEOUT = 60.0
#: A node silent this long (no answer to heartbeats) is lost, in seconds; $LUCIDITY_NODE_TIMEOUT overrides.
NODE_TIMEOUT = 5.0
#: How many times a task is resent after the node running it was lost, before it fails with NodeLost.
NODE_LOSS_RETRIES = 3
#: Once one worker is connected, how long the client waits for the others it was told of before it is ready.
READY_GRACE = 0.5

CONTROL_KINDS = frozenset({protocol.Kind.NODES})
NODE_KINDS = frozenset({protocol.Kind.WORKERS, protocol.Kind.TASK_FAILED, protocol.Kind.HEARTBEAT})
WORKER_KINDS = frozenset({protocol.Kind.RESULTS, protocol.Kind.MISSING, protocol.Kind.FETCH,
                          protocol.Kind.REFUSED}) | reports.KINDS
#: What a worker's door sends back (lucidity.directcall); all else comes over ZeroMQ.
DOOR_KINDS = frozenset({protocol.Kind.RESULTS})
#: What the peers socket's monitor reports: a worker may take tasks from its handshake until it disconnects.
PEER_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class Client:
    """A connection to one cluster, shared by every task its face submits.

    Args:
        address: the control node's address.
        max_running: at most this many workers run this client's tasks at once (None: all of them).
        connect_timeout: how long to wait for a cluster with a worker before `ClusterUnavailable`.
        ship: packages to send to every worker up front (see `lucidity.shipping`).
        node_timeout: a node silent this long is lost and its tasks are resent (default
            $LUCIDITY_NODE_TIMEOUT or `NODE_TIMEOUT`).
        wait_for_nodes: while no worker is available, queued tasks wait this long before failing with
            `NodeLost` (default $LUCIDITY_WAIT_FOR_NODES or `NO_WORKER_TIMEOUT`).
    """

    def __init__(self, address: str, *, max_running: Optional[int] = None,
                 connect_timeout: float = CONNECT_TIMEOUT, ship: Sequence[str] = (),
                 node_timeout: Optional[float] = None, wait_for_nodes: Optional[float] = None,
                 secret: Optional[bytes] = None) -> None:
        if mainscript.is_importing():
            # As multiprocessing's spawn: a script that starts pools outside its __main__ block would start
            # them again in every worker that imports it.
            raise RuntimeError(
                "a pool was started while a lucidity worker imported the caller's main script as __mp_main__; "
                "put the code that starts pools under `if __name__ == \"__main__\":`")
        self._endpoint = addresses.parse(address)  # ValueError now, in the caller's thread
        self.address = address
        self._main = mainscript.describe()
        # Results name classes of the caller's script by the module name workers give it, as multiprocessing's.
        sys.modules.setdefault(mainscript.MAIN_NAME, sys.modules["__main__"])
        self._keys = security.ClusterKeys.derive(secret) if secret is not None else None
        self._failure: Optional[BaseException] = None
        self._node_timeout = node_timeout or float(os.environ.get("LUCIDITY_NODE_TIMEOUT", NODE_TIMEOUT))
        self._wait_for_nodes = wait_for_nodes or float(os.environ.get("LUCIDITY_WAIT_FOR_NODES", NO_WORKER_TIMEOUT))
        self._modules = shipping.ModuleServer()
        # Named packages go to each worker with its first batch (raises ImportError now if one cannot).
        self._ship = self._modules.package_modules(ship)
        self.id = uuid.uuid4().hex
        self._max_running = max_running
        self.reports = reports.Reports()  # tasks' output and progress (lucidity.reports)
        # The table is shared with caller threads (submit, cancel): every use holds the lock.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Threads running the callbacks of a batch of outcomes (`_finish_all`), and how many batches deep: the
        # client is not idle until they return.
        self._delivering: collections.Counter[int] = collections.Counter()
        self._table = TaskTable(max_running)
        self._roster = Roster(self._node_timeout)
        self._ids = itertools.count(1)
        # id(function) -> (a way back to the function, its serialized form); weak where possible
        self._functions = FunctionCache(self._main)
        self._packer = Packer(self._main, self._modules, self._ship, sliced=self._keys is not None)
        # Lone calls carried by their callers' threads to workers' doors (lucidity.directcall): on clusters
        # reached over ipc:// without a secret. Workers with a door, by key (under the lock); streams whose
        # caller was interrupted, for the I/O thread to read (under the lock until it takes them).
        self._doors = directcall.Doors() if self._keys is None else None
        self._door_of: dict[str, WorkerLink] = {}
        self._adopted = directcall.Adopted()
        self._routing_prefix = b"L" + uuid.UUID(self.id).bytes  # our routing ids on workers' sockets
        self._closing = False
        self._abandon = False
        self._wake_pending = False
        self._ready = threading.Event()
        self._waker = transport.Waker()
        # Callers may still wake a client that has shut down; the pipe lives as long as the client object.
        weakref.finalize(self, self._waker.close)
        self._thread = threading.Thread(target=self._run, name=f"lucidity-client-{self.id[:8]}", daemon=True)
        self._thread.start()
        ready = self._ready.wait(connect_timeout)
        if self._failure is not None:
            self.shutdown(cancel=True)
            raise self._failure
        if not ready:
            self.shutdown(cancel=True)
            raise ClusterUnavailable(
                f"no worker of the cluster at {address} answered within {connect_timeout:.0f} s; "
                "is `lucidity control` running there, with at least one `lucidity node` joined?")

    # -- the caller's side (any thread) -----------------------------------------------------------------

    @property
    def worker_count(self) -> int:
        """Workers this client may use at once (all known workers, or `max_running` if smaller)."""
        count = self._roster.worker_count
        return min(count, self._max_running) if self._max_running else count

    @property
    def unreachable(self) -> tuple[str, ...]:
        """Nodes and workers of the cluster that this client has not reached yet (it keeps trying)."""
        return self._roster.unreachable

    def function(self, function: Any) -> FunctionRef:
        """Serialize a function once per client; raises `SerializationError` if it cannot travel."""
        return self._functions.get(function)

    def dumps(self, obj: Any, what: str) -> list[Any]:
        """Serialize a task's data; names of the caller's main script travel as `lucidity.mainscript` decided."""
        return serialization.dumps(obj, what, self._main.defined)

    def new_task(self, function: FunctionRef, mode: TaskMode, frames: list[Any],
                 on_done: Callable[[bool, Any], None], **options: Any) -> Task:
        options.setdefault("lost_retries", NODE_LOSS_RETRIES)
        return Task(next(self._ids), function, mode, frames, on_done, **options)

    def task_maker(self, template: Task) -> TaskMaker:
        """Tasks like `template` (made by `new_task`, never submitted) but for their payload, ``on_done`` and
        items, each with an id of this client's: a map's chunks (`Task.siblings`). The first takes the
        template's own id, which no task carries, so that chunks are numbered from it as tasks made one by
        one would be (errors and the node's log name tasks by number)."""
        return template.siblings(itertools.chain((template.id,), self._ids))

    def submit(self, tasks: list[Task]) -> None:
        """Queue tasks for dispatch. Each task's on_done will be called exactly once."""
        with self._lock:
            if self._closing:
                raise ValueError("client is shut down")
            self._table.add(tasks)
            # One wake-up per turn of the I/O thread, not one system call per task.
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._waker.wake()

    def call(self, task: Task, *, submitted: bool = False, timeout: Optional[float] = None) -> bool:
        """Carry a lone blocking call on this thread to an idle worker's door on this machine and wait until
        its outcome is delivered (lucidity.directcall). False, with nothing done, if no such worker is ready:
        submit it then. With `submitted`, the task was submitted and its caller now waits for it: it is
        taken only if it still waits to be sent, alone. Past `timeout` the wait ends, the task going on as
        if submitted, as it does when the wait is interrupted (KeyboardInterrupt, which is raised)."""
        doors = self._doors
        if (doors is None or not self._door_of or self._closing or waiting.serves_queued_tasks()
                or threading.current_thread() is self._thread):  # the I/O thread must stay free to fail it
            return False
        caller = doors.caller()
        ready_for, door_of = self._packer.ready_for, self._door_of
        call = directcall.Call(task, caller.waker)  # before the task is in the table: any outcome wakes us
        with self._lock:
            lane = None if self._closing else (self._table.claim if submitted else self._table.place)(
                task, lambda lane: lane.key in door_of and ready_for(door_of[lane.key], task), caller.streams)
            if lane is None:
                call.cancel()
                return False
            link = door_of[lane.key]
        stream = None
        try:
            stream = doors.send(caller, link.key, link.door or "", link.routing_id,
                                self._packer.lone(link.session, task))
            call.sent = stream is not None
            if stream is None:  # no door after all (gone, or a worker without one): the usual way, then
                with self._lock:
                    link.door = None
                    door_of.pop(link.key, None)
                self._unsend(lane, task)
            doors.wait(caller, call, link.key, stream, lambda frames: self._on_door_message(link, frames),
                       lambda: self._door_ended(task, link), lambda stream: self._adopt(stream, link, task),
                       lambda: self._abandon_call(lane, task), timeout)
        except BaseException:
            # A Ctrl-C before the wait took charge (`Doors.wait` handles its own): the task must still end.
            if not call.done and not call.handled:
                if call.sent and stream is not None and doors.forget(caller, link.key):
                    self._adopt(stream, link, task)  # its result may still come
                else:
                    # Cut inside the send: whether the worker has the task is unknown. It goes the ZeroMQ
                    # way; had the worker read it whole, it runs twice (its result at the door, which we
                    # close, goes the ZeroMQ way too, and the first to come counts). Never a wait forever.
                    doors.discard(caller, link.key)
                    self._unsend(lane, task)
            raise
        finally:
            if self._closing:
                doors.close(caller)
        return True

    def nodes(self) -> tuple["NodeInfo", ...]:
        """The nodes this client knows, with their workers and load, for placement decisions.

        ``ours`` counts this client's unfinished tasks placed on the node, up to this moment, so that a burst
        of placements sees the ones before it (the nodes' own counts arrive once a second).
        """
        with self._lock:
            return tuple(dataclasses.replace(info, ours=self._table.placed_on(info.name)) for info in self._roster.membership)

    def cancel(self, task: Task) -> bool:
        """Cancel a task that has not been sent to a worker yet; False if it is already on its way."""
        with self._lock:
            if not self._table.cancel(task):
                return False
            if self._table.idle:
                self._idle.notify_all()
            return True

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block until every submitted task has ended and its ``on_done`` has returned; False on timeout."""
        me = threading.get_ident()  # a callback that waits here waits for the others, not for itself
        with self._lock:
            return self._idle.wait_for(lambda: self._table.idle and all(thread == me for thread in self._delivering),
                                       timeout)

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the I/O thread. With ``cancel``, unfinished tasks are dropped and stopped on the nodes."""
        with self._lock:
            self._closing = True
            self._abandon = self._abandon or cancel
        self._waker.wake()
        if self._doors is not None:
            self._doors.close()  # every stream not in a call (those close when their call returns)
        if threading.current_thread() is not self._thread:
            self._thread.join(transport.LINGER + 5.0)

    # -- the I/O thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        context = transport.new_context()
        self._context = context
        self._control = self._new_socket()
        # Watch the handshake with the control node: a wrong or missing secret is otherwise a silent
        # reconnect loop (ipc:// clusters have no secret to get wrong).
        self._handshake = security.HandshakeWatch(self._control) if self._endpoint.scheme == "tcp" else None
        self._dialer = transport.Dialer(self._control, self.address)
        self._control_dialed = time.monotonic()  # when the dialer last moved
        self._first_answer = 0.0  # when the first worker could take tasks (0: not yet)
        # Node daemons and workers, all through one ROUTER. Without ZMQ_IMMEDIATE: a peer's pipe exists from
        # `connect` (so the routing id we gave it holds), and what a worker sent before it went stays readable.
        # Whether a worker is connected comes from the monitor, since sends no longer fail while it is not.
        self._peers = self._new_socket(zmq.ROUTER)
        self._peers.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a peer we disconnected: an error, not a silent drop
        self._peer_monitor = self._peers.get_monitor_socket(PEER_EVENTS)
        self._peer_ids = itertools.count(1)
        self._by_peer: dict[bytes, Callable[[list[Any]], None]] = {}
        self._by_endpoint: dict[str, WorkerLink] = {}
        self._poller = zmq.Poller()
        self._poller.register(self._waker.read_fd, zmq.POLLIN)
        self._poller.register(self._control, zmq.POLLIN)
        self._poller.register(self._peers, zmq.POLLIN)
        self._poller.register(self._peer_monitor, zmq.POLLIN)
        if self._handshake is not None:
            self._poller.register(self._handshake.fd_socket, zmq.POLLIN)
        self._no_workers_since = time.monotonic()
        next_heartbeat = 0.0
        try:
            while True:
                with self._lock:
                    closing, abandon = self._closing, self._abandon
                    self._wake_pending = False  # from here on, a new submit wakes this thread again
                    idle = self._table.idle
                if closing and (abandon or idle):
                    break
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + HEARTBEAT_INTERVAL
                self._dispatch()
                if self._adopted:
                    self._adopted.watch(self._poller)
                self._check_starved(now)
                wake_at = next_heartbeat
                if self._first_answer and not self._ready.is_set():
                    wake_at = min(wake_at, self._first_answer + READY_GRACE)
                    if now >= self._first_answer + READY_GRACE:
                        self._ready.set()  # the workers still silent are not waited for
                self._poll(max(0.0, wake_at - time.monotonic()))
        except Exception:
            logger.exception("lucidity client %s: the I/O thread failed", self.id[:8])
            self._fail_all(RuntimeError("the lucidity client's I/O thread failed; see the log"))
        finally:
            self._close_sockets()

    def _connect(self, address: str, handler: Callable[[list[Any]], None]) -> bytes:
        """Connect the peers socket to a node daemon or worker; returns the routing id that names it there.

        Ids are never reused: libzmq aborts on a connect that names a peer whose old pipe still exists.
        """
        peer = b"%x" % next(self._peer_ids)
        self._peers.setsockopt(zmq.CONNECT_ROUTING_ID, peer)
        # Ours on the peer's socket, of our choosing too: a worker's door learns from a caller which it is.
        self._peers.setsockopt(zmq.ROUTING_ID, self._routing_prefix + peer)
        self._peers.connect(address)
        self._by_peer[peer] = handler
        return peer

    def _disconnect(self, peer: bytes, address: str) -> None:
        self._by_peer.pop(peer, None)
        try:
            self._peers.disconnect(address)
        except zmq.ZMQError:
            pass  # not connected (already disconnected)

    def _poll(self, timeout: float) -> None:
        events = self._poller.poll(int(timeout * 1000))
        for sock, _ in events:
            if sock is self._peers:
                self._drain_peers()
            elif sock == self._waker.read_fd:
                self._waker.drain()
            elif sock in self._adopted:
                self._adopted.read(sock, self._poller, lambda frames, link, _: self._on_door_message(link, frames),
                                   lambda link, task: self._door_ended(task, link))
            elif sock is self._peer_monitor:
                self._on_peer_events()
            elif self._handshake is not None and sock is self._handshake.fd_socket:
                self._check_handshake()
            elif sock is self._control:
                self._drain(self._control, self._on_control)

    def _drain_peers(self) -> None:
        """Handle every message waiting from node daemons and workers (each starts with the sender's id)."""
        by_peer = self._by_peer
        self._drain(self._peers, lambda frames: by_peer.get(frames[0].bytes, _ignore)(frames[1:]))

    def _on_peer_events(self) -> None:
        """A worker's connection was made or broke (node daemons need neither: what they send waits)."""
        while True:
            try:
                event, endpoint = self._peer_monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            link = self._by_endpoint.get(endpoint.decode("utf-8", "replace"))
            if link is None:
                continue
            if struct.unpack_from("=H", event)[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._on_connected(link)
            elif link.lane.connected:
                self._await_connection(link)

    def _await_connection(self, link: WorkerLink) -> None:
        """The worker's connection is down: send it nothing until it is made again."""
        link.lane.connected = False
        link.created = time.monotonic()  # the unreachable warning counts from here
        self._update_ready()

    def _on_connected(self, link: WorkerLink) -> None:
        """A worker's connection is made: it may take tasks (and is written to only when it has some)."""
        if link.lane.connected:
            return
        link.lane.connected = True
        self._roster.worker_reached(link)
        self._update_ready()

    def _drain(self, sock: zmq.Socket[Any], handler: Callable[[list[Any]], None]) -> None:
        # Checking EVENTS first avoids raising zmq.Again once per wake-up, which costs microseconds.
        while not sock.closed and transport.has_input(sock):
            frames = transport.recv_frames(sock)
            try:
                handler(frames)
            except VersionMismatch as exc:
                if not self._ready.is_set():
                    # A cluster of another release: say so now, rather than time out without a reason.
                    self._failure = ClusterUnavailable(
                        f"the cluster at {self.address} speaks protocol version {exc.version}, and this lucidity "
                        f"{protocol.VERSION}; install the same lucidity release on the client and the nodes")
                    self._ready.set()
                logger.warning("lucidity client dropped a message: %s", exc)
            except ProtocolError as exc:
                logger.warning("lucidity client dropped a malformed message: %s", exc)
            except Exception:  # a bug of ours: one message drops itself, never the I/O thread every task depends on
                logger.exception("lucidity client dropped a message it could not handle")

    def _new_socket(self, kind: int = zmq.DEALER) -> zmq.Socket[Any]:
        """A socket that, with a cluster secret, speaks CURVE and accepts only the cluster's daemons."""
        sock = transport.new_socket(self._context, kind)
        if self._keys is not None:
            security.secure_client(sock, self._keys, security.Role.CLIENT)
        return sock

    def _check_handshake(self) -> None:
        if self._handshake is None:
            return
        reason = self._handshake.check()
        if self._handshake.succeeded or reason is None:
            if self._handshake.succeeded:
                self._poller.unregister(self._handshake.fd_socket)
                self._handshake.close()
                self._handshake = None
            return
        if not self._ready.is_set():
            self._failure = AuthenticationError(
                f"the cluster at {self.address} refused this client: {reason}. Check that the client and the "
                "daemons share the same cluster secret (secret=, $LUCIDITY_SECRET or --secret-file).")
            self._ready.set()

    def _heartbeat(self) -> None:
        """Watch the membership, ping every node, and drop nodes that stopped answering."""
        now = time.monotonic()
        if self._roster.control_silent(now, self._control_dialed) and self._dialer.may_move:
            self._dialer.retry()  # another of its addresses, or its name resolved again: it may have moved
            self._control_dialed = now
        self._send(self._control, messages.encode(self._roster.watch()))
        lost, alive = self._roster.check(now)
        for node, why in lost:
            self._drop_node(node, why, lost=True)
        for node in alive:
            self._send_to(node.peer, messages.encode(messages.Heartbeat(node.session)))

    def _send_to(self, peer: bytes, frames: list[Any]) -> bool:
        """Send to a node daemon or worker by its routing id; False if it is not connected any more."""
        return self._send(self._peers, [peer, *frames])

    def _send(self, sock: zmq.Socket[Any], frames: list[Any]) -> bool:
        try:
            transport.send_frames(sock, frames, block=False)
        except zmq.ZMQError as exc:
            logger.debug("lucidity client could not send: %s", exc)
            return False
        return True

    # -- membership --------------------------------------------------------------------------------------

    def _on_control(self, frames: list[Any]) -> None:
        body = messages.Nodes.from_meta(protocol.decode(frames, CONTROL_KINDS).meta)
        new, dropped = self._roster.control_listed(body, time.monotonic())
        for node in dropped:
            self._drop_node(node, "left the cluster", lost=True)
        for entry in new:
            node = NodeLink(entry.name, entry.address, entry.instance, entry.host, b"")
            node.peer = self._connect(addresses.parse(entry.address).zmq,
                                      lambda f, n=node: self._on_node(n, f))  # type: ignore[misc]
            self._roster.add_node(node)
            self._send_to(node.peer, messages.encode(messages.Hello(node.session)))
        self._update_ready()

    def _on_node(self, node: NodeLink, frames: list[Any]) -> None:
        body = messages.parse(protocol.decode(frames, NODE_KINDS))
        node.last_seen = time.monotonic()
        if isinstance(body, messages.Workers):
            self._update_workers(node, body.workers)
        elif isinstance(body, FailureReport):
            self._on_task_failed(node, body)

    def _update_workers(self, node: NodeLink, workers: Sequence[WorkerEntry]) -> None:
        new, gone = self._roster.workers_reported(node, workers)
        for link in gone:
            self._drop_worker(link)
        for entry in new:
            # Tasks go to a worker once its connection is made (handshake included; the monitor says when):
            # one this client cannot reach never holds any. libzmq completes the handshake even while the
            # worker's Python is busy with a long task.
            address = addresses.parse(entry.address).zmq
            with self._lock:
                lane = self._table.add_worker(f"{node.name}/{entry.id}", node.name)
            link = WorkerLink(lane, entry.id, entry.pid, b"", address)
            self._by_endpoint[address] = link  # before connect: its handshake may come at once
            link.peer = self._connect(address, lambda f, w=link: self._on_worker(w, f))  # type: ignore[misc]
            link.routing_id, link.session = self._routing_prefix + link.peer, node.session
            if self._doors is not None:
                link.door = streams.door_path(address)
                if link.door is not None:
                    with self._lock:
                        self._door_of[link.key] = link
            self._roster.add_worker(node, link)
        self._update_ready()

    def _update_ready(self) -> None:
        """Recount the workers after a change; ready once all told of were reached (or READY_GRACE passed)."""
        with self._lock:
            self._table.set_nodes(frozenset(self._roster.nodes))
        all_reached = self._roster.refresh()
        if self._roster.worker_count:
            self._no_workers_since = 0.0
            self._first_answer = self._first_answer or time.monotonic()
        elif not self._no_workers_since:
            self._no_workers_since = time.monotonic()
        if all_reached:
            self._ready.set()

    def _drop_node(self, node: NodeLink, why: str, *, lost: bool) -> None:
        logger.warning("lucidity client: node %s %s", node.name, why)
        for link in list(node.workers.values()):
            self._drop_worker(link, lost=lost)
        self._roster.remove_node(node)
        self._disconnect(node.peer, addresses.parse(node.address).zmq)
        with self._lock:
            self._table.set_nodes(frozenset(self._roster.nodes))

    def _drop_worker(self, link: WorkerLink, *, lost: bool = False) -> None:
        """The worker is gone: its unfinished tasks go to other workers (`TaskTable.remove_worker` says which),
        and those out of retries fail with `NodeLost`. Results are delivered at most once either way."""
        # What it sent before it went counts: a worker that retires flushes its last results and exits, and
        # its node's word that it is gone can be read first, with those results waiting on its socket.
        self._drain_peers()
        if self._roster.workers.get(link.key) is not link:
            return  # a message the drain read (its node's next list) dropped it already
        self._roster.remove_worker(link)
        if self._by_endpoint.get(link.address) is link:
            del self._by_endpoint[link.address]
        self._disconnect(link.peer, link.address)
        with self._lock:
            self._door_of.pop(link.key, None)
            requeued, out_of_retries = self._table.remove_worker(link.key, lost=lost)
        if requeued:
            logger.info("lucidity client: worker %s gone; resending %d unfinished task(s)", link.key, len(requeued))
        for task in out_of_retries:
            self._finish(task, False, _node_lost(task, link))
        self._update_ready()

    def _check_starved(self, now: float) -> None:
        if self._roster.worker_count or not self._no_workers_since or now - self._no_workers_since < self._wait_for_nodes:
            return
        with self._lock:
            waiting = self._table.waiting()
        if waiting:
            self._fail_all(NodeLost(
                f"no node of the cluster at {self.address} has had a worker for {self._wait_for_nodes:.0f} s; "
                "the tasks still waiting for one fail"))

    # -- tasks -------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        with self._lock:
            batches = self._table.dispatch()
            withdrawals = self._table.steal()
        for lane, batch in batches:
            self._send_tasks(self._roster.workers[lane.key], batch)
        for lane, ids in withdrawals:  # the worker answers with a MISSING of those it still held
            self._send_to(self._roster.workers[lane.key].peer, messages.encode(messages.Withdraw(tuple(ids))))

    def _send_tasks(self, link: WorkerLink, batch: list[Task]) -> None:
        packed = self._packer.tasks(link, self._roster.nodes[link.node].session, batch)
        if self._send_to(link.peer, packed.frames):
            return
        # It is not connected any more (a worker link is written to only while connected): take the batch
        # back, as if it had never been sent, and wait for the connection to be made again.
        packed.undo(link)
        with self._lock:
            self._table.unsend(link.lane, batch)
        self._await_connection(link)

    def _on_worker(self, link: WorkerLink, frames: list[Any]) -> None:
        message = protocol.decode(frames, WORKER_KINDS)
        if message.kind is protocol.Kind.RESULTS:
            self._on_results(link, message, dispatch=True)
            return
        if message.kind in reports.KINDS:
            self.reports.deliver(link.node, link.pid, message)
            return
        body = messages.parse(message)
        if isinstance(body, messages.Fetch):
            self._send_to(link.peer, self._packer.module(link, body.module))
        elif isinstance(body, messages.Refused):
            # The worker could not read a batch of ours; which tasks it held is unknown, so fail all we sent it.
            self._fail_link(link, ProtocolError(f"worker {link.pid} on node {link.node} refused a batch of tasks: "
                                                f"{body.reason}"))
        elif isinstance(body, messages.Missing):
            link.functions.difference_update(body.digests)
            if body.main:
                link.has_main = False
            with self._lock:
                self._table.give_back(link.lane, body.tasks, busy=body.busy)

    def _on_results(self, link: WorkerLink, message: protocol.Message, *, dispatch: bool = False) -> None:
        """A batch of results: each task leaves its worker's window, then (with `dispatch`, on the I/O thread)
        the worker's next tasks leave at once, before these results are read and delivered. Reading a batch of
        256 tiny results takes about a millisecond, which the worker otherwise spent waiting for work."""
        # Check every entry and the frames before any task leaves the in-flight table: a task popped for a
        # bad entry would never be answered.
        try:
            results = messages.Results.read(message.meta, message.payload)
        except ProtocolError as exc:
            # Which of our tasks it answered is unknown: fail them all rather than wait for them forever.
            self._fail_link(link, ProtocolError(f"worker {link.pid} on node {link.node} sent a malformed "
                                                f"result message: {exc}"))
            raise
        lane = link.lane
        take = self._table.take
        with self._lock:  # once per batch; None for a late duplicate of a task that was already resolved
            taken = [(take(lane, task_id, seconds), status, frames) for task_id, status, seconds, frames in results]
        if dispatch and len(lane.inflight) < lane.credit(self._table.pace):
            self._dispatch()  # (not for a result or two: a batch of one task each would follow them)
        ok = ResultStatus.OK
        loads = serialization.loads
        outcomes: list[tuple[Task, bool, Any]] = []
        for task, status, frames in taken:
            if task is None:
                continue
            if status is ok:
                try:
                    outcomes.append((task, True, loads(frames)))
                except Exception as exc:
                    outcomes.append((task, False, SerializationError(
                        f"the result of task {task.id} ({task.function.description}) could not be "
                        f"deserialized here: {type(exc).__name__}: {exc}")))
            else:
                outcomes.append((task, False, serialization.loads_exception(frames)))
        self._finish_all(outcomes)

    # -- lone calls at workers' doors (lucidity.directcall) --------------------------------------------------

    def _on_door_message(self, link: WorkerLink, frames: list[Any]) -> None:
        """A worker's door answered a call (on the caller's thread, or the I/O thread's for an adopted stream)."""
        try:
            self._on_results(link, protocol.decode(frames, DOOR_KINDS))
        except ProtocolError as exc:
            logger.warning("lucidity client: worker %s sent a bad answer at its door: %s", link.key, exc)
            self._fail_link(link, ProtocolError(f"worker {link.pid} on node {link.node} sent a malformed "
                                                f"answer to a call: {exc}"))
        with self._lock:
            more = self._table.waiting()
        if more:
            self._waker.wake()  # the worker is free for what waits

    def _unsend(self, lane: Lane, task: Task) -> None:
        """A call that never reached its worker's door goes the ZeroMQ way."""
        with self._lock:
            self._table.unsend(lane, [task])
        self._waker.wake()

    def _abandon_call(self, lane: Lane, task: Task) -> None:
        """A Ctrl-C cut short the delivery of a call's result, which is lost: the task ends (its caller no
        longer waits for it), and its worker counts as free."""
        with self._lock:
            lane.inflight.pop(task.id, None)
        self._finish(task, False, RuntimeError(f"{task.description} was interrupted while its result was read"))

    def _adopt(self, stream: streams.MessageStream, link: WorkerLink, task: Task) -> None:
        """A caller was interrupted while it waited: its call's result may still come, for the I/O thread."""
        self._adopted.add(stream, (link, task))
        self._waker.wake()

    def _door_ended(self, task: Task, link: WorkerLink) -> None:
        """The door's stream a call went by ended without its result: the task is the I/O thread's now."""
        with self._lock:
            outcome = self._table.door_ended(task)
        if outcome is True:
            self._waker.wake()
        elif outcome is False:
            self._finish(task, False, _node_lost(task, link))

    def _fail_link(self, link: WorkerLink, error: Exception) -> None:
        """Fail every task in flight on a worker whose messages cannot be trusted to answer them."""
        with self._lock:
            tasks = self._table.take_all(link.lane)
        for task in tasks:
            self._finish(task, False, error)

    def _on_task_failed(self, node: NodeLink, report: FailureReport) -> None:
        with self._lock:
            outcome = self._table.failed(f"{node.name}/{report.worker}", report.task,
                                         crashed=report.reason is FailureReason.CRASHED, message=report.message)
        if outcome is None:
            return  # stale: the task ended, or was resent elsewhere
        task, retried = outcome
        if retried:
            logger.warning("lucidity client: %s; retrying task %d (%d retries left)", report.message, task.id,
                           task.retries)
        else:
            self._finish(task, False, failure_error(task, node.name, report))

    def _finish(self, task: Task, succeeded: bool, value: Any) -> None:
        self._finish_all([(task, succeeded, value)])

    def _finish_all(self, outcomes: list[tuple[Task, bool, Any]]) -> None:
        """Deliver each task's outcome through its ``on_done``, once: a task that ended already is skipped.

        The table is told under one lock for the batch; the callbacks run outside it, and `wait_idle` wakes
        after them.
        """
        finish = self._table.finish
        with self._lock:
            delivered = [outcome for outcome in outcomes if finish(outcome[0], outcome[1])]
            if not delivered:
                return
            me = threading.get_ident()
            self._delivering[me] += 1
        try:
            for task, succeeded, value in delivered:
                try:
                    task.on_done(succeeded, value)
                except Exception:
                    logger.exception("lucidity client: a result callback for task %d raised", task.id)
        finally:
            with self._lock:
                self._delivering[me] -= 1
                if not self._delivering[me]:
                    del self._delivering[me]
                if self._table.idle and not self._delivering:
                    self._idle.notify_all()
        waiting.completed()

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            tasks = self._table.unfinished()
        for task in tasks:
            self._finish(task, False, error)

    def _close_sockets(self) -> None:
        with self._lock:
            abandon = self._abandon
            unfinished = self._table.unfinished()
        if abandon:
            by_link: dict[str, list[int]] = collections.defaultdict(list)
            for task in unfinished:
                if task.worker:
                    by_link[task.worker].append(task.id)
            for key, ids in by_link.items():
                link = self._roster.workers.get(key)
                if link is not None:
                    self._send_to(link.peer, messages.encode(messages.Cancel(tuple(ids))))
            for node in self._roster.nodes.values():
                self._send_to(node.peer, messages.encode(messages.Abandon(node.session)))
        for node in self._roster.nodes.values():
            self._send_to(node.peer, messages.encode(messages.Bye(node.session)))
        self._adopted.close(self._poller)
        linger = int(transport.LINGER * 1000)
        if self._handshake is not None:
            self._handshake.close()
        try:
            self._peers.disable_monitor()
        except zmq.ZMQError:
            pass
        self._peer_monitor.close(linger=0)
        for sock in [self._control, self._peers]:
            sock.close(linger=linger)
        self._context.term()
        if unfinished:
            error = RuntimeError("the pool was terminated before this task finished")
            for task in unfinished:
                self._finish(task, False, error)


def _node_lost(task: Task, link: WorkerLink) -> NodeLost:
    return NodeLost(f"{task.description} was on node {link.node}, which was lost, and has no retries left",
                    node=link.node, task=task.id, items=task.items)


def _ignore(frames: list[Any]) -> None:
    """A message from a peer this client has disconnected: read before the disconnect took effect."""
