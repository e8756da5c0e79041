"""The roster: the nodes and workers a client knows, and what each report about them means. No sockets.

The client's I/O thread feeds it the control node's lists (the whole list once, then its changes: `watch`
says which the client needs), each node's report of its workers and the passing of time, and carries out what
it answers: which nodes to connect to or drop, which workers are new or gone, which nodes to ping. It keeps
what the faces read: the workers that count (`worker_count`), the nodes as placement sees them (`membership`),
those not reached yet (`unreachable`), and whether every worker told of has been reached (`all_reached`). The
client makes a `NodeLink` or `WorkerLink`, socket included, for each new entry and adds it here.

The rules, each forced by a fault the tests reproduce (docs/failures.md):

- a node missing from the control node's list is dropped only once it has not answered this client for
  `UNLISTED_GRACE`, and not at all while the control node relearns the cluster (after a restart, or after
  this client was cut off from it for `CONTROL_SILENCE`): the control node's view lags the client's;
- a node never reached (a firewall, a route) is unreachable, not lost: named once, not waited for, used as
  soon as it answers; a node that answered and then fell silent for the node timeout is lost;
- a process stopped or starved for a while (SIGSTOP, a suspended laptop) hears silence that is its own, and
  gives its nodes a fresh timeout instead of dropping them all;
- a change of the control node's list that does not follow the last one applied (one lost while the client
  reconnected) is not applied: the client asks for the whole list and decides nothing until it has it.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from . import addresses, messages
from .links import NodeInfo, NodeLink, WorkerLink
from .messages import NodeEntry, WorkerEntry

logger = logging.getLogger("lucidity.client")

__all__ = ["Roster", "CONTROL_SILENCE", "UNLISTED_GRACE", "HEARTBEAT_INTERVAL", "STALL_TIME"]

#: Seconds between WATCH to control and HEARTBEAT to nodes.
HEARTBEAT_INTERVAL = 1.0
#: Silence from the control node after which the client dials its other addresses (or resolves its name
#: again), and after which its first list is read as a relearning one (nodes it lacks are not lost yet).
CONTROL_SILENCE = 3.0
#: A node missing from the control node's list is dropped once it has not answered this client for this long.
UNLISTED_GRACE = 2.5 * HEARTBEAT_INTERVAL
#: A heartbeat this late means the I/O thread itself was stalled, in seconds.
STALL_TIME = 3 * HEARTBEAT_INTERVAL


class Roster:
    """The nodes and workers one client knows.

    Args:
        node_timeout: a node that answered and then stayed silent this long is lost, in seconds.
    """

    def __init__(self, node_timeout: float) -> None:
        self.node_timeout = node_timeout
        self.nodes: dict[str, NodeLink] = {}
        self.workers: dict[str, WorkerLink] = {}  # by key, "node/worker id"
        self.control_heard = 0.0  # when the control node last spoke (0: never)
        self._control_instance = ""
        self._control_changed_at = 0.0
        # The control node's list as this client holds it: its dialable entries by name, the control node's
        # instance and the sequence number of the last change applied (None: none held, ask for the whole).
        self._listed: dict[str, NodeEntry] = {}
        self._listed_instance = ""
        self._listed_seq: Optional[int] = None
        self._last_check = 0.0
        # Read by the faces (through the client): replaced whole, so a reader never sees one half-made.
        self.membership: tuple[NodeInfo, ...] = ()
        self.worker_count = 0
        self.unreachable: tuple[str, ...] = ()

    # -- what the control node lists -----------------------------------------------------------------------

    def watch(self) -> messages.Watch:
        """The WATCH to send once a heartbeat: it names the list this client holds, so that the control node
        answers with what changed (usually nothing) instead of the whole list; a client that holds none, or
        missed a change, asks for the whole list."""
        if self._listed_seq is None:
            return messages.Watch()
        return messages.Watch(self._listed_instance, self._listed_seq)

    def control_listed(self, body: messages.Nodes, now: float) -> tuple[list[NodeEntry], list[NodeLink]]:
        """The control node's list, or a change of it, arrived: (entries of the nodes to connect to, the nodes
        to drop). A change that does not follow the last one applied is not applied (`watch` then asks for the
        whole list), and nothing is decided until the whole list comes."""
        if self.control_heard and now - self.control_heard > CONTROL_SILENCE:
            # Cut off from the control node for a while: it may have lost our nodes' heartbeats too, and
            # lists them again only once they reach it. Until then a node missing from its list is not lost.
            self._control_changed_at = now
        self.control_heard = now
        if body.instance != self._control_instance:
            # A new control node (a restart) knows no node until they heartbeat again: while it relearns
            # the cluster, a node missing from its list is not a node lost. (The first list is not a restart.)
            if self._control_instance:
                self._control_changed_at = now
            self._control_instance = body.instance
        if not self._apply(body):
            return [], []
        relearning = now - self._control_changed_at < self.node_timeout and bool(self.nodes)
        listed = self._listed
        dropped = []
        for name, node in self.nodes.items():
            entry = listed.get(name)
            if entry is None and (relearning or now - node.last_seen < UNLISTED_GRACE):
                # A node that answered us a moment ago is alive whatever the list says; one that left stops
                # answering, and goes with a later list.
                continue
            if entry is None or entry.address != node.address or entry.instance != node.instance:
                dropped.append(node)
        new = []
        for name, entry in listed.items():
            known = self.nodes.get(name)
            if known is None or known in dropped:
                new.append(entry)
            else:
                known.running = entry.running
        return new, dropped

    def _apply(self, body: messages.Nodes) -> bool:
        """Bring the list held up to date with `body`; False if it cannot be (a change was missed, or the
        list held is another control node's), and then the next WATCH asks for the whole list."""
        if body.full:
            self._listed = {entry.name: entry for entry in body.nodes if dialable(entry.address)}
            self._listed_instance, self._listed_seq = body.instance, body.seq
            return True
        held = self._listed_seq
        if held is None or body.instance != self._listed_instance:
            self._listed_seq = None
            return False
        if body.seq <= held:
            return True  # nothing new (the answer to an up-to-date WATCH), or already in the whole list held
        if body.seq != held + 1:
            logger.info("lucidity client: missed a change of the control node's list (had %d, got %d); asking for "
                        "the whole list", held, body.seq)
            self._listed_seq = None
            return False
        for name in body.left:
            self._listed.pop(name, None)
        for entry in body.nodes:
            if dialable(entry.address):
                self._listed[entry.name] = entry
            else:
                self._listed.pop(entry.name, None)
        self._listed_seq = body.seq
        return True

    def add_node(self, node: NodeLink) -> None:
        self.nodes[node.name] = node

    def remove_node(self, node: NodeLink) -> None:
        """Forget a node (its workers first, through `remove_worker`)."""
        del self.nodes[node.name]

    # -- what a node reports of its workers ------------------------------------------------------------------

    def workers_reported(self, node: NodeLink, workers: Sequence[WorkerEntry]) -> tuple[list[WorkerEntry],
                                                                                          list[WorkerLink]]:
        """A node listed its workers: (entries of the workers to connect to, the workers gone)."""
        node.has_reported = True
        if node.unreachable:
            node.unreachable = False
            logger.warning("lucidity client: node %s answered; using it", node.name)
        listed = {worker.id: worker for worker in workers if dialable(worker.address)}
        gone = [link for worker_id, link in node.workers.items() if worker_id not in listed]
        new = [entry for worker_id, entry in listed.items() if worker_id not in node.workers]
        return new, gone

    def add_worker(self, node: NodeLink, link: WorkerLink) -> None:
        node.workers[link.worker_id] = link
        self.workers[link.key] = link

    def remove_worker(self, link: WorkerLink) -> None:
        del self.nodes[link.node].workers[link.worker_id]
        del self.workers[link.key]

    def worker_reached(self, link: WorkerLink) -> None:
        if link.unreachable:
            link.unreachable = False
            logger.warning("lucidity client: worker %s is reachable now; using it", link.key)

    # -- time ---------------------------------------------------------------------------------------------------

    def check(self, now: float) -> tuple[list[tuple[NodeLink, str]], list[NodeLink]]:
        """Once a heartbeat: (the nodes lost, with why; the nodes to ping). Names what is unreachable, once."""
        if self._last_check and now - self._last_check > STALL_TIME:
            # This process was stopped or starved: the silence it sees is its own, not its nodes'.
            for node in self.nodes.values():
                node.last_seen = now
        self._last_check = now
        lost, alive = [], []
        for node in self.nodes.values():
            silence = now - node.last_seen
            if not node.has_reported:
                # Never reached: not lost, and not waited for; ZeroMQ keeps trying.
                if silence > self.node_timeout and not node.unreachable:
                    node.unreachable = True
                    logger.warning("lucidity client: node %s at %s is unreachable from this client (no answer in "
                                   "%.0f s); using the other nodes and still trying it", node.name, node.address,
                                   silence)
                continue
            if silence > self.node_timeout:
                lost.append((node, f"stopped answering for {silence:.1f} s"))
                continue
            alive.append(node)
            for link in node.workers.values():
                if not link.lane.connected and now - link.created > self.node_timeout and not link.unreachable:
                    link.unreachable = True
                    logger.warning("lucidity client: worker %d of node %s at %s is unreachable from this client; "
                                   "using the other workers and still trying it", link.pid, node.name, link.address)
        self._update_unreachable()
        return lost, alive

    def control_silent(self, now: float, since: float) -> bool:
        """The control node has said nothing since `since` (or ever) for longer than `CONTROL_SILENCE`."""
        return now - max(self.control_heard, since) > CONTROL_SILENCE

    # -- what the faces read ---------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Recount the workers that can take tasks; True once every node and worker told of was reached or
        named unreachable (and at least one worker can take tasks)."""
        answered = {n.name: sum(1 for w in n.workers.values() if w.lane.connected) for n in self.nodes.values()}
        self.membership = tuple(
            NodeInfo(n.name, n.host, answered[n.name], n.running, sum(len(w.lane.inflight) for w in n.workers.values()))
            for n in self.nodes.values() if answered[n.name])
        self.worker_count = sum(answered.values())
        self._update_unreachable()
        return bool(self.worker_count) and all(n.has_reported or n.unreachable for n in self.nodes.values()) and all(
            w.lane.connected or w.unreachable for w in self.workers.values())

    def _update_unreachable(self) -> None:
        self.unreachable = tuple(sorted(
            [n.name for n in self.nodes.values() if n.unreachable]
            + [w.key for w in self.workers.values() if w.unreachable]))


def dialable(address: str) -> bool:
    """Whether an address a daemon sent can be connected to (never a wildcard, never malformed)."""
    try:
        return not addresses.parse(address).is_wildcard
    except ValueError:
        return False
