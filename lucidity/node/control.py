"""The control daemon: the cluster's membership, and nothing on the task path.

Nodes join with their full entry (JOIN) and then heartbeat with a small BEAT that carries their load; a
node this daemon does not know (after a restart of it, or a silence) is asked for its entry again, so a
restarted control node relearns the whole cluster within one heartbeat. Clients watch the membership: the
first WATCH gets the whole list, later ones an empty change, and every change (nodes joined, changed or
left; the load at most every `LOAD_INTERVAL`) goes to every watcher once, numbered, so that a client that
missed one asks for the whole list again. Tasks and results never pass through here, so adding nodes never
makes this process the bottleneck::

    node   --JOIN/BEAT/LEAVE-->  control --WELCOME (rejoin: send your JOIN)--> node
    client --WATCH------------>  control --NODES (whole, or the changes since)--> client
    anyone --STATUS----------->  control --STATUS_REPLY--> anyone

One thread owns the socket; expiry runs on the poll timeout, never on a sleep. What an idle cluster costs
here is one BEAT decoded and one WELCOME (encoded once) per node and heartbeat, and one empty change per
client and heartbeat, whatever the size of the cluster (issue 13: 256 idle nodes cost 4% of a core when
every heartbeat was a full JOIN and the expiry scanned every node at every message).

The control daemon of an embedded cluster (`lucidity.cluster.LocalCluster`) is also told the cluster's
private socket directory, and removes it when it exits: its owner may have been killed with SIGKILL, and
then no one else would. A control node started by an operator is never told one and removes nothing.

The registry itself is a `Membership`, driven by whichever loop owns its socket: this daemon's, or, for the
embedded cluster of one node that ``Pool()`` starts, the node daemon's (`HostedControl`): that cluster then
costs one interpreter and its imports fewer (issue 13, ``Pool()`` to its first result under 100 ms).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import zmq

from .. import addresses, messages, protocol, security, transport
from ..errors import ProtocolError
from ..security import Role
from .metrics import Family, Health, counter, gauge
from .skeleton import MAX_MESSAGE, Daemon

logger = logging.getLogger(__name__)

__all__ = ["ControlDaemon", "Membership", "HostedControl"]

#: Seconds of silence after which a node is declared lost (nodes heartbeat every second).
NODE_TIMEOUT = 5.0
#: Seconds of silence after which a watching client is forgotten (clients re-watch every second).
WATCHER_TIMEOUT = 30.0
#: A loop that went this long without a turn (it turns at least once a second) was stalled, in seconds.
STALL_TIME = 3.0
#: Changes of a node's load (its workers running a task) go to the clients at most this often, in seconds,
#: coalesced: placement (least_loaded) reads them, and a busy cluster's load changes at every heartbeat.
LOAD_INTERVAL = 0.5
#: The silent nodes are looked for at most this often (and at most a tenth of the node timeout), in seconds:
#: a look scans every node, and with hundreds of nodes messages arrive every few milliseconds.
SWEEP_INTERVAL = 0.5
#: Above this many messages a second (about as many nodes and clients), the loop rests `BUSY_REST` seconds
#: after each turn that read messages, so that one turn reads many: on a virtual machine a wake-up of the
#: loop (poll, the ZeroMQ mailbox, a turn in Python) costs more than the message it wakes for. Below it,
#: membership answers come at once (an embedded cluster's start-up waits on them).
BUSY_RATE = 32
BUSY_REST = 0.05

#: The header frame of a BEAT (`_receive` answers one that repeats a node's last BEAT without parsing it).
BEAT_HEADER = bytes((protocol.VERSION, protocol.Kind.BEAT))

ACCEPTED = frozenset({protocol.Kind.JOIN, protocol.Kind.BEAT, protocol.Kind.LEAVE, protocol.Kind.WATCH,
                      protocol.Kind.STATUS, protocol.Kind.HEARTBEAT})
#: With a cluster secret, what each role may send here: clients watch, nodes join.
ACCEPTED_BY_ROLE = {
    Role.CLIENT: frozenset({protocol.Kind.WATCH, protocol.Kind.HEARTBEAT, protocol.Kind.STATUS}),
    Role.NODE: frozenset({protocol.Kind.JOIN, protocol.Kind.BEAT, protocol.Kind.LEAVE, protocol.Kind.STATUS}),
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
    beat: bytes = b""  # the meta frame of its last BEAT, checked then

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
        check_runtime_dir(runtime_dir, bind)
        super().__init__("control", addresses.bind_endpoint(bind, default_port=addresses.CONTROL_PORT).zmq,
                         secret=secret, insecure=insecure, parent_fd=parent_fd, ready_fd=ready_fd, metrics=metrics)
        self._runtime_dir = runtime_dir
        self._on_serving = on_serving
        self.membership = Membership(self._send, node_timeout)
        self.instance = self.membership.instance
        self.address = ""
        # The pace of the loop: messages read since `_rate_since`, whether that was busy, and a rest's end.
        self._rate_since = time.monotonic()
        self._busy = False
        self._rest_until = 0.0

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM or the owner's exit. Returns the exit status."""
        try:
            return self._serve()
        finally:
            remove_runtime_dir(self._runtime_dir)

    def _serve(self) -> int:
        status = self._open()
        if status is not None:
            return status
        self.address = self.membership.address = self._bound
        logger.info("control listening at %s (instance %s)", self.address, self.instance)
        self._announce(self.address)
        stop_attachment = self._on_serving(self.address) if self._on_serving is not None else None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        resting = zmq.Poller()  # all but the listening socket: what still ends a rest at once
        for fd in [self._waker.read_fd] + ([self._parent_fd] if self._parent_fd is not None else []):
            poller.register(fd, zmq.POLLIN)
            resting.register(fd, zmq.POLLIN)
        try:
            timeout = self.membership.turn(time.monotonic())
            while not self.stopping:
                if self._guard_failed():
                    return 1
                now = time.monotonic()
                # Whole milliseconds, rounded up: a poll of 0 ms before a deadline would spin until it passed.
                if now < self._rest_until:
                    events = dict(resting.poll(math.ceil(min(timeout, self._rest_until - now) * 1000)))
                else:
                    events = dict(poller.poll(math.ceil(timeout * 1000)))
                if self._waker.read_fd in events:
                    self._waker.drain()
                if self._parent_fd is not None and self._parent_fd in events:
                    logger.info("control: the process that owns this embedded cluster is gone")
                    break
                if self._router in events:
                    self._drain_router(self.membership.receive, ACCEPTED_BY_ROLE, ACCEPTED)
                    self._pace(time.monotonic())
                timeout = self.membership.turn(time.monotonic())
                self._answer_scrapes()
        finally:
            logger.info("control at %s stopping", self.address)
            if stop_attachment is not None:
                stop_attachment()
            self._close()
        return 0

    def _pace(self, now: float) -> None:
        """After a turn that read messages, rest for `BUSY_REST` if messages come faster than `BUSY_RATE`."""
        if now - self._rate_since >= 1.0:
            self._busy = self.membership.received / (now - self._rate_since) > BUSY_RATE
            self.membership.received, self._rate_since = 0, now
        if self._busy:
            self._rest_until = now + BUSY_REST

    def _metric_families(self) -> list[Family]:
        return super()._metric_families() + self.membership.metric_families()

    def _health(self) -> Health:
        healthy, body = super()._health()
        return healthy, {**body, "nodes": self.membership.node_count, "clients": self.membership.watcher_count}


