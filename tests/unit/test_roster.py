"""The client's roster without sockets: which nodes a control node's list adds or drops (and when a missing
node is not lost), which workers a node's report adds or drops, unreachable nodes named once, a stalled
client's own silence, and when every worker told of has been reached."""

from __future__ import annotations

import logging

import pytest

from lucidity import messages
from lucidity.links import NodeLink, WorkerLink
from lucidity.messages import NodeEntry, WorkerEntry
from lucidity.roster import CONTROL_SILENCE, STALL_TIME, UNLISTED_GRACE, Roster
from lucidity.tasktable import Lane

TIMEOUT = 5.0


def entry(name: str, instance: str = "i1", address: str = "", running: int = 0) -> NodeEntry:
    return NodeEntry(name, address or f"tcp://127.0.0.1:{4000 + int(name[1:])}", 2, instance, running, "host")


def listing(*entries: NodeEntry, instance: str = "control-1") -> messages.Nodes:
    return messages.Nodes(tuple(entries), instance)


def join(roster: Roster, new: list[NodeEntry], now: float) -> list[NodeLink]:
    """What the client does with new entries: a link each (no socket needed here)."""
    links = []
    for item in new:
        node = NodeLink(item.name, item.address, item.instance, item.host, None)  # type: ignore[arg-type]
        node.last_seen = now
        roster.add_node(node)
        links.append(node)
    return links


def worker_entry(worker_id: str, port: int) -> WorkerEntry:
    return WorkerEntry(worker_id, int(worker_id), f"tcp://127.0.0.1:{port}")


def add_worker(roster: Roster, node: NodeLink, worker_id: str, connected: bool = True) -> WorkerLink:
    lane = Lane(f"{node.name}/{worker_id}", node.name)
    lane.connected = connected
    link = WorkerLink(lane, worker_id, int(worker_id), None, "tcp://127.0.0.1:1")  # type: ignore[arg-type]
    roster.add_worker(node, link)
    return link


def test_the_first_list_adds_every_dialable_node() -> None:
    roster = Roster(TIMEOUT)
    new, dropped = roster.control_listed(listing(entry("n1"), entry("n2"), entry("n3", address="tcp://0.0.0.0:9")), 0.0)
    assert [e.name for e in new] == ["n1", "n2"] and dropped == []  # a wildcard address is never dialled


def test_a_node_missing_from_the_list_is_dropped_only_after_it_fell_silent_too() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    node.last_seen = 10.0
    assert roster.control_listed(listing(), 11.0) == ([], [])  # answered 1 s ago: alive whatever the list says
    assert roster.control_listed(listing(), 10.0 + UNLISTED_GRACE + 0.1) == ([], [node])


def test_a_restarted_control_node_relearns_before_a_missing_node_counts_as_lost() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 1.0)[0], 1.0)
    roster.control_listed(listing(entry("n1")), 9.0)
    assert roster.control_listed(listing(instance="control-2"), 10.0) == ([], [])  # new instance: relearning
    for now in range(11, 15):  # a list a second, still relearning
        assert roster.control_listed(listing(instance="control-2"), float(now)) == ([], [])
    assert roster.control_listed(listing(instance="control-2"), 10.0 + TIMEOUT + 0.1) == ([], [node])


def test_a_client_cut_off_from_the_control_node_reads_its_next_list_as_relearning() -> None:
    roster = Roster(TIMEOUT)
    join(roster, roster.control_listed(listing(entry("n1")), 1.0)[0], 1.0)
    assert roster.control_listed(listing(), 1.0 + CONTROL_SILENCE + 20.0) == ([], [])


def test_a_node_that_came_back_as_a_new_instance_is_dropped_and_joined_again() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    new, dropped = roster.control_listed(listing(entry("n1", instance="i2")), 1.0)
    assert dropped == [node] and [e.instance for e in new] == ["i2"]


