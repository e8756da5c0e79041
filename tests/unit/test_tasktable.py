"""The client's task table without sockets: windows, placement on nodes, max_running, resends after a lost
worker, crash retries, cancellation and stale reports, driven by events as the client's I/O thread drives it."""

from __future__ import annotations

from typing import Any

import pytest

from lucidity.task import FunctionRef, IllegalTransition, Task, TaskState
from lucidity.tasktable import OVERDUE_AFTER, OVERDUE_FACTOR, STEAL_WORTH, WINDOW_MAX, WINDOW_MIN, Lane, TaskTable

FUNCTION = FunctionRef("digest", b"", "work, defined in app.py:12")


def tasks(*ids: int, **options: Any) -> list[Task]:
    return [Task(task_id, FUNCTION, "call", [b"payload"], lambda ok, value: None, **options) for task_id in ids]


class Clock:
    """The table's clock, moved by the test alone: a slow test machine never makes a worker overdue."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table_with(*keys: str, max_running: Any = None, pace: float = 1.0, clock: Any = None) -> TaskTable:
    """A table whose workers (node/worker keys) are all connected, their tasks known to take `pace` seconds
    (0: not known yet), on a clock that stands still unless the test gives one and moves it."""
    table = TaskTable(max_running, clock=clock or Clock())
    table.set_nodes(frozenset(key.split("/")[0] for key in keys))
    for key in keys:
        lane = table.add_worker(key, key.split("/")[0])
        lane.connected = True
        lane.mean_time = pace
    return table


def sent(batches: list[tuple[Lane, list[Task]]]) -> dict[str, list[int]]:
    """The ids sent to each worker, in order (a worker may get a batch from each queue)."""
    ids: dict[str, list[int]] = {}
    for lane, batch in batches:
        ids.setdefault(lane.key, []).extend(task.id for task in batch)
    return ids


# -- the window ---------------------------------------------------------------------------------------------

def window_after(seconds: float, count: int = 50) -> int:
    lane = Lane("n1/w1", "n1")
    for _ in range(count):
        lane.observe(seconds)
    return lane.credit()


def test_a_worker_not_yet_timed_gets_one_task_at_a_time() -> None:
    """A first map spreads over every worker: none gets more than it can start until tasks are timed."""
    assert Lane("n1/w1", "n1").credit() == 1
    table = table_with("n1/a", "n1/b", "n1/c", pace=0.0)
    table.add(tasks(*range(1, 10)))
    assert sent(table.dispatch()) == {"n1/a": [1], "n1/b": [2], "n1/c": [3]}


def test_once_any_worker_has_answered_the_others_get_a_window_by_that_pace() -> None:
    """A first map's second task reaches a worker before its first one ends, not a round trip after."""
    clock = Clock()
    table = table_with("n1/a", "n1/b", "n1/c", pace=0.0, clock=clock)
    a = table.lanes["n1/a"]
    table.add(tasks(*range(1, 20)))
    assert sent(table.dispatch()) == {"n1/a": [1], "n1/b": [2], "n1/c": [3]}
    clock.now += 0.03  # b's and c's first tasks have run longer than OVERDUE_AFTER, as 20 ms tasks do
    table.take(a, 1, 0.02)
    assert table.pace == 0.02
    assert sent(table.dispatch()) == {"n1/a": [4, 5], "n1/b": [6], "n1/c": [7]}


def test_a_timed_worker_gets_at_least_the_smallest_window() -> None:
    assert window_after(10.0) == WINDOW_MIN


def test_a_worker_busy_with_a_long_task_gets_nothing_until_it_answers() -> None:
    table = table_with("n1/a", "n1/b")
    table.add(tasks(1, 2, 3, 4))
    assert sent(table.dispatch()) == {"n1/a": [1, 2], "n1/b": [3, 4]}
    a, b = table.lanes["n1/a"], table.lanes["n1/b"]
    table.give_back(a, [2], busy=True)  # task 1 runs long; 2 should run elsewhere
    assert table.dispatch() == []  # b is full, and a takes nothing while busy
    table.take(b, 3, 0.005)
    assert sent(table.dispatch()) == {"n1/b": [2]}  # the given-back task, first in line
    table.take(a, 1, 0.5)  # the long task ends: a takes work again
    table.add(tasks(5))
    assert sent(table.dispatch()) == {"n1/a": [5]}