class Membership:
    """The registry of nodes and the answers to nodes, watching clients and STATUS, without a socket or a loop.

    The loop that owns the listening socket hands it every message (`receive`) and a turn after each poll
    (`turn`), and sends what it answers through `send`: the control daemon's loop, or a node daemon's that is
    its embedded cluster's control node (`HostedControl`).

    Args:
        send: sends frames to the peer with the given routing identity, without blocking.
        node_timeout: seconds of silence after which a node is declared lost.
    """

    def __init__(self, send: Callable[[bytes, list[Any]], None], node_timeout: float = NODE_TIMEOUT) -> None:
        self._send = send
        self._node_timeout = node_timeout
        self.instance = os.urandom(16).hex()  # as random as uuid4, without importing uuid (1 ms)
        self.address = ""  # where it listens, once bound: STATUS replies name it
        self._nodes: dict[bytes, NodeRecord] = {}
        self._watchers: dict[bytes, float] = {}
        self._last_turn = time.monotonic()
        self._sweep_interval = min(SWEEP_INTERVAL, node_timeout / 10)
        self._next_sweep = 0.0
        self.received = 0  # messages read; the control daemon's loop reads its pace from it
        self.node_events = dict.fromkeys(NODE_EVENTS, 0)  # for the metrics
        # The clients' view: the number of the last change sent, the names changed since (membership: sent
        # at the end of this loop turn; load: at `_next_load_send`), and what is sent often, encoded once.
        self._seq = 0
        self._changed: set[str] = set()
        self._load_changed: set[str] = set()
        self._next_load_send = 0.0
        self._welcome = messages.encode(messages.Welcome(self.instance))
        self._ask_rejoin = messages.encode(messages.Welcome(self.instance, rejoin=True))
        self._encoded_seq = -1  # the seq of the two below
        self._whole_list: list[Any] = []
        self._no_change: list[Any] = []

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def turn(self, now: float) -> float:
        """After a poll: send the changes due, drop silent nodes and watchers; return the seconds within which
        the loop must give it its next turn."""
        until_sweep = self._expire(now)
        self.send_changes(now)  # the nodes just found silent too
        timeout = min(until_sweep, 1.0)
        if self._load_changed:
            timeout = min(timeout, max(0.0, self._next_load_send - now))
        return timeout

    def receive(self, identity: bytes, frames: list[Any], accepted: frozenset[protocol.Kind]) -> None:
        """One message from the peer `identity` that may send the kinds `accepted` (ProtocolError if bad)."""
        self.received += 1
        record = self._nodes.get(identity)
        if (record is not None and len(frames) == 2 and bytes(frames[0]) == BEAT_HEADER
                and protocol.Kind.BEAT in accepted and bytes(frames[1]) == record.beat):
            # The very bytes of this node's last BEAT, which were checked when they came: nothing new but
            # its life. Most of what an idle cluster sends here, answered without JSON or a body.
            record.last_seen = time.monotonic()
            self._send(identity, self._welcome)
            return
        body = messages.parse(protocol.decode(frames, accepted))
        self._handle(identity, body)
        if isinstance(body, messages.NodeBeat):
            record = self._nodes.get(identity)
            if record is not None and record.name == body.name and record.instance == body.instance:
                record.beat = bytes(frames[1])

    def _handle(self, identity: bytes, body: messages.Body) -> None:
        now = time.monotonic()
        if isinstance(body, messages.NodeBeat):
            self._beat(identity, body, now)
        elif isinstance(body, messages.NodeEntry):  # JOIN
            self._join(identity, body, now)
            self._send(identity, self._welcome)
        elif isinstance(body, messages.Leave):
            record = self._nodes.pop(identity, None)
            if record is not None:
                logger.info("node %s left", record.name)
                self.node_events["left"] += 1
                self._changed.add(record.name)
        elif isinstance(body, messages.Watch):
            self._watchers[identity] = now
            self._send(identity, self._answer_watch(body))
        elif isinstance(body, messages.Heartbeat):  # a client's heartbeat here is a WATCH for the whole list
            self._watchers[identity] = now
            self._send(identity, self._answer_watch(messages.Watch()))
        elif isinstance(body, messages.Status):
            reply = messages.ControlStatus(self.address, self.instance,
                                           tuple(r.describe() for r in self._nodes.values()), len(self._watchers))
            self._send(identity, messages.encode(reply))

    def _beat(self, identity: bytes, beat: messages.NodeBeat, now: float) -> None:
        record = self._nodes.get(identity)
        if record is None or record.name != beat.name or record.instance != beat.instance:
            # Not listed (this daemon restarted, dropped the node after a silence, or the node reconnected
            # under a new identity): ask for its entry, which comes back as a JOIN at once.
            self._send(identity, self._ask_rejoin)
            return
        record.last_seen = now
        if record.running != beat.running:
            record.running = beat.running
            self._load_changed.add(record.name)
        self._send(identity, self._welcome)

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
        if record is not None and record.describe() == join:
            record.last_seen = now
            return
        listed = record if record is not None and record.name == join.name else None
        for other, existing in list(self._nodes.items()):
            if existing.name == join.name and other != identity:
                if existing.instance == join.instance:
                    listed = existing  # the same node, reconnected: a new identity here, nothing new to clients
                else:
                    logger.info("node %s rejoined as a new instance; forgetting the old one", existing.name)
                del self._nodes[other]
        self._nodes[identity] = NodeRecord(identity, join.name, join.address, join.processes, join.instance,
                                           join.running, now, join.host)
        if listed is None or listed.instance != join.instance:
            logger.info("node %s joined from %s with %d workers", join.name, join.address, join.processes)
            self.node_events["joined"] += 1
        if listed is None or listed.describe() != join:
            same_but_load = listed is not None and listed.describe().replace(running=join.running) == join
            (self._load_changed if same_but_load else self._changed).add(join.name)
        if record is not None and record.name != join.name:
            self._changed.add(record.name)  # an identity that spoke for another node: that one is gone

    def _expire(self, now: float) -> float:
        """Drop silent nodes and watchers (at most every sweep interval); return seconds until the next look."""
        if now - self._last_turn > STALL_TIME:
            # This process was stopped or starved: the silence it sees is its own, not its nodes'.
            for record in self._nodes.values():
                record.last_seen = now
            self._next_sweep = 0.0
        self._last_turn = now
        if now < self._next_sweep:
            return self._next_sweep - now
        for identity, record in list(self._nodes.items()):
            if now - record.last_seen > self._node_timeout:
                logger.warning("node %s lost: silent for %.1f s", record.name, now - record.last_seen)
                del self._nodes[identity]
                self.node_events["lost"] += 1
                self._changed.add(record.name)
        for identity, seen in list(self._watchers.items()):
            if now - seen > WATCHER_TIMEOUT:
                del self._watchers[identity]
        # No node can fall silent for the timeout before the earliest deadline of those seen so far (a
        # heartbeat only moves a deadline later), nor one that joins from now on before a timeout from now;
        # looking again sooner than the sweep interval is waste.
        deadlines = [r.last_seen + self._node_timeout for r in self._nodes.values()]
        deadlines += [seen + WATCHER_TIMEOUT for seen in self._watchers.values()]
        earliest = min(deadlines, default=now + WATCHER_TIMEOUT)
        self._next_sweep = max(min(earliest, now + min(self._node_timeout, WATCHER_TIMEOUT)),
                               now + self._sweep_interval)
        return self._next_sweep - now

    def metric_families(self) -> list[Family]:
        """The cluster's gauges and the node events counter, for /metrics."""
        nodes = list(self._nodes.values())
        busy_nodes = sum(1 for r in nodes if r.running)
        running = sum(min(r.running, r.processes) for r in nodes)
        return [
            gauge("lucidity_cluster_nodes", "Nodes listed by the control node, by whether a worker ran a task at "
                  "their last heartbeat", {"idle": len(nodes) - busy_nodes, "busy": busy_nodes}, label="state"),
            gauge("lucidity_cluster_workers", "Workers of the listed nodes, by whether they ran a task at the last "
                  "heartbeat", {"idle": sum(r.processes for r in nodes) - running, "busy": running}, label="state"),
            gauge("lucidity_cluster_clients", "Clients watching the membership", len(self._watchers)),
            counter("lucidity_cluster_node_events_total", "Nodes listed (joined), that left, or that went silent "
                    "(lost)", self.node_events, label="event"),
        ]

    def _answer_watch(self, watch: messages.Watch) -> list[Any]:
        """An empty change for a client that holds the latest list; the whole list for any other."""
        if self._encoded_seq != self._seq:
            # Encoded once per change, however many clients ask: with hundreds of nodes the whole list is
            # tens of kilobytes of JSON. A change made since (not yet numbered) follows it as the next change.
            self._encoded_seq = self._seq
            self._whole_list = messages.encode(messages.Nodes(
                tuple(r.describe() for r in self._nodes.values()), self.instance, self._seq))
            self._no_change = messages.encode(messages.Nodes((), self.instance, self._seq, full=False))
        up_to_date = watch.seq == self._seq and watch.instance == self.instance
        return self._no_change if up_to_date else self._whole_list

    def send_changes(self, now: float) -> None:
        """Number the changes made since the last and send them to every watcher: membership at once (at the
        end of the loop turn that made them), the load at most every `LOAD_INTERVAL`."""
        load_due = bool(self._load_changed) and now >= self._next_load_send
        if not self._changed and not load_due:
            return
        names = self._changed | self._load_changed  # load changes ride along with membership ones
        self._changed = set()
        self._load_changed = set()
        self._next_load_send = now + LOAD_INTERVAL
        self._seq += 1
        if not self._watchers:
            return  # a client that watches later asks with an older number, or none, and gets the whole list
        by_name = {r.name: r for r in self._nodes.values()}
        entries = tuple(by_name[name].describe() for name in sorted(names) if name in by_name)
        left = tuple(sorted(name for name in names if name not in by_name))
        frames = messages.encode(messages.Nodes(entries, self.instance, self._seq, full=False, left=left))
        for identity in self._watchers:
            self._send(identity, frames)


