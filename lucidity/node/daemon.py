"""The node daemon: joins the control node and supervises its worker processes.

The daemon is deliberately *off* the task path. Clients learn the workers' addresses from it and then talk
to the workers directly, which saves two hops per task. What the daemon does::

    control <--JOIN, then BEAT (the heartbeat)/WELCOME/LEAVE-- daemon
    client  --HELLO/HEARTBEAT/ABANDON/BYE/STATUS-->      daemon --WORKERS/TASK_FAILED/STATUS_REPLY--> client
    daemon  --spawn, pidfd, slot--> worker processes (each in its own process group)

When a worker dies, the daemon reads the worker's slot to learn which task of which client it was running,
tells that client the task failed (`WorkerCrashed`), tells every client the worker is gone (they resend
the tasks it had not started) and starts a replacement.

One thread owns every socket. Signals, worker exits and readiness reach it as file descriptors in its
poller; every wait is bounded by the nearest deadline.

This module owns the loop, the clients' sessions and the workers' lives (spawn, ready, exit, restart). It
leaves to others: the line to the control node (`controllink`), a worker as the daemon sees it and the
watchdog (`supervision`), what the node counts and reports in STATUS_REPLY and /metrics (`reporting`), and
the membership it serves when it is its embedded cluster's control node too (`control.HostedControl`). It
is past 500 lines by the few that wire that one in, which belong to this loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import zmq

from .. import addresses, messages, protocol, security, transport
from ..errors import describe_exit
from ..security import Role
from .control import ACCEPTED, ACCEPTED_BY_ROLE, HostedControl
from .controllink import ControlLink
from .logformat import context
from .processes import STOP_GRACE, raise_open_file_limit, stop_adopted, stop_children
from .skeleton import Daemon
from . import limits, output
from ..sizes import format_size
from .slots import SlotState, SlotTable, SlotView
from .metrics import Family, Health
from .reporting import NodeCounters, node_families, node_status
from .supervision import WorkerProcess, WorkerState, enforce_limits, failure_report
from .template import WorkerStarter

logger = logging.getLogger(__name__)

__all__ = ["NodeDaemon"]

#: Seconds between heartbeats (BEAT) to the control node.
HEARTBEAT_INTERVAL = 1.0
#: A client silent for this long is gone: its queued tasks are dropped and its running ones stopped. Clients
#: heartbeat every second; the margin covers a client process whose I/O thread is briefly starved.
CLIENT_TIMEOUT = 10.0
#: Wait this long for the first workers before joining with whatever is ready.
STARTUP_TIMEOUT = 30.0
#: Restart back-off for workers that die before becoming ready, in seconds (doubles up to the cap).
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 5.0
#: A loop that went this many heartbeat intervals without a turn was stalled (SIGSTOP, starved CPU).
STALL_FACTOR = 3
#: At most one "cannot start a worker" line per this many seconds.
SPAWN_LOG_INTERVAL = 10.0

CLIENT_KINDS = frozenset({protocol.Kind.HELLO, protocol.Kind.HEARTBEAT, protocol.Kind.ABANDON,
                          protocol.Kind.BYE, protocol.Kind.STATUS})
#: With a cluster secret, what each role may send to a node daemon.
CLIENT_KINDS_BY_ROLE = {Role.CLIENT: CLIENT_KINDS, Role.NODE: frozenset({protocol.Kind.STATUS})}


@dataclass
class ClientRecord:
    identity: bytes
    client_id: str
    last_seen: float


class NodeDaemon(Daemon):
    """Supervises `processes` workers and serves the clients of the cluster at `control_address`.

    Args:
        control_address: where the control node listens.
        bind: the address for clients; ``tcp://host:0`` picks a port, ``ipc://`` a socket file.
        processes: number of worker processes (default: CPU count).
        name: the node's name in the cluster (default: host name and pid).
        parent_fd: a pipe's read end whose closing means the owner is gone (embedded clusters).
        ready_fd: a pipe to which the daemon writes its address once it has joined (embedded clusters).
        advertise: the host clients are told to use (default: the bound one; for a wildcard bind, the
            address of the interface that routes to the control node). ``$VAR`` in it is expanded.
        worker_ports: (first, last) ports the workers listen on (default: any free port).
        metrics: ``HOST:PORT`` to serve Prometheus metrics (/metrics) and a health check (/health) at.
        log_worker_output: log what workers write to stderr line by line (``lucidity.worker``), instead of
            passing it through as it is (JSON logs, in which every line must be an object).
        forward_output: workers send what tasks print to the tasks' clients (`lucidity.node.output`).
        serve_control: also listen at `control_address` as the cluster's control node (`HostedControl`: an
            embedded cluster of this one node), and remove `runtime_dir`, its private directory, at exit.
        preload_main: a file holding the main script of the caller that started this daemon (an embedded
            cluster's), which the worker template runs before it forks workers (`lucidity.node.preload`).

    Raises:
        ValueError: an address, or a limit, that cannot work (one line, for the CLI to print).
    """

    KIND = "node"

    def __init__(self, control_address: str, bind: str = "tcp://127.0.0.1:0", processes: Optional[int] = None,
                 name: Optional[str] = None, *, parent_fd: Optional[int] = None,
                 ready_fd: Optional[int] = None, memory_limit: Optional[int] = None,
                 max_tasks_per_worker: Optional[int] = None, recycle_memory: Optional[int] = None,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, client_timeout: float = CLIENT_TIMEOUT,
                 secret: Optional[bytes] = None, insecure: bool = False, advertise: Optional[str] = None,
                 worker_ports: Optional[tuple[int, int]] = None, metrics: Optional[str] = None,
                 log_worker_output: bool = False, forward_output: bool = True, serve_control: bool = False,
                 runtime_dir: Optional[str] = None, preload_main: Optional[str] = None) -> None:
        self._control_endpoint = addresses.parse(control_address, what="control address")
        self._bind = addresses.bind_endpoint(bind, default_port=0)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # Before the template forks: a worker it orphans must come to us, and workers inherit the raised
        # open-file limit as they did from the daemon. Before any ZeroMQ context: the template is forked from
        # this process as it is now (`lucidity.node.template`).
        limits.become_subreaper()
        raise_open_file_limit()
        self._starter = WorkerStarter(self.name, preload_main, memory_limit)
        try:
            super().__init__(f"node {self.name}", self._bind.zmq, secret=secret, insecure=insecure,
                             parent_fd=parent_fd, ready_fd=ready_fd, metrics=metrics)
            self._advertise = advertise
            addresses.advertised_host(self._bind, None, advertise)  # a bad --advertise fails now, not once bound
            self._worker_ports = worker_ports
            self._log_worker_output = log_worker_output
            self._heartbeat_interval = heartbeat_interval
            self._client_timeout = client_timeout
            if memory_limit is not None and memory_limit < limits.MIN_WORKER_MEMORY:
                raise ValueError(f"a memory limit of {format_size(memory_limit)} is too small to start a worker; "
                                 f"a worker needs at least {format_size(limits.MIN_WORKER_MEMORY)}")
            self.memory_limit = memory_limit
            self._worker_options: list[str] = []
            for option, value in (("--memory-limit", memory_limit), ("--max-tasks", max_tasks_per_worker),
                                  ("--recycle-memory", recycle_memory)):
                if value is not None:
                    self._worker_options += [option, str(value)]
            self._limited_running = False
            self.control_address = self._control_endpoint.zmq
            # The CPUs this process may use (taskset, a Slurm allocation), not all of the machine's.
            self.processes = processes or len(os.sched_getaffinity(0)) or 1
            self.instance = os.urandom(16).hex()  # as random as uuid4, without importing uuid (1 ms)
            self._hosted = HostedControl(self._context, control_address, runtime_dir) if serve_control else None
            self._hosted_due = 0.0  # when the hosted membership wants its next turn
            # A hosted control node's directory is private to this cluster and removed with it: the slots and
            # the workers' sockets go there, with no directory of our own to make (4 ms; issue 13).
            self._runtime = runtime_dir if serve_control and runtime_dir else transport.private_directory(
                transport.NODE_DIRECTORY_PREFIX)
            self._slots = SlotTable(os.path.join(self._runtime, "slots"), self.processes, create=True)
            self._workers: dict[int, WorkerProcess] = {}
            self._clients: dict[bytes, ClientRecord] = {}
            self._generation = 0
            self._restart_failures = 0
            self._restart_at: dict[int, float] = {}
            self._spawn_failures = 0
            self._last_spawn_log = -SPAWN_LOG_INTERVAL
            self._joined = False
            self._counters = NodeCounters()
            self._last_expiry = time.monotonic()
            self._link = ControlLink(self._context, self._control_endpoint, self.name)
            self.address = ""  # where clients reach this daemon (the advertised host)
            self._worker_host = ""  # what workers bind to, and what the daemon reaches them at
            self._worker_env = limits.thread_environment(
                self.processes, dict(os.environ, LUCIDITY_NODE=self.name, LUCIDITY_ADDRESS=control_address),
                memory_limit)  # a small cap gets fewer native threads (their buffers count toward RLIMIT_DATA)
            self._worker_env[output.FORWARD_VARIABLE] = "1" if forward_output else "0"
        except BaseException:
            self._starter.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM, a LEAVE, or the owner's exit; then stop every worker. Returns 0."""
        status = self._open()
        if status is None and self._hosted is not None and not self._hosted.open(self._guard, self.who):
            self._close()
            status = 2  # the control address cannot be bound: the operator's to fix, as the node's own
        if status is not None:
            return status
        guard = self._guard
        assert guard is not None
        if self._secret:
            self._worker_env[security.SECRET_ENV] = self._secret.decode()
        bound = addresses.parse(self._bound, allow_port_zero=True)
        advertised = addresses.advertised_host(bound, self._control_endpoint, self._advertise)
        self.address = bound.with_host(advertised).zmq
        # Workers listen where the daemon does; the daemon itself reaches a wildcard-bound worker on loopback.
        self._worker_host = bound.host
        logger.info("node %s listening at %s, joining %s with %d workers", self.name, self.address,
                    self.control_address, self.processes)
        for index in range(self.processes):
            self._start_worker(index)
        started = time.monotonic()
        next_heartbeat = 0.0
        try:
            while not self.stopping:
                if self._guard_failed():
                    return 1
                now = time.monotonic()
                if not self._joined and (self._all_ready() or now - started > STARTUP_TIMEOUT):
                    # Dialled only now: an embedded cluster starts its control node beside us, and a dial that
                    # finds no ipc:// socket yet is retried only after transport.RECONNECT_INTERVAL (0.1 s).
                    self._link.connect(guard)
                    self._joined = True
                    next_heartbeat = now
                if self._joined and now >= next_heartbeat:
                    self._send_join()
                    next_heartbeat = now + self._heartbeat_interval
                    self._expire_clients(now)
                self._restart_due(now)
                deadlines = [next_heartbeat if self._joined else now + 1.0, *self._restart_at.values()]
                if self._hosted is not None:
                    deadlines.append(self._hosted_due)
                if self._limited_running:
                    self._limited_running = self._enforce_limits(now)
                    if self._limited_running:
                        deadlines.append(now + limits.WATCH_INTERVAL)
                deadline = min(deadlines)
                self._poll_once(max(0.0, deadline - time.monotonic()))
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        logger.info("node %s stopping: leaving the cluster and stopping %d workers", self.name, len(self._workers))
        if self._hosted is None:  # a hosted control node goes with us: no one to tell
            self._link.leave()
        workers = list(self._workers.values())
        stop_children([w.child for w in workers], STOP_GRACE)
        for worker in workers:
            worker.close_links()
        logger.info("node %s stopped; every worker reaped", self.name)
        self._close()

    def _close(self, *others: zmq.Socket[Any], linger: float = 0.0) -> None:
        self._link.close_watch()
        if self._hosted is not None:
            self._hosted.close()
        super()._close(self._link.socket, *others, linger=0.1)  # time for the LEAVE to go out
        self._slots.close()
        self._starter.close()
        import shutil  # here, not at the top: 1.5 ms of every node daemon's start (issue 13)

        shutil.rmtree(self._runtime, ignore_errors=True)  # a hosted control node's: the embedded cluster's

    # -- the loop ----------------------------------------------------------------------------------------

    def _poll_once(self, timeout: float) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._link.socket, zmq.POLLIN)
        poller.register(self._waker.read_fd, zmq.POLLIN)
        handlers: dict[int, Callable[[], None]] = {}
        if self._parent_fd is not None:
            poller.register(self._parent_fd, zmq.POLLIN)
            handlers[self._parent_fd] = self._on_parent_gone
        if self._link.watch is not None:
            poller.register(self._link.watch.fd_socket, zmq.POLLIN)
        if self._hosted is not None:
            poller.register(self._hosted.socket, zmq.POLLIN)
        for worker in list(self._workers.values()):
            if worker.child.pidfd is not None:
                poller.register(worker.child.pidfd, zmq.POLLIN)
                handlers[worker.child.pidfd] = lambda w=worker: self._on_worker_exit(w)  # type: ignore[misc]
            if worker.ready_fd is not None:
                poller.register(worker.ready_fd, zmq.POLLIN)
                handlers[worker.ready_fd] = lambda w=worker: self._on_worker_ready(w)  # type: ignore[misc]
            stderr = worker.child.popen.stderr
            if stderr is not None and not stderr.closed:
                poller.register(stderr.fileno(), zmq.POLLIN)
                handlers[stderr.fileno()] = worker.pump_stderr
        events = dict(poller.poll(int(timeout * 1000)))
        if self._waker.read_fd in events:
            self._waker.drain()
        if self._router in events:
            self._drain_router(self._on_client_message, CLIENT_KINDS_BY_ROLE, CLIENT_KINDS)
        if self._hosted is not None:
            if self._hosted.socket in events:
                self._drain_router(self._hosted.membership.receive, ACCEPTED_BY_ROLE, ACCEPTED, self._hosted.socket)
            self._hosted_due = time.monotonic() + self._hosted.turn(time.monotonic())
        if self._link.socket in events:
            self._drain(self._link.socket, self._on_control_message)
        if self._link.watch is not None and self._link.watch.fd_socket in events:
            self._link.check_handshake()
        for fd, handler in handlers.items():
            if fd in events:
                handler()
        self._answer_scrapes()

    # -- clients -----------------------------------------------------------------------------------------

    def _on_client_message(self, identity: bytes, frames: list[Any], accepted: frozenset[protocol.Kind]) -> None:
        body = messages.parse(protocol.decode(frames, accepted))
        now = time.monotonic()
        if isinstance(body, messages.Hello):
            self._clients[identity] = ClientRecord(identity, body.client, now)
            self._send_workers(identity)
        elif isinstance(body, messages.Heartbeat):
            record = self._clients.get(identity)
            if record is not None:
                record.last_seen = now
                self._send(identity, messages.encode(messages.Heartbeat()))
        elif isinstance(body, messages.Bye):
            record = self._clients.pop(identity, None)
            if record is not None:
                self._drop_at_workers(record.client_id)  # its main namespace and anything still queued
        elif isinstance(body, messages.Abandon):
            self._abandon(body.client)
        elif isinstance(body, messages.Status):
            self._send(identity, messages.encode(self._status()))

    def _send_workers(self, identity: Optional[bytes] = None) -> None:
        ready = tuple(w.describe() for w in self._workers.values() if w.state is WorkerState.READY)
        frames = messages.encode(messages.Workers(self.name, ready))
        targets = [identity] if identity is not None else list(self._clients)
        for target in targets:
            self._send(target, frames)

    def _expire_clients(self, now: float) -> None:
        stalled = now - self._last_expiry > STALL_FACTOR * self._heartbeat_interval
        self._last_expiry = now
        for identity, record in list(self._clients.items()):
            if stalled:
                record.last_seen = now  # this daemon was stopped or starved: its clients' silence is its own
                continue
            if now - record.last_seen > self._client_timeout:
                logger.warning("node %s: client %s silent for %.0f s; dropping its work", self.name,
                               record.client_id, now - record.last_seen, extra=context(client_id=record.client_id))
                del self._clients[identity]
                self._abandon(record.client_id)

    def _abandon(self, client_id: str) -> None:
        """Drop the client's queued tasks and stop every worker running one (it terminated or went away)."""
        wanted = bytes.fromhex(client_id)
        self._drop_at_workers(client_id)
        for worker in self._workers.values():
            slot = self._slots.read(worker.index)
            if slot.state is SlotState.RUNNING and slot.client == wanted and worker.state is WorkerState.READY:
                logger.info("node %s stops worker %d: its task %d belongs to client %s, which abandoned it",
                            self.name, worker.child.pid, slot.task_id, client_id,
                            extra=context(worker.child.pid, slot.task_id, client_id))
                worker.move(WorkerState.STOPPING)
                worker.abandoned = True
                worker.child.signal_group(signal.SIGKILL)

    def _drop_at_workers(self, client_id: str) -> None:
        """Tell every worker to forget a client: its queued tasks and its main namespace."""
        drop = messages.encode(messages.Drop(client_id))
        for worker in self._workers.values():
            if worker.control is not None:
                try:
                    worker.control.send_multipart(drop, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    # -- control -----------------------------------------------------------------------------------------

    def _on_control_message(self, frames: list[bytes]) -> None:
        self._link.on_message(frames)
        self._announce(self.address)

    def _send_join(self) -> None:
        running = sum(1 for w in self._workers.values() if self._slots.read(w.index).state is SlotState.RUNNING)
        self._link.send_join(messages.NodeEntry(self.name, self.address, self.processes, self.instance, running,
                                                socket.gethostname()))

    def _on_parent_gone(self) -> None:
        logger.info("node %s: the process that owns this embedded cluster is gone", self.name)
        self.stop()

    # -- workers -----------------------------------------------------------------------------------------

    def _all_ready(self) -> bool:
        return len(self._workers) == self.processes and all(
            w.state is WorkerState.READY for w in self._workers.values())

    def _worker_bind(self, index: int) -> str:
        if self._bind.scheme == "tcp":
            return addresses.Endpoint("tcp", self._worker_host, 0).zmq
        self._generation += 1
        return f"ipc://{self._runtime}/w{index}-{self._generation}"

    def _start_worker(self, index: int) -> None:
        """Start the worker at `index`; when the system refuses (out of descriptors, processes or memory,
        perhaps because a flood of connections holds our descriptors), try again later instead of dying."""
        try:
            self._spawn(index)
        except OSError as exc:
            self._spawn_failures += 1
            delay = min(RESTART_DELAY * 2 ** (self._spawn_failures - 1), RESTART_DELAY_MAX)
            now = time.monotonic()
            if now - self._last_spawn_log >= SPAWN_LOG_INTERVAL:
                self._last_spawn_log = now
                logger.error("node %s cannot start a worker (%s); trying again in %.1f s", self.name, exc, delay)
            self._restart_at[index] = now + delay
        else:
            self._spawn_failures = 0

    def _spawn(self, index: int) -> None:
        self._slots.reset(index)
        read_fd, write_fd = os.pipe()
        args = ["--slots", self._slots.path, "--slot-count", str(self.processes), "--slot-index", str(index),
                "--bind", self._worker_bind(index), "--parent", str(os.getpid())]
        if self._worker_ports is not None:
            args += ["--ports", "%d-%d" % self._worker_ports]
        args += self._worker_options
        try:
            child = self._starter.start(args, self._worker_env, write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(child.popen.stderr.fileno(), False)  # type: ignore[union-attr]
        self._workers[index] = WorkerProcess(index, child, read_fd,
                                             output_slots=self._slots if self._log_worker_output else None)
        self._counters.workers_started += 1
        logger.debug("node %s started worker %d in position %d", self.name, child.pid, index)

    def _on_worker_ready(self, worker: WorkerProcess) -> None:
        """The worker's pipe: its address once, then a byte whenever it starts a limited task."""
        fd = worker.ready_fd
        if fd is None:
            return
        data = os.read(fd, 4096)
        if not data:
            os.close(fd)
            worker.ready_fd = None
            return
        if worker.state is not WorkerState.STARTING:
            self._limited_running = True
            return
        if not data.endswith(b"\n"):
            return  # it died before binding; its exit is handled through the pidfd
        bound = addresses.parse(data.decode().strip(), allow_port_zero=True)
        # Clients use the advertised host; the daemon reaches a worker bound to a wildcard on loopback.
        # Clients are told the host they use for this node, with the port the worker bound.
        advertised = addresses.parse(self.address, allow_port_zero=True).host
        worker.address = bound.with_host(advertised).zmq if bound.scheme == "tcp" else bound.zmq
        local = bound.with_host("127.0.0.1") if bound.is_wildcard else bound
        worker.control = transport.new_socket(self._context, zmq.DEALER)
        assert self._guard is not None  # workers are started only once the daemon listens
        self._guard.connect(worker.control, Role.NODE)
        worker.control.connect(local.zmq)
        worker.move(WorkerState.READY)
        self._restart_failures = 0
        logger.debug("node %s: worker %d ready at %s", self.name, worker.child.pid, worker.address)
        if self._joined:
            self._send_workers()

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        code = worker.child.reap()
        if code is None:
            return
        was_ready = worker.state is WorkerState.READY
        was_stopping = worker.state is WorkerState.STOPPING
        worker.move(WorkerState.EXITED)
        worker.close_links()
        keep = [w.child.pid for w in self._workers.values() if w.state is not WorkerState.EXITED]
        stop_adopted(keep + self._starter.pids, self.who)
        slot = self._slots.read(worker.index)
        self._counters.worker_exited(worker, slot, self._slots.tally(worker.index))
        if slot.state is SlotState.RUNNING and worker.abandoned:
            logger.info("node %s stopped worker %d: task %d's client went away", self.name, worker.child.pid,
                        slot.task_id)
        elif slot.state is SlotState.RUNNING:
            self._report_failure(worker, slot, code)
        elif not was_ready and not was_stopping:
            self._restart_failures += 1
            logger.error("node %s: worker %d %s before it was ready", self.name, worker.child.pid,
                         describe_exit(code))
        elif code != 0 and not was_stopping:
            logger.warning("node %s: idle worker %d %s", self.name, worker.child.pid, describe_exit(code))
        del self._workers[worker.index]
        self._send_workers()
        if not self.stopping:
            delay = 0.0
            if self._restart_failures:
                delay = min(RESTART_DELAY * 2 ** (self._restart_failures - 1), RESTART_DELAY_MAX)
            self._restart_at[worker.index] = time.monotonic() + delay

    def _restart_due(self, now: float) -> None:
        for index in [index for index, when in self._restart_at.items() if when <= now]:
            del self._restart_at[index]
            self._start_worker(index)

    def _report_failure(self, worker: WorkerProcess, slot: SlotView, code: int) -> None:
        """Tell the task's client why its task failed: a limit the watchdog enforced, or a crash."""
        report = failure_report(worker, slot, code, self.name)
        self._counters.task_failed(report)
        logger.warning("%s", report.message, extra=context(worker.child.pid, slot.task_id, slot.client.hex()))
        frames = messages.encode(report)
        for identity, record in self._clients.items():
            if record.client_id == slot.client.hex():
                self._send(identity, frames)

    def _enforce_limits(self, now: float) -> bool:
        return enforce_limits(self._workers.values(), self._slots, now, self.name)

    # -- status ------------------------------------------------------------------------------------------

    def _status(self) -> messages.NodeStatus:
        return node_status(self._counters, self._slots, self._workers.values(), name=self.name, address=self.address,
                           instance=self.instance, memory_limit=self.memory_limit, processes=self.processes,
                           clients=len(self._clients))

    def _metric_families(self) -> list[Family]:
        return super()._metric_families() + node_families(self._counters, self._slots, self._workers.values(),
                                                          processes=self.processes, memory_limit=self.memory_limit,
                                                          clients=len(self._clients), joined=self._link.is_joined)

    def _health(self) -> Health:
        ready = sum(1 for w in self._workers.values() if w.state is WorkerState.READY)
        return not self.stopping and ready > 0, {
            "daemon": self.KIND, "node": self.name, "state": self.state.value, "joined": self._link.is_joined,
            "workers_ready": ready, "processes": self.processes}