def test_a_worker_busy_with_another_clients_task_takes_work_again_once_it_says_it_is_free() -> None:
    """It owes this client no answer (the long task is another client's): an empty MISSING says it is free."""
    table = table_with("n1/a")
    table.add(tasks(1, 2))
    ((a, _),) = table.dispatch()
    table.give_back(a, [1, 2], busy=True)
    assert table.dispatch() == []
    table.give_back(a, [])
    assert sent(table.dispatch()) == {"n1/a": [1, 2]}


def test_the_window_grows_as_tasks_get_shorter_within_its_bounds() -> None:
    windows = [window_after(seconds) for seconds in (10.0, 0.1, 0.001, 0.0001, 1e-5, 1e-7)]
    assert windows == sorted(windows)
    assert windows[0] == WINDOW_MIN and windows[-1] == WINDOW_MAX


def test_the_window_follows_a_change_of_pace_gradually() -> None:
    lane = Lane("n1/w1", "n1")
    for _ in range(50):
        lane.observe(1e-6)
    fast = lane.credit()
    lane.observe(1.0)  # one slow task among many fast ones
    after_one = lane.credit()
    for _ in range(50):
        lane.observe(1.0)
    assert fast > after_one >= WINDOW_MIN
    assert lane.credit() == WINDOW_MIN


def test_one_long_task_among_short_ones_barely_moves_the_typical_time() -> None:
    lane = Lane("n1/w1", "n1")
    for _ in range(50):
        lane.observe(0.005)
    lane.observe(0.5)
    assert lane.mean_time > 0.1  # the window's average moves far...
    assert 0.005 < lane.typical_time < 0.02  # ...the typical time, which says what is long, hardly


def test_a_worker_whose_oldest_task_runs_long_gets_nothing_more_until_it_answers() -> None:
    clock = Clock()
    table = table_with("n1/a", "n1/b", pace=0.002, clock=clock)
    a, b = table.lanes["n1/a"], table.lanes["n1/b"]
    for lane in (a, b):
        lane.observe(0.002)  # short tasks: overdue once one has run OVERDUE_AFTER
    table.add(tasks(1, 2))
    assert sent(table.dispatch()) == {"n1/a": [1], "n1/b": [2]}
    table.take(b, 2, 0.002)  # b answered at once...
    clock.now += 2 * OVERDUE_AFTER  # ...task 1 on a still runs, far longer than a's tasks take
    assert a.overdue(clock.now) and not b.overdue(clock.now)
    assert a.credit() > 0  # a's window has room...
    table.add(tasks(3, 4, 5, 6))
    assert sent(table.dispatch()) == {"n1/b": [3, 4]}  # ...but nothing waits behind its long task
    table.take(a, 1, 0.5)  # the long task ends: a takes work again
    assert not a.overdue(clock.now)
    assert sent(table.dispatch()) == {"n1/a": [5, 6]}


def test_a_worker_not_yet_timed_is_overdue_after_the_shortest_bound() -> None:
    clock = Clock()
    table = table_with("n1/a", pace=0.0, clock=clock)
    lane = table.lanes["n1/a"]
    table.add(tasks(1))
    table.dispatch()
    clock.now += OVERDUE_AFTER * 0.9
    assert not lane.overdue(clock.now)
    clock.now += OVERDUE_AFTER * 0.2
    assert lane.overdue(clock.now)


def test_a_worker_of_slow_tasks_is_overdue_only_after_several_of_their_times() -> None:
    clock = Clock()
    table = table_with("n1/a", clock=clock)
    lane = table.lanes["n1/a"]
    lane.observe(1.0)
    table.add(tasks(1))
    table.dispatch()
    clock.now += OVERDUE_FACTOR * 1.0 * 0.9
    assert not lane.overdue(clock.now)
    clock.now += 0.2 * OVERDUE_FACTOR
    assert lane.overdue(clock.now)


def test_the_window_holds_more_than_a_round_trip_of_tasks() -> None:
    """A worker whose next task takes longer to arrive than its tasks take to run would wait for each: its
    window grows until what it holds covers the round trip that a task sent to it idle measured."""
    clock = Clock()
    table = table_with("n1/a", pace=0.005, clock=clock)
    lane = table.lanes["n1/a"]
    lane.observe(0.005)
    assert lane.credit() == WINDOW_MIN
    table.add(tasks(*range(1, 20)))
    assert sent(table.dispatch()) == {"n1/a": [1, 2]}
    clock.now += 0.025  # task 1's answer: 5 ms of work, 20 ms of round trip
    table.take(lane, 1, 0.005)
    assert lane.round_trip == pytest.approx(0.02)
    assert len(lane.inflight) + lane.credit() == 1 + 4  # 4 tasks of 5 ms cover a 20 ms round trip
    clock.now += 0.005
    table.take(lane, 2, 0.005)  # queued behind task 1: its answer says nothing of the round trip
    assert lane.round_trip == pytest.approx(0.02)


