"""The counting of `lucidity.progressbar.Tracker`, without a cluster: totals known and learnt, a task's own
units, chunks that never ran, and closing once (the fast tier: no process, no socket)."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from lucidity import messages
from lucidity.progressbar import Tracker, label
from lucidity.reports import Reports


class Client:
    def __init__(self) -> None:
        self.reports = Reports()


class Task:
    def __init__(self, task_id: int) -> None:
        self.id = task_id


def recorder() -> tuple[list[tuple[float, Optional[float]]], Any]:
    calls: list[tuple[float, Optional[float]]] = []
    return calls, lambda done, total: calls.append((done, total))


def test_items_count_as_their_tasks_end_and_partial_reports_move_the_count_between() -> None:
    calls, callback = recorder()
    tracker = Tracker(callback, 10, "map(f)")
    client = Client()
    ended: list[bool] = []
    first = tracker.track(client, 6, lambda ok, value: ended.append(ok))
    first.attach(Task(1))  # type: ignore[arg-type]
    client.reports.deliver("n1", 7, _progress(1, items=4))
    assert calls == [(4, 10)]
    first.on_done(True, None)
    assert calls[-1] == (6, 10) and ended == [True]
    client.reports.deliver("n1", 7, _progress(1, items=5))  # late: the task has ended and is not watched
    assert calls[-1] == (6, 10)
    tracker.skip(4)  # a chunk that failed before it was sent
    assert calls[-1] == (10, 10)


def test_a_lazy_total_is_none_until_the_input_ends() -> None:
    calls, callback = recorder()
    tracker = Tracker(callback, None, "imap(f)")
    client = Client()
    for task_id in range(3):
        tracker.expect(2)
        one = tracker.track(client, 2, lambda ok, value: None)
        one.attach(Task(task_id))  # type: ignore[arg-type]
        one.on_done(True, None)
    assert calls == [(2, None), (4, None), (6, None)]
    tracker.input_ended()
    tracker.expect(5)  # after the end, nothing more is expected
    assert calls[-1] == (6, 6)


def test_one_task_reporting_its_own_progress_shows_its_own_units() -> None:
    calls, callback = recorder()
    tracker = Tracker(callback, 1, "apply(train)")
    client = Client()
    one = tracker.track(client, 1, lambda ok, value: None)
    one.attach(Task(9))  # type: ignore[arg-type]
    client.reports.deliver("n1", 7, _progress(9, done=3, total=8))
    assert calls == [(3.0, 8.0)]
    one.on_done(True, None)
    assert calls[-1] == (8.0, 8.0)


def test_many_tasks_reporting_their_own_progress_count_as_fractions_of_items() -> None:
    calls, callback = recorder()
    tracker = Tracker(callback, 4, "remote_fanout(f)")
    client = Client()
    for task_id in range(4):
        tracker.track(client, 1, lambda ok, value: None).attach(Task(task_id))  # type: ignore[arg-type]
    for task_id in range(4):
        client.reports.deliver("n1", 7, _progress(task_id, done=1, total=2))
    assert calls == [(1, 4), (2, 4)]  # four halves: two items' worth


def test_close_is_once_and_an_empty_call_closes_at_once() -> None:
    closed: list[int] = []

    class Bar:
        def __init__(self, total: Optional[int], desc: str) -> None:
            self.total, self.desc, self.n = total, desc, 0

        def update(self, count: int) -> None:
            self.n += count

        def close(self) -> None:
            closed.append(self.n)

    Tracker(Bar, 0, "map(f)")
    assert closed == [0]
    tracker = Tracker(Bar, 3, "map(f)")
    tracker.close()
    tracker.close()
    tracker.skip(3)
    assert closed == [0, 0]


def test_a_progress_option_that_is_neither_a_bar_nor_a_callable_is_refused() -> None:
    with pytest.raises(TypeError):
        Tracker(42, 3, "map(f)")  # type: ignore[arg-type]


def test_labels_name_the_call_and_the_function() -> None:
    def square(x: int) -> int:
        return x * x

    assert label("map", square) == "map(square)"


def _progress(task: int, items: int = 0, done: float = 0.0, total: float = 0.0) -> Any:
    from lucidity.protocol import Message

    body = messages.Progress(task, items, done, total)
    return Message(body.KIND, body.to_meta(), [])


def test_a_watcher_that_comes_after_a_report_gets_it_at_once() -> None:
    # lucidity.progress([result]) called while the task runs: its report may have come before the watcher.
    reports = Reports()
    reports.deliver("n1", 7, _progress(3, items=2))
    reports.deliver("n1", 7, _progress(3, items=3))
    seen: list[int] = []
    reports.watch(3, lambda report: seen.append(report.items))
    assert seen == [3]  # the last one, once
    reports.deliver("n1", 7, _progress(3, items=4))
    assert seen == [3, 4]
    reports.unwatch(3)
    reports.watch(3, lambda report: seen.append(-report.items))  # a second watcher: nothing was kept since
    assert seen == [3, 4]