class HostedControl:
    """The control node of an embedded cluster of one node, served by that node daemon's own loop.

    Why: ``Pool()`` starts a cluster of one node on this machine, and a control daemon of its own cost that
    start an interpreter and its imports (about 60 ms of CPU, on a machine of two cores beside the node
    daemon's and the caller's; issue 13). The node daemon listens at the control address too, on a second
    ROUTER socket that only its thread uses, and hands what comes there to a `Membership`; its own line to
    the control node (`ControlLink`) dials that address like any other, so that it joins, heartbeats and
    leaves as a node of a separate control node would, and clients, ``lucidity status`` and the tests see
    the same membership. What the node daemon's loop does with it: `open` once listening, poll `socket`
    and drain it into `membership`, call `turn` after each poll, `close` among its sockets, and remove
    `runtime_dir` once every socket is closed.

    Args:
        context: the node daemon's ZeroMQ context.
        bind: the control address (an embedded cluster's ``ipc://DIR/control``).
        runtime_dir: the embedded cluster's private directory, removed when the daemon exits (see the module
            docstring), or None.

    Raises:
        ValueError: `runtime_dir` is not the directory of an ipc:// `bind` address.
    """

    def __init__(self, context: zmq.Context[Any], bind: str, runtime_dir: Optional[str]) -> None:
        check_runtime_dir(runtime_dir, bind)
        self.bind_address = addresses.bind_endpoint(bind, default_port=addresses.CONTROL_PORT).zmq
        self.runtime_dir = runtime_dir
        self.socket = transport.new_socket(context, zmq.ROUTER)
        self.membership = Membership(self._send)

    def open(self, guard: Optional[security.Guard], who: str) -> bool:
        """Listen at the control address, behind the daemon's guard; False (logged) if it cannot be bound."""
        assert guard is not None  # the daemon listens, behind its guard, before it opens this
        guard.listen(self.socket)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        try:
            self.membership.address = transport.bind(self.socket, self.bind_address)
        except zmq.ZMQError as exc:
            logger.error("%s cannot bind the control address %s: %s", who, self.bind_address, exc)
            return False
        logger.info("control listening at %s (instance %s), in %s", self.membership.address,
                    self.membership.instance, who)
        return True

    def turn(self, now: float) -> float:
        """The membership's turn after a poll; the seconds until it needs the next."""
        return self.membership.turn(now)

    def _send(self, identity: bytes, frames: list[Any]) -> None:
        try:
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("control could not reach a peer: %s", exc)

    def close(self) -> None:
        self.socket.close(linger=0)