def test_the_load_a_node_reports_reaches_placement() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    add_worker(roster, node, "11")
    roster.control_listed(listing(entry("n1", running=7)), 1.0)
    roster.refresh()
    assert [(info.name, info.workers, info.running) for info in roster.membership] == [("n1", 1, 7)]


def test_a_nodes_report_adds_and_drops_workers() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    old = add_worker(roster, node, "11")
    new, gone = roster.workers_reported(node, [worker_entry("12", 5012), worker_entry("13", 5013)])
    assert [e.id for e in new] == ["12", "13"] and gone == [old] and node.has_reported
    roster.remove_worker(old)
    assert roster.workers == {} and node.workers == {}


def test_a_node_never_reached_is_named_unreachable_once_and_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    with caplog.at_level(logging.WARNING, "lucidity.client"):
        for now in (1.0, 2.0, 3.0, 4.0, 5.5, 6.5, 7.5):
            lost, alive = roster.check(now)
            assert lost == [] and alive == []
    assert roster.unreachable == ("n1",)
    assert sum("unreachable" in record.message for record in caplog.records) == 1
    roster.workers_reported(node, [])
    roster.refresh()
    assert roster.unreachable == () and not node.unreachable


def test_a_node_that_answered_then_fell_silent_is_lost() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    roster.workers_reported(node, [])
    for now in range(1, 6):
        assert roster.check(float(now)) == ([], [node])
    ((lost, why),) = roster.check(6.0)[0]
    assert lost is node and why == "stopped answering for 6.0 s"


def test_a_stalled_client_gives_its_nodes_a_fresh_timeout() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    roster.workers_reported(node, [])
    roster.check(1.0)
    assert roster.check(1.0 + STALL_TIME + TIMEOUT) == ([], [node])  # its own silence, not the node's


def test_ready_once_every_worker_told_of_is_reached_or_named_unreachable() -> None:
    roster = Roster(TIMEOUT)
    (node,) = join(roster, roster.control_listed(listing(entry("n1")), 0.0)[0], 0.0)
    assert not roster.refresh()  # no worker yet
    roster.workers_reported(node, [])
    first = add_worker(roster, node, "11")
    slow = add_worker(roster, node, "12", connected=False)
    assert not roster.refresh() and roster.worker_count == 1
    slow.created = 0.0
    node.last_seen = TIMEOUT + 1.0  # the node answers; its worker's connection is not made
    roster.check(TIMEOUT + 1.0)  # not connected for the node timeout: named unreachable
    assert roster.refresh() and roster.unreachable == ("n1/12",)
    roster.worker_reached(slow)
    slow.lane.connected = True
    assert roster.refresh() and roster.worker_count == 2 and roster.unreachable == ()
    assert first.key == "n1/11"


# -- the whole list once, then its changes (issue 13) ---------------------------------------------------------

def change(seq: int, *entries: NodeEntry, left: tuple[str, ...] = (), instance: str = "control-1") -> messages.Nodes:
    return messages.Nodes(tuple(entries), instance, seq, full=False, left=left)


def whole(seq: int, *entries: NodeEntry, instance: str = "control-1") -> messages.Nodes:
    return messages.Nodes(tuple(entries), instance, seq)


def test_a_client_asks_for_the_whole_list_first_and_then_names_the_list_it_holds() -> None:
    roster = Roster(TIMEOUT)
    assert roster.watch() == messages.Watch()
    roster.control_listed(whole(7, entry("n1")), 0.0)
    assert roster.watch() == messages.Watch("control-1", 7)
    roster.control_listed(change(8, entry("n2")), 0.1)
    assert roster.watch() == messages.Watch("control-1", 8)