def test_a_workers_first_answer_does_not_time_the_round_trip() -> None:
    """A worker's first answer also timed its cold start (its function loaded, its module imported, a core
    waited for among many starting workers), which does not recur: taken for the round trip, it held the
    window of a first map of 20 ms tasks two tasks wider than needed, so that its last tasks queued behind
    one worker's while others had run dry."""
    clock = Clock()
    table = table_with("n1/a", pace=0.0, clock=clock)
    lane = table.lanes["n1/a"]
    table.add(tasks(*range(1, 20)))
    assert sent(table.dispatch()) == {"n1/a": [1]}
    clock.now += 0.060  # 20 ms of work, answered 60 ms after it was sent
    table.take(lane, 1, 0.02)
    assert lane.round_trip == 0.0
    assert sent(table.dispatch()) == {"n1/a": [2, 3]}  # the least window, not 1 + 40 ms / 20 ms tasks
    clock.now += 0.0205
    table.take(lane, 2, 0.02)  # queued behind nothing: sent to it idle, after its first answer
    assert lane.round_trip == pytest.approx(0.0005)


# -- dispatch -----------------------------------------------------------------------------------------------

def test_waiting_tasks_spread_over_the_workers_a_fair_share_each() -> None:
    table = table_with("n1/a", "n1/b")
    table.add(tasks(1, 2))
    assert sent(table.dispatch()) == {"n1/a": [1], "n1/b": [2]}  # two slow-or-unknown tasks: one each
    assert all(task.state is TaskState.SENT for task in table.tasks.values())


def test_no_worker_gets_more_than_its_window_and_the_rest_wait() -> None:
    table = table_with("n1/a")
    table.add(tasks(*range(1, 6)))
    assert sent(table.dispatch()) == {"n1/a": [1, 2]}
    assert table.waiting() and table.dispatch() == []  # no credit until a result comes back
    lane = table.lanes["n1/a"]
    assert table.take(lane, 1, seconds=1.0) is not None
    assert sent(table.dispatch()) == {"n1/a": [3]}


def test_tiny_tasks_travel_in_batches_once_their_pace_is_known() -> None:
    table = table_with("n1/a")
    lane = table.lanes["n1/a"]
    for _ in range(50):
        lane.observe(1e-6)
    table.add(tasks(*range(1, 101)))
    assert sent(table.dispatch()) == {"n1/a": list(range(1, 101))}


def test_a_worker_not_connected_gets_nothing() -> None:
    table = table_with("n1/a")
    table.add_worker("n1/b", "n1")  # told of, not connected yet
    table.add(tasks(1, 2, 3))
    assert set(sent(table.dispatch())) == {"n1/a"}
    table.lanes["n1/b"].connected = True
    assert set(sent(table.dispatch())) == {"n1/b"}


def test_max_running_caps_the_workers_that_hold_tasks() -> None:
    table = table_with("n1/a", "n1/b", "n1/c", max_running=2)
    table.add(tasks(*range(1, 10)))
    assert len(sent(table.dispatch())) == 2
    assert sum(1 for lane in table.lanes.values() if lane.inflight) == 2


def test_ties_rotate_between_workers() -> None:
    table = table_with("n1/a", "n1/b")
    chosen = []
    for task_id in range(1, 5):
        table.add(tasks(task_id))
        ((lane, batch),) = table.dispatch()
        chosen.append(lane.key)
        assert table.take(lane, task_id, 0.5) is batch[0]
        table.finish(batch[0], True)
    assert chosen == ["n1/a", "n1/b", "n1/a", "n1/b"]


def test_placed_tasks_go_to_their_nodes_workers_and_count_as_placed() -> None:
    table = table_with("n1/a", "n2/a")
    table.add(tasks(1, 2, node="n2"))
    assert table.placed_on("n2") == 2 and table.placed_on("n1") == 0
    assert sent(table.dispatch()) == {"n2/a": [1, 2]}
    for task in list(table.tasks.values()):
        table.finish(task, True)
    assert table.placed_on("n2") == 0 and table.idle


