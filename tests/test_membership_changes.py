"""The control node sends and receives changes, not the whole membership every second (issue 13, item 3).

With real daemons started from the CLI:

- a node joins with its full entry, then heartbeats with BEATs, and joins again at once when the control
  node asks (a real node daemon against a control socket the test answers by hand);
- a client gets the whole list once, then numbered changes, and an empty change when it is up to date; one
  that missed a change asks for the whole list again (the test drops one change on purpose: a real client
  could lose one only on a reconnection, which ZeroMQ gives no way to provoke on demand);
- a restarted control node relearns every node, and a client follows it to the new list without dropping
  any node, and sees a node that joins afterwards;
- many nodes join, leave and die at once, and a client's view converges to the control node's.

Each daemon is stopped and reaped by `CliCluster` on every way out; raw sockets are closed in ``finally``.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Iterator, Optional

import pytest
import zmq

from lucidity import messages, protocol
from lucidity.client import Client
from lucidity.links import NodeLink
from lucidity.roster import Roster

from helpers import WAIT, CliCluster, wait_until

NODE_TIMEOUT = 2.0
HEARTBEAT = "0.3"
#: How long one raw socket waits for the next message, in seconds.
RECEIVE_TIMEOUT = 15.0
#: How long the busy control node's test floods it with WATCHes, in seconds.
FLOOD_SECONDS = 3.0

pytestmark = pytest.mark.timeout(180)


def receive(sock: zmq.Socket[Any], kinds: frozenset[protocol.Kind], timeout: float = RECEIVE_TIMEOUT) -> Any:
    """The next message on `sock`, decoded and checked; fails the test after `timeout` seconds."""
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"nothing arrived within {timeout:.0f} s")
    return messages.parse(protocol.decode(sock.recv_multipart(), kinds))


@pytest.fixture
def raw_socket() -> Iterator[Any]:
    context = zmq.Context()
    made: list[zmq.Socket[Any]] = []

    def make(kind: int) -> zmq.Socket[Any]:
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        return sock

    try:
        yield make
    finally:
        for sock in made:
            sock.close(0)
        context.term()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliCluster]:
    monkeypatch.setenv("LUCIDITY_NODE_TIMEOUT", str(NODE_TIMEOUT))
    with CliCluster() as made:
        yield made


def start_node(cluster: CliCluster, name: str) -> None:
    cluster.start_node(name, 1, "--heartbeat-interval", HEARTBEAT)


# -- a node daemon's side ------------------------------------------------------------------------------------

def test_a_node_joins_once_then_beats_and_joins_again_when_asked(cluster: CliCluster, raw_socket: Any) -> None:
    control = raw_socket(zmq.ROUTER)
    control.bind(cluster.address)
    node_kinds = frozenset({protocol.Kind.JOIN, protocol.Kind.BEAT, protocol.Kind.LEAVE})

    def next_from_node() -> tuple[bytes, Any]:
        if not control.poll(int(RECEIVE_TIMEOUT * 1000)):
            raise AssertionError(f"the node sent nothing within {RECEIVE_TIMEOUT:.0f} s")
        identity, *frames = control.recv_multipart()
        return identity, messages.parse(protocol.decode(frames, node_kinds))

    start_node(cluster, "n1")
    identity, first = next_from_node()
    assert isinstance(first, messages.NodeEntry) and first.name == "n1" and first.processes == 1
    welcome = messages.encode(messages.Welcome("c" * 32))
    control.send_multipart([identity, *welcome])
    for _ in range(3):  # welcomed: heartbeats are beats, with the node's name, instance and load
        identity, beat = next_from_node()
        assert beat == messages.NodeBeat("n1", first.instance, 0)
        control.send_multipart([identity, *welcome])
    identity, beat = next_from_node()
    assert isinstance(beat, messages.NodeBeat)
    control.send_multipart([identity, *messages.encode(messages.Welcome("d" * 32, rejoin=True))])
    identity, again = next_from_node()  # asked: the full entry, before any other beat
    assert again == first
    control.send_multipart([identity, *messages.encode(messages.Welcome("d" * 32))])
    identity, beat = next_from_node()
    assert beat == messages.NodeBeat("n1", first.instance, 0)


# -- a client's side -----------------------------------------------------------------------------------------

class Watcher:
    """A client's control socket, by hand, with the client's own `Roster` deciding what each list means."""

    def __init__(self, sock: zmq.Socket[Any], address: str) -> None:
        self.sock = sock
        sock.connect(address)
        self.roster = Roster(NODE_TIMEOUT)

    def watch(self) -> messages.Nodes:
        """Send the roster's WATCH; the answer (pushed changes that arrive first are skipped)."""
        asked = self.roster.watch()
        self.sock.send_multipart(messages.encode(asked))
        while True:
            body = self.next_change()
            if body.full or asked.seq is not None and body.seq == asked.seq:
                return body

    def next_change(self) -> messages.Nodes:
        body = receive(self.sock, frozenset({protocol.Kind.NODES}))
        assert isinstance(body, messages.Nodes)
        return body

    def change_naming(self, name: str) -> messages.Nodes:
        """The next pushed change that names node `name` (joined, changed or left)."""
        while True:
            body = self.next_change()
            if not body.full and (name in body.left or any(entry.name == name for entry in body.nodes)):
                return body

    def apply(self, body: messages.Nodes, now: float) -> list[str]:
        """Feed the roster as the client does; the names of the nodes it would connect to."""
        new, dropped = self.roster.control_listed(body, now)
        for node in dropped:
            self.roster.remove_node(node)
        for entry in new:
            node = NodeLink(entry.name, entry.address, entry.instance, entry.host, None)  # type: ignore[arg-type]
            node.last_seen = now
            self.roster.add_node(node)
        return sorted(entry.name for entry in new)


