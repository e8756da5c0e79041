"""lucidity.task: a task's state machine, its description for error messages, and its wire spec."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from lucidity.messages import TaskMode, TaskSpec
from lucidity.task import FunctionRef, IllegalTransition, Task, TaskState

FUNCTION = FunctionRef("digest-of-work", b"", "work, defined in app.py:12")
INITIALIZER = FunctionRef("digest-of-setup", b"", "setup, defined in app.py:3")

PENDING, SENT, DONE, FAILED, CANCELLED = (TaskState.PENDING, TaskState.SENT, TaskState.DONE, TaskState.FAILED,
                                          TaskState.CANCELLED)
#: The moves the module docstring draws: sent, finished, failed, cancelled before sending, and sent again
#: elsewhere when a worker went before it started the task.
LEGAL = {(PENDING, SENT), (PENDING, CANCELLED), (PENDING, FAILED), (SENT, DONE), (SENT, FAILED), (SENT, PENDING)}
#: A way to reach each state from PENDING.
PATHS = {PENDING: [], SENT: [SENT], DONE: [SENT, DONE], FAILED: [SENT, FAILED], CANCELLED: [CANCELLED]}


def make_task(**options: Any) -> Task:
    return Task(17, FUNCTION, "map", [b"payload"], lambda succeeded, value: None, **options)


def reached(state: TaskState) -> Task:
    task = make_task()
    for step in PATHS[state]:
        task.move(step)
    return task


def test_a_new_task_is_pending_and_unsent() -> None:
    task = make_task()
    assert task.state is PENDING and not task.is_final
    assert task.sends == 0 and task.history == ()


@pytest.mark.parametrize("old, new", list(itertools.product(TaskState, TaskState)),
                         ids=lambda state: state.value)
def test_every_move_is_allowed_exactly_when_the_diagram_draws_it(old: TaskState, new: TaskState) -> None:
    task = reached(old)
    if (old, new) in LEGAL:
        task.move(new)
        assert task.state is new and task.history[-1] == old.value
    else:
        with pytest.raises(IllegalTransition, match=f"task 17: illegal move {old.value} -> {new.value}"):
            task.move(new)
        assert task.state is old


def test_an_illegal_move_names_the_history() -> None:
    task = reached(DONE)
    with pytest.raises(IllegalTransition, match="history pending -> sent -> done"):
        task.move(SENT)


@pytest.mark.parametrize("state", list(TaskState), ids=lambda state: state.value)
def test_done_failed_and_cancelled_are_final(state: TaskState) -> None:
    assert reached(state).is_final == (state in {DONE, FAILED, CANCELLED})


def test_a_task_sent_again_counts_its_sends_and_keeps_its_payload_until_it_ends() -> None:
    task = make_task()
    task.move(SENT)
    task.move(PENDING)  # its worker went before starting it
    assert task.frames == [b"payload"]  # kept, to be sent elsewhere
    task.move(SENT)
    assert task.sends == 2
    task.move(DONE)
    assert task.frames == []  # released once final
    assert task.history == tuple(state.value for state in [PENDING, SENT, PENDING, SENT])


def test_a_cancelled_task_was_never_sent() -> None:
    task = reached(CANCELLED)
    assert task.sends == 0 and task.frames == []


@pytest.mark.parametrize("options, expected", [
    ({"made_by": "map", "items": range(40, 50)}, "items 40..49 of map(work, defined in app.py:12) (task 17)"),
    ({"made_by": "imap", "items": range(7, 8)}, "item 7 of imap(work, defined in app.py:12) (task 17)"),
    ({"items": range(0, 2)}, "items 0..1 of map(work, defined in app.py:12) (task 17)"),
    ({"made_by": "submit"}, "submit(work, defined in app.py:12) (task 17)"),
    ({}, "task 17 (work, defined in app.py:12)"),
])
def test_a_task_describes_what_it_carries(options: dict[str, Any], expected: str) -> None:
    assert make_task(**options).description == expected


def test_the_spec_names_the_function_and_mode_and_only_the_limits_set() -> None:
    assert make_task().spec() == TaskSpec(17, "digest-of-work", TaskMode.MAP)
    limited = make_task(initializer=INITIALIZER, max_tasks=3, pool="p1", memory=2**20, timeout=1.5, cpu_time=0.5)
    assert limited.spec() == TaskSpec(17, "digest-of-work", TaskMode.MAP, "digest-of-setup", 3, "p1", 2**20, 1.5, 0.5)