def test_tasks_placed_on_a_node_that_left_go_to_any_worker_first_in_line() -> None:
    table = table_with("n1/a", "n2/a")
    table.lanes["n2/a"].connected = False  # n2's worker is not reachable: its placed tasks wait for it
    table.add(tasks(5, node="n1"))
    table.add(tasks(1, 2, node="n2"))
    table.add(tasks(3))
    assert sent(table.dispatch()) == {"n1/a": [5, 3]}
    table.remove_worker("n2/a", lost=True)
    table.set_nodes(frozenset({"n1"}))
    table.take(table.lanes["n1/a"], 5, 1.0)
    table.take(table.lanes["n1/a"], 3, 1.0)
    assert sent(table.dispatch()) == {"n1/a": [1, 2]}  # in their order, ahead of anything queued later


# -- cancellation --------------------------------------------------------------------------------------------

def test_a_waiting_task_can_be_cancelled_and_is_never_sent() -> None:
    table = table_with("n1/a")
    first, second = tasks(1, 2)
    table.add([first, second])
    assert table.cancel(first) and first.state is TaskState.CANCELLED
    assert sent(table.dispatch()) == {"n1/a": [2]}
    assert not table.cancel(second)  # on its way: too late
    assert list(table.tasks) == [2]


# -- a worker goes away ---------------------------------------------------------------------------------------

def test_a_worker_that_exited_gives_its_tasks_to_another_without_spending_retries() -> None:
    table = table_with("n1/a", "n1/b")
    table.add(tasks(1, 2, 3, 4))
    table.dispatch()
    held = [task.id for task in table.lanes["n1/a"].inflight.values()]
    requeued, out = table.remove_worker("n1/a", lost=False)
    assert sorted(t.id for t in requeued) == sorted(held) and out == []
    assert all(t.lost_retries == 3 and t.state is TaskState.PENDING and t.worker is None for t in requeued)
    other = table.lanes["n1/b"]
    for task_id in list(other.inflight):
        table.finish(table.take(other, task_id, 1.0), True)  # type: ignore[arg-type]
    assert sent(table.dispatch()) == {"n1/b": held}  # in their order, first in line


def test_tasks_of_a_lost_node_spend_a_retry_each_and_fail_once_out_of_them() -> None:
    table = table_with("n1/a", "n2/a")
    (task,) = tasks(1, lost_retries=1)
    table.add([task])
    for attempt in range(2):
        ((lane, _),) = table.dispatch()
        requeued, out = table.remove_worker(lane.key, lost=True)
        table.add_worker(lane.key, lane.node).connected = True  # the node comes back
        if attempt == 0:
            assert requeued == [task] and task.lost_retries == 0
    assert out == [task] and task.state is TaskState.SENT  # the caller fails it with NodeLost
    assert table.finish(task, False) and table.idle


def test_a_batch_that_could_not_be_sent_is_queued_again_as_if_unsent() -> None:
    table = table_with("n1/a")
    table.add(tasks(1, 2))
    ((lane, batch),) = table.dispatch()
    table.unsend(lane, batch)
    assert not lane.inflight and [t.state for t in batch] == [TaskState.PENDING] * 2
    assert sent(table.dispatch()) == {"n1/a": [1, 2]}


def test_tasks_a_worker_gives_back_are_queued_again() -> None:
    table = table_with("n1/a")
    table.add(tasks(1, 2))
    ((lane, _),) = table.dispatch()
    table.give_back(lane, [2, 99])  # 99: not ours, ignored
    assert [t.id for t in lane.inflight.values()] == [1] and table.tasks[2].state is TaskState.PENDING


# -- work stealing -------------------------------------------------------------------------------------------

def holding(table: TaskTable, key: str, ids: list[int], typical: float = 0.01) -> Lane:
    """Put tasks `ids` in flight on worker `key` (the first one running), of `typical` seconds each."""
    lane = table.lanes[key]
    lane.typical_time = typical
    for task in tasks(*ids):
        table.tasks[task.id] = task
        task.move(TaskState.SENT)
        task.worker = key
        lane.inflight[task.id] = task
    return lane


def test_a_worker_that_ran_dry_takes_half_of_the_fullest_queue_from_its_end() -> None:
    table = table_with("n1/a", "n1/b", "n1/c")
    full = holding(table, "n1/a", [1, 2, 3, 4, 5])  # 1 runs, 2 is next, 3 more queued
    holding(table, "n1/b", [6, 7, 8])  # 6 runs, 7 is next, 8 queued
    assert [(lane.key, ids) for lane, ids in table.steal()] == [("n1/a", [4, 5])]
    assert table.steal() == [], "one request per worker until it answers"
    table.give_back(full, [5])  # it had started 4 meanwhile: only 5 comes back
    assert sent(table.dispatch()) == {"n1/c": [5]}, "the worker with nothing takes it"
    assert not full.withdrawing