def test_a_client_gets_the_list_once_then_changes_and_asks_again_after_missing_one(
        cluster: CliCluster, raw_socket: Any) -> None:
    cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
    start_node(cluster, "n1")
    cluster.wait_for(1)
    watcher = Watcher(raw_socket(zmq.DEALER), cluster.address)
    first = watcher.watch()
    assert first.full and [entry.name for entry in first.nodes] == ["n1"]
    assert watcher.apply(first, 0.0) == ["n1"]
    held = watcher.roster.watch()
    assert held == messages.Watch(first.instance, first.seq)
    answer = watcher.watch()  # up to date: an empty change, whatever the size of the cluster
    assert not answer.full and answer.nodes == () and answer.left == () and answer.seq == first.seq

    start_node(cluster, "n2")
    joined = watcher.change_naming("n2")
    assert joined.seq == first.seq + 1 and [entry.name for entry in joined.nodes] == ["n2"]
    assert watcher.apply(joined, 0.1) == ["n2"]

    start_node(cluster, "n3")
    watcher.change_naming("n3")  # lost on the way, as far as the roster knows
    start_node(cluster, "n4")
    after_the_gap = watcher.change_naming("n4")
    assert watcher.apply(after_the_gap, 0.2) == []  # not applied: a change is missing
    assert watcher.roster.watch() == messages.Watch()  # so the next WATCH asks for the whole list
    whole = watcher.watch()
    assert whole.full and sorted(entry.name for entry in whole.nodes) == ["n1", "n2", "n3", "n4"]
    assert watcher.apply(whole, 0.3) == ["n3", "n4"]
    assert sorted(watcher.roster.nodes) == ["n1", "n2", "n3", "n4"]

    cluster.stop("n2")  # SIGTERM: the node leaves, and the change says so
    left = watcher.change_naming("n2")
    assert left.left == ("n2",) and left.nodes == ()


def client_view(client: Client) -> list[str]:
    return sorted(info.name for info in client.nodes())


def status_view(cluster: CliCluster) -> list[str]:
    try:
        return sorted(node["name"] for node in cluster.status(1.0)["nodes"])
    except Exception:  # the control node restarting
        return []


