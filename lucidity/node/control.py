"""The control daemon: the cluster's membership, and nothing on the task path.

Nodes join and heartbeat (every heartbeat is a full JOIN, so a restarted control node relearns the whole
cluster within one interval); clients watch the membership and learn where the nodes are. Tasks and
results never pass through here, so adding nodes never makes this process the bottleneck::

    node   --JOIN/LEAVE-->  control --WELCOME--> node
    client --WATCH------->  control --NODES----> client   (now, and again whenever membership changes)
    anyone --STATUS------>  control --STATUS_REPLY--> anyone

One thread owns the socket; expiry runs on the poll timeout, never on a sleep.

The control daemon of an embedded cluster (`lucidity.cluster.LocalCluster`) is also told the cluster's
private socket directory, and removes it when it exits: its owner may have been killed with SIGKILL, and
then no one else would. A control node started by an operator is never told one and removes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import zmq

from .. import addresses, messages, protocol
from ..errors import ProtocolError
from ..security import Role
from .metrics import Family, Health, counter, gauge
from .skeleton import Daemon

logger = logging.getLogger(__name__)

__all__ = ["ControlDaemon"]

#: Seconds of silence after which a node is declared lost (nodes heartbeat every second).
NODE_TIMEOUT = 5.0
#: Seconds of silence after which a watching client is forgotten (clients re-watch every second).
WATCHER_TIMEOUT = 30.0
#: A loop that went this long without a turn (it turns at least once a second) was stalled, in seconds.
STALL_TIME = 3.0

ACCEPTED = frozenset({protocol.Kind.JOIN, protocol.Kind.LEAVE, protocol.Kind.WATCH, protocol.Kind.STATUS,
                      protocol.Kind.HEARTBEAT})
#: With a cluster secret, what each role may send here: clients watch, nodes join.
ACCEPTED_BY_ROLE = {
    Role.CLIENT: frozenset({protocol.Kind.WATCH, protocol.Kind.HEARTBEAT, protocol.Kind.STATUS}),
    Role.NODE: frozenset({protocol.Kind.JOIN, protocol.Kind.LEAVE, protocol.Kind.STATUS}),
}


@dataclass
class NodeRecord:
    identity: bytes
    name: str
    address: str
    processes: int
    instance: str
    running: int
    last_seen: float
    host: str = ""

    def describe(self) -> messages.NodeEntry:
        return messages.NodeEntry(self.name, self.address, self.processes, self.instance, self.running, self.host)


#: The values of the node events counter's label.
NODE_EVENTS = ("joined", "left", "lost")


class ControlDaemon(Daemon):
    """Keeps the registry of nodes for the cluster at `bind`.

    Args:
        bind: listening address, ``tcp://127.0.0.1:3030`` by default.
        parent_fd: a pipe whose closing means the owner is gone (embedded clusters).
        ready_fd: a pipe to which the bound address is written once listening (embedded clusters).
        runtime_dir: the embedded cluster's private directory, which must hold the ipc:// socket at `bind`;
            removed when this daemon exits, however its owner ended (embedded clusters).
        on_serving: called with the bound address once listening (``lucidity control --dashboard``); what
            it returns is called when the daemon stops.
        metrics: ``HOST:PORT`` to serve Prometheus metrics (/metrics) and a health check (/health) at.

    Raises:
        ValueError: `runtime_dir` is not the directory of an ipc:// `bind` address.
    """

    KIND = "control"

    def __init__(self, bind: str = "tcp://127.0.0.1:3030", *, parent_fd: Optional[int] = None,
                 ready_fd: Optional[int] = None, node_timeout: float = NODE_TIMEOUT,
                 secret: Optional[bytes] = None, insecure: bool = False, runtime_dir: Optional[str] = None,
                 on_serving: Optional[Callable[[str], Callable[[], None]]] = None,
                 metrics: Optional[str] = None) -> None:
        if runtime_dir is not None and not _holds_socket(runtime_dir, bind):
            # Removing a whole tree is only safe for the directory made for this cluster's sockets.
            raise ValueError(f"--runtime-dir {runtime_dir} is not the directory of the ipc:// address {bind}")
        super().__init__("control", addresses.bind_endpoint(bind, default_port=addresses.CONTROL_PORT).zmq,
                         secret=secret, insecure=insecure, parent_fd=parent_fd, ready_fd=ready_fd, metrics=metrics)
        self._runtime_dir = runtime_dir
        self._on_serving = on_serving
        self._node_timeout = node_timeout
        self.instance = uuid.uuid4().hex
        self.address = ""
        self._nodes: dict[bytes, NodeRecord] = {}
        self._watchers: dict[bytes, float] = {}
        self._last_expiry = time.monotonic()
        self._node_events = dict.fromkeys(NODE_EVENTS, 0)  # for the metrics

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM or the owner's exit. Returns the exit status."""
        try:
            return self._serve()
        finally:
            if self._runtime_dir is not None:
                # After our own socket is closed. Node daemons may still be stopping; they never need the
                # directory again, and nothing recreates it.
                shutil.rmtree(self._runtime_dir, ignore_errors=True)
                logger.info("control removed the embedded cluster's directory %s", self._runtime_dir)

    def _serve(self) -> int:
        status = self._open()
        if status is not None:
            return status
        self.address = self._bound
        logger.info("control listening at %s (instance %s)", self.address, self.instance)
        self._announce(self.address)
        stop_attachment = self._on_serving(self.address) if self._on_serving is not None else None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._waker.read_fd, zmq.POLLIN)
        if self._parent_fd is not None:
            poller.register(self._parent_fd, zmq.POLLIN)
        try:
            while not self.stopping:
                if self._guard_failed():
                    return 1
                timeout = min(self._expire(time.monotonic()), 1.0)
                events = dict(poller.poll(int(timeout * 1000)))
                if self._waker.read_fd in events:
                    self._waker.drain()
                if self._parent_fd is not None and self._parent_fd in events:
                    logger.info("control: the process that owns this embedded cluster is gone")
                    break
                if self._router in events:
                    self._drain_router(self._receive, ACCEPTED_BY_ROLE, ACCEPTED)
                self._answer_scrapes()
        finally:
            logger.info("control at %s stopping", self.address)
            if stop_attachment is not None:
                stop_attachment()
            self._close()
        return 0

    def _receive(self, identity: bytes, frames: list[Any], accepted: frozenset[protocol.Kind]) -> None:
        self._handle(identity, messages.parse(protocol.decode(frames, accepted)))

    def _handle(self, identity: bytes, body: messages.Body) -> None:
        now = time.monotonic()
        if isinstance(body, messages.NodeEntry):  # JOIN
            self._join(identity, body, now)
            self._send(identity, messages.encode(messages.Welcome(self.instance)))
        elif isinstance(body, messages.Leave):
            record = self._nodes.pop(identity, None)
            if record is not None:
                logger.info("node %s left", record.name)
                self._node_events["left"] += 1
                self._broadcast()
        elif isinstance(body, (messages.Watch, messages.Heartbeat)):
            self._watchers[identity] = now
            self._send(identity, self._nodes_message())
        elif isinstance(body, messages.Status):
            reply = messages.ControlStatus(self.address, self.instance,
                                           tuple(r.describe() for r in self._nodes.values()), len(self._watchers))
            self._send(identity, messages.encode(reply))

    def _join(self, identity: bytes, join: messages.NodeEntry, now: float) -> None:
        record = self._nodes.get(identity)
        if record is None or record.address != join.address:
            # Clients connect to what is listed here: only an address someone can dial is listed.
            try:
                endpoint = addresses.parse(join.address, what="a joining node's address")
            except ValueError as exc:
                raise ProtocolError(f"node {join.name!r} cannot be listed: {exc}") from None
            if endpoint.is_wildcard:
                raise ProtocolError(f"node {join.name!r} joined with the wildcard address {join.address}")
        if record is not None and record.address == join.address and record.instance == join.instance:
            record.last_seen = now
            record.running = join.running
            return
        for other, existing in list(self._nodes.items()):
            if existing.name == join.name and other != identity:
                logger.info("node %s rejoined as a new instance; forgetting the old one", existing.name)
                del self._nodes[other]
        self._nodes[identity] = NodeRecord(identity, join.name, join.address, join.processes, join.instance, 0, now,
                                           join.host)
        logger.info("node %s joined from %s with %d workers", join.name, join.address, join.processes)
        self._node_events["joined"] += 1
        self._broadcast()

    def _expire(self, now: float) -> float:
        """Drop silent nodes and watchers; return seconds until the next one could expire."""
        changed = False
        if now - self._last_expiry > STALL_TIME:
            # This process was stopped or starved: the silence it sees is its own, not its nodes'.
            for record in self._nodes.values():
                record.last_seen = now
        self._last_expiry = now
        for identity, record in list(self._nodes.items()):
            if now - record.last_seen > self._node_timeout:
                logger.warning("node %s lost: silent for %.1f s", record.name, now - record.last_seen)
                del self._nodes[identity]
                self._node_events["lost"] += 1
                changed = True
        for identity, seen in list(self._watchers.items()):
            if now - seen > WATCHER_TIMEOUT:
                del self._watchers[identity]
        if changed:
            self._broadcast()
        deadlines = [r.last_seen + self._node_timeout for r in self._nodes.values()]
        deadlines += [seen + WATCHER_TIMEOUT for seen in self._watchers.values()]
        return max(0.05, min(deadlines, default=now + WATCHER_TIMEOUT) - now)

    def _metric_families(self) -> list[Family]:
        nodes = list(self._nodes.values())
        busy_nodes = sum(1 for r in nodes if r.running)
        running = sum(min(r.running, r.processes) for r in nodes)
        return super()._metric_families() + [
            gauge("lucidity_cluster_nodes", "Nodes listed by the control node, by whether a worker ran a task at "
                  "their last heartbeat", {"idle": len(nodes) - busy_nodes, "busy": busy_nodes}, label="state"),
            gauge("lucidity_cluster_workers", "Workers of the listed nodes, by whether they ran a task at the last "
                  "heartbeat", {"idle": sum(r.processes for r in nodes) - running, "busy": running}, label="state"),
            gauge("lucidity_cluster_clients", "Clients watching the membership", len(self._watchers)),
            counter("lucidity_cluster_node_events_total", "Nodes listed (joined), that left, or that went silent "
                    "(lost)", self._node_events, label="event"),
        ]

    def _health(self) -> Health:
        healthy, body = super()._health()
        return healthy, {**body, "nodes": len(self._nodes), "clients": len(self._watchers)}

    def _nodes_message(self) -> list[Any]:
        return messages.encode(messages.Nodes(tuple(r.describe() for r in self._nodes.values()), self.instance))

    def _broadcast(self) -> None:
        frames = self._nodes_message()
        for identity in self._watchers:
            self._send(identity, frames)


def _holds_socket(directory: str, bind: str) -> bool:
    """Whether `bind` is an ipc:// socket directly inside `directory`."""
    if not bind.startswith("ipc://"):
        return False
    return os.path.dirname(os.path.abspath(bind[len("ipc://"):])) == os.path.abspath(directory)