def test_as_many_workers_give_as_ran_dry_the_fullest_first() -> None:
    table = table_with("n1/a", "n1/b", "n1/c", "n1/d")
    holding(table, "n1/a", [1, 2, 3])
    holding(table, "n1/b", [4, 5, 6, 7, 8])
    holding(table, "n1/c", [9, 10, 11, 12])
    assert [(lane.key, ids) for lane, ids in table.steal()] == [("n1/b", [7, 8])]


def test_nothing_is_taken_back_while_tasks_wait_or_every_worker_is_busy() -> None:
    table = table_with("n1/a", "n1/b")
    holding(table, "n1/a", [1, 2, 3, 4])
    holding(table, "n1/b", [5])
    assert table.steal() == [], "no worker ran dry"
    table.lanes["n1/b"].inflight.clear()
    table.lanes["n1/b"].busy = True
    assert table.steal() == [], "a worker busy with a long task takes nothing"
    table.lanes["n1/b"].busy = False
    table.add(tasks(20))
    assert table.steal() == [], "the idle worker gets what waits instead"


def test_a_queue_shorter_than_what_taking_it_costs_stays() -> None:
    table = table_with("n1/a", "n1/b")
    lane = holding(table, "n1/a", [1, 2, 3], typical=STEAL_WORTH / 4)  # a quarter of STEAL_WORTH behind the next
    assert table.steal() == []
    lane.round_trip = 1.5 * STEAL_WORTH  # and when the round trip costs more than the queue holds
    lane.typical_time = STEAL_WORTH
    assert table.steal() == []
    lane.typical_time = 2 * STEAL_WORTH
    assert table.steal() == []
    lane.typical_time = 4 * STEAL_WORTH
    assert [ids for _, ids in table.steal()] == [[3]]


def test_tasks_placed_on_a_node_are_not_taken_back_and_max_running_takes_nothing() -> None:
    table = table_with("n1/a", "n2/b")
    lane = table.lanes["n1/a"]
    lane.typical_time = 0.01
    for task in tasks(1, 2, 3, node="n1"):
        table.tasks[task.id] = task
        task.move(TaskState.SENT)
        task.worker = lane.key
        lane.inflight[task.id] = task
    assert table.steal() == []
    capped = table_with("n1/a", "n1/b", max_running=2)
    holding(capped, "n1/a", [1, 2, 3, 4])
    assert capped.steal() == []


# -- outcomes ------------------------------------------------------------------------------------------------

def test_a_result_answers_its_task_once_and_a_late_duplicate_is_ignored() -> None:
    table = table_with("n1/a")
    table.add(tasks(1))
    ((lane, (task,)),) = table.dispatch()
    assert table.take(lane, 1, 0.01) is task
    assert table.finish(task, True) and table.idle
    assert table.take(lane, 1, 0.01) is None
    assert not table.finish(task, False)  # delivered once


def test_a_crash_is_retried_while_retries_last_then_failed() -> None:
    table = table_with("n1/a")
    (task,) = tasks(1, retries=1)
    table.add([task])
    table.dispatch()
    assert table.failed("n1/a", 1, crashed=True, message="died") == (task, True)
    assert task.state is TaskState.PENDING and task.retries == 0
    table.dispatch()
    assert table.failed("n1/a", 1, crashed=True, message="died again") == (task, False)
    assert task.failures == ("died", "died again")


def test_a_limit_breach_is_never_retried() -> None:
    table = table_with("n1/a")
    (task,) = tasks(1, retries=3)
    table.add([task])
    table.dispatch()
    assert table.failed("n1/a", 1, crashed=False, message="over its memory cap") == (task, False)
    assert task.failures == () and task.retries == 3


def test_a_stale_failure_report_changes_nothing() -> None:
    table = table_with("n1/a", "n1/b")
    (task,) = tasks(1)
    table.add([task])
    ((lane, _),) = table.dispatch()
    other = "n1/b" if lane.key == "n1/a" else "n1/a"
    assert table.failed(other, 1, crashed=True, message="x") is None  # the task is not on that worker
    assert table.failed(lane.key, 2, crashed=True, message="x") is None  # no such task
    table.take(lane, 1, 0.1)
    table.finish(task, True)
    assert table.failed(lane.key, 1, crashed=True, message="x") is None  # it ended