def test_a_restarted_control_node_relearns_and_its_clients_follow_without_dropping_a_node(
        cluster: CliCluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
    for name in ("n1", "n2", "n3"):
        start_node(cluster, name)
    cluster.wait_for(3, workers_per_node=1)
    client = Client(cluster.address, node_timeout=NODE_TIMEOUT)
    try:
        wait_until(lambda: client_view(client) == ["n1", "n2", "n3"], WAIT, "the client to know three nodes")
        with caplog.at_level(logging.WARNING, "lucidity.client"):
            cluster.stop("control", signal.SIGKILL)
            cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
            # The nodes only beat; the new control node knows none of them until it asks each for its entry.
            wait_until(lambda: status_view(cluster) == ["n1", "n2", "n3"], WAIT, "the control node to relearn")
            start_node(cluster, "n4")  # reaches the client only through the new control node's list
            wait_until(lambda: client_view(client) == ["n1", "n2", "n3", "n4"], WAIT,
                       "the client to follow the new control node")
        dropped = [r.message for r in caplog.records if r.name == "lucidity.client"
                   and ("left the cluster" in r.message or "stopped answering" in r.message)]
        assert dropped == []  # not one node dropped while the control node relearned
    finally:
        client.shutdown()


def test_many_nodes_join_leave_and_die_and_a_clients_view_converges(cluster: CliCluster) -> None:
    cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
    first = [f"n{index}" for index in range(1, 7)]
    for name in first:
        start_node(cluster, name)
    cluster.wait_for(len(first), workers_per_node=1)
    client = Client(cluster.address, node_timeout=NODE_TIMEOUT)
    try:
        wait_until(lambda: client_view(client) == sorted(first), WAIT, "the client to know the first nodes")
        for name in ("n1", "n2"):
            cluster.processes[name].send_signal(signal.SIGTERM)  # they leave
        cluster.processes["n3"].send_signal(signal.SIGKILL)  # it goes silent: lost after the node timeout
        later = [f"n{index}" for index in range(7, 10)]
        for name in later:
            start_node(cluster, name)
        for name in ("n1", "n2", "n3"):
            cluster.stop(name)
        expected = sorted(["n4", "n5", "n6", *later])
        wait_until(lambda: status_view(cluster) == expected, WAIT, "the control node's list to settle")
        wait_until(lambda: client_view(client) == expected, WAIT, "the client's view to converge")
    finally:
        client.shutdown()


def test_a_watch_numbered_for_another_control_node_gets_the_whole_list(cluster: CliCluster,
                                                                        raw_socket: Any) -> None:
    cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
    start_node(cluster, "n1")
    cluster.wait_for(1)
    sock = raw_socket(zmq.DEALER)
    sock.connect(cluster.address)
    for stale in (messages.Watch("0" * 32, 0), messages.Watch("0" * 32, 10 ** 6)):
        sock.send_multipart(messages.encode(stale))
        answer: Optional[messages.Nodes] = receive(sock, frozenset({protocol.Kind.NODES}))
        assert answer is not None and answer.full and [entry.name for entry in answer.nodes] == ["n1"]


def test_a_busy_control_node_answers_every_watch_and_lists_a_node_that_joins(cluster: CliCluster,
                                                                            raw_socket: Any) -> None:
    """WATCHes for `FLOOD_SECONDS`, far more than `control.BUSY_RATE` a second (after its first second of them
    the control node reads them in batches, resting between): none is lost, none is answered twice, and a
    node that joins meanwhile is listed. The duration sizes the load; no assertion depends on time."""
    from lucidity.node.control import BUSY_RATE

    cluster.start_control("--node-timeout", str(NODE_TIMEOUT))
    sock = raw_socket(zmq.DEALER)
    sock.connect(cluster.address)
    outstanding = 4 * BUSY_RATE  # WATCHes in flight: a turn of the control node answers them all
    started = time.monotonic()
    sent = answered = 0
    named = False
    while sent > answered or not named:
        flooding = time.monotonic() - started < FLOOD_SECONDS
        while flooding and sent - answered < outstanding:
            sock.send_multipart(messages.encode(messages.Watch()))
            sent += 1
        if "n1" not in cluster.processes and time.monotonic() - started > FLOOD_SECONDS / 2:
            start_node(cluster, "n1")  # joins while the control node is busy
        if not flooding and "n1" not in cluster.processes:
            start_node(cluster, "n1")
        body = receive(sock, frozenset({protocol.Kind.NODES}))
        answered += body.full  # each WATCH without a number is answered with the whole list, once
        named = named or any(entry.name == "n1" for entry in body.nodes)
        if not flooding and not named and sent == answered:
            sock.send_multipart(messages.encode(messages.Watch()))  # ask again until n1 is listed
            sent += 1
    assert answered == sent > FLOOD_SECONDS * BUSY_RATE
    extra = []
    while sock.poll(500):
        extra.append(messages.parse(protocol.decode(sock.recv_multipart(), frozenset({protocol.Kind.NODES}))))
    assert not [body for body in extra if body.full]  # pushed changes may follow; no WATCH answered twice