def test_changes_join_change_and_drop_nodes_like_whole_lists() -> None:
    roster = Roster(TIMEOUT)
    (n1,) = join(roster, roster.control_listed(whole(1, entry("n1")), 100.0)[0], 100.0)
    new, dropped = roster.control_listed(change(2, entry("n2")), 100.5)
    assert [e.name for e in new] == ["n2"] and dropped == []
    (n2,) = join(roster, new, 100.5)
    assert roster.control_listed(change(2), 101.0) == ([], [])  # the answer to an up-to-date WATCH
    roster.control_listed(change(3, entry("n1", running=4)), 101.5)
    assert n1.running == 4  # the load reaches placement
    new, dropped = roster.control_listed(change(4, entry("n2", instance="i2")), 102.0)  # n2 restarted
    assert dropped == [n2] and [(e.name, e.instance) for e in new] == [("n2", "i2")]
    roster.remove_node(n2)
    join(roster, new, 102.0)
    n1.last_seen = 102.0
    assert roster.control_listed(change(5, left=("n1",)), 102.5) == ([], [])  # answered a moment ago: the grace
    assert roster.control_listed(change(5), 102.0 + UNLISTED_GRACE + 0.1) == ([], [n1])  # still unlisted: gone


def test_a_client_that_missed_a_change_decides_nothing_until_it_has_the_whole_list_again() -> None:
    roster = Roster(TIMEOUT)
    (n1,) = join(roster, roster.control_listed(whole(1, entry("n1")), 0.0)[0], 0.0)
    # Change 2 (n1 left) was lost on the way; change 3 adds n2.
    assert roster.control_listed(change(3, entry("n2")), 10.0) == ([], [])  # not applied: n2 not joined yet
    assert roster.watch() == messages.Watch()  # the next WATCH asks for the whole list
    assert roster.control_listed(change(4, entry("n3")), 10.5) == ([], [])  # still none: nothing applies
    new, dropped = roster.control_listed(whole(4, entry("n2"), entry("n3")), 11.0)
    assert sorted(e.name for e in new) == ["n2", "n3"] and dropped == [n1]  # silent since 0.0, unlisted: gone
    assert roster.watch() == messages.Watch("control-1", 4)


def test_a_change_from_another_control_node_is_not_applied_to_the_list_held() -> None:
    roster = Roster(TIMEOUT)
    join(roster, roster.control_listed(whole(5, entry("n1")), 0.0)[0], 0.0)
    assert roster.control_listed(change(6, entry("n2"), instance="control-2"), 1.0) == ([], [])
    assert roster.watch() == messages.Watch()


def test_a_change_already_in_the_whole_list_held_is_skipped() -> None:
    roster = Roster(TIMEOUT)
    join(roster, roster.control_listed(whole(5, entry("n1")), 0.0)[0], 0.0)
    assert roster.control_listed(change(5, entry("n1", running=2)), 0.5) == ([], [])
    assert roster.watch() == messages.Watch("control-1", 5)


def test_a_restarted_control_node_sends_its_whole_list_and_relearns_under_the_usual_rule() -> None:
    roster = Roster(TIMEOUT)
    (n1,) = join(roster, roster.control_listed(whole(9, entry("n1")), 1.0)[0], 1.0)
    assert roster.control_listed(whole(0, instance="control-2"), 10.0) == ([], [])  # relearning: not lost
    roster.control_listed(change(1, entry("n1"), instance="control-2"), 10.5)  # n1's JOIN reached it
    assert roster.watch() == messages.Watch("control-2", 1)
    assert roster.control_listed(change(1, instance="control-2"), 10.0 + TIMEOUT + 0.1) == ([], [])  # listed


def test_an_undialable_entry_in_a_change_is_never_joined_and_drops_what_it_replaces() -> None:
    roster = Roster(TIMEOUT)
    (n1,) = join(roster, roster.control_listed(whole(1, entry("n1")), 100.0)[0], 100.0)
    assert roster.control_listed(change(2, entry("n2", address="tcp://0.0.0.0:9")), 101.0) == ([], [])
    assert roster.control_listed(change(3, entry("n1", address="tcp://*:9")), 102.0) == ([], [])  # the grace
    assert roster.control_listed(change(3), 100.0 + UNLISTED_GRACE + 0.1) == ([], [n1])