def test_a_worker_whose_messages_cannot_be_trusted_hands_over_all_it_holds() -> None:
    table = table_with("n1/a")
    table.add(tasks(1, 2))
    ((lane, batch),) = table.dispatch()
    assert table.take_all(lane) == batch and not lane.inflight


def test_an_illegal_move_is_a_bug_that_names_the_history() -> None:
    table = table_with("n1/a")
    (task,) = tasks(1)
    table.add([task])
    table.dispatch()
    table.finish(task, True)
    with pytest.raises(IllegalTransition, match="history pending -> sent -> done"):
        task.move(TaskState.SENT)


# -- lone calls at a worker's door (lucidity.directcall) ------------------------------------------------------

def test_a_lone_call_is_placed_on_an_idle_worker_its_caller_prefers_and_never_ahead_of_waiting_tasks() -> None:
    table = table_with("n1/w1", "n1/w2")
    [call] = tasks(1)
    lane = table.place(call, lambda lane: True, prefer=["n1/w2"])
    assert lane is not None and lane.key == "n1/w2" and call.state is TaskState.SENT and call.direct
    assert table.place(tasks(2)[0], lambda lane: lane.key == "n1/w2") is None, "its one worker is busy"
    table.add(tasks(3))
    assert table.place(tasks(4)[0], lambda lane: True) is None, "a task waits to be sent: it goes first"
    assert table.take(lane, 1, 0.001) is call and table.finish(call, True) and 1 not in table.tasks


def test_a_submitted_task_is_claimed_only_while_it_waits_alone() -> None:
    table = table_with("n1/w1")
    first, second = tasks(1, 2)
    table.add([first, second])
    assert table.claim(second, lambda lane: True) is None, "another waits before it"
    assert table.claim(first, lambda lane: False) is None, "no worker its caller can reach"
    assert sent(table.dispatch()) == {"n1/w1": [1, 2]}, "left in line, they are sent as usual"
    [alone] = tasks(3)
    other = table_with("n1/w1")
    other.add([alone])
    lane = other.claim(alone, lambda lane: True)
    assert lane is not None and alone.direct and alone.state is TaskState.SENT and not other.waiting()
    assert other.dispatch() == [], "it is not sent twice"


def test_a_call_whose_stream_ended_goes_to_dispatch_or_is_resent_if_its_worker_went_meanwhile() -> None:
    table = table_with("n1/w1", "n1/w2")
    [call] = tasks(1)
    table.place(call, lambda lane: lane.key == "n1/w1")
    assert table.door_ended(call) is None and not call.direct, "its worker is listed: its reports will come"
    [orphan] = tasks(2, lost_retries=0)
    table.place(orphan, lambda lane: lane.key == "n1/w2")
    assert table.remove_worker("n1/w2", lost=False) == ([], []), "left to its caller, who may read its result"
    assert orphan.orphaned is False and orphan.state is TaskState.SENT
    assert table.door_ended(orphan) is True and orphan.state is TaskState.PENDING and table.waiting()
    [lost] = tasks(3, lost_retries=0)
    other = table_with("n2/w1")
    assert other.place(lost, lambda lane: True) is not None
    other.remove_worker("n2/w1", lost=True)
    assert other.door_ended(lost) is False, "lost with its node and out of retries: its caller fails it"


def test_a_dispatch_looks_at_each_worker_once_per_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """A map's results free a few of many workers at a time: choosing each batch's worker by a look at all of
    them cost a 64-worker client 0.14 ms per dispatch (a third of its CPU in the long-tail benchmark)."""
    keys = [f"n1/w{index}" for index in range(64)]
    table = table_with(*keys, pace=0.005)
    table.add(tasks(*range(1, 1000)))
    table.dispatch()  # every worker's window filled
    lane = table.lanes["n1/w7"]
    first = next(iter(lane.inflight))
    table.take(lane, first, 0.005)
    looks = 0
    credit = Lane.credit

    def counted(self: Lane, pace: float = 0.0) -> int:
        nonlocal looks
        looks += 1
        return credit(self, pace)

    monkeypatch.setattr(Lane, "credit", counted)
    assert sent(table.dispatch()) == {"n1/w7": [129]}
    assert looks == 64  # one round: each worker once (a batch per worker chosen by a fresh look: 128)