def check_runtime_dir(runtime_dir: Optional[str], bind: str) -> None:
    """Raise ValueError unless `runtime_dir` is None or the directory of the ipc:// socket at `bind`."""
    if runtime_dir is not None and not _holds_socket(runtime_dir, bind):
        # Removing a whole tree is only safe for the directory made for this cluster's sockets.
        raise ValueError(f"--runtime-dir {runtime_dir} is not the directory of the ipc:// address {bind}")


def remove_runtime_dir(runtime_dir: Optional[str]) -> None:
    """Remove an embedded cluster's private directory (None: an operator's control node, which removes nothing).

    Called after the control socket is closed. Node daemons may still be stopping; they never need the
    directory again, and nothing recreates it.
    """
    if runtime_dir is not None:
        import shutil  # here, not at the top: 1.5 ms of every daemon's start (issue 13)

        shutil.rmtree(runtime_dir, ignore_errors=True)
        logger.info("control removed the embedded cluster's directory %s", runtime_dir)


def _holds_socket(directory: str, bind: str) -> bool:
    """Whether `bind` is an ipc:// socket directly inside `directory`."""
    if not bind.startswith("ipc://"):
        return False
    return os.path.dirname(os.path.abspath(bind[len("ipc://"):])) == os.path.abspath(directory)
