"""A task's record and state machine; pure, no I/O.

A task is one message's worth of work: a call, or a chunk of a map. Its life::

    PENDING --dispatch--> SENT --result--> DONE
       |                   |  --error/crash--> FAILED
       |                   |  --worker gone, not started--> PENDING   (sent again elsewhere)
       +--cancel--> CANCELLED

`Task.move` is the only way to change state; it raises on an illegal move and names the history, so a
race shows up as an error instead of a lost or doubled result.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from .messages import TaskMode, TaskSpec

__all__ = ["TaskState", "Task", "FunctionRef", "IllegalTransition", "TaskMaker"]


class TaskState(enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    # Enum's own __hash__ runs Python code; states are compared on every move of every task.
    __hash__ = object.__hash__


TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.SENT, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.SENT: frozenset({TaskState.DONE, TaskState.FAILED, TaskState.PENDING}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}

FINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})
# A state's name by a dict lookup: Enum's ``value`` is a property that runs Python code, twice per task.
_NAMES = {state: state.value for state in TaskState}
_SENT = TaskState.SENT
_new_tuple = tuple.__new__


class IllegalTransition(RuntimeError):
    """A task was asked to make a move its state machine does not allow (a bug, never a user error)."""


@dataclass(frozen=True)
class FunctionRef:
    """A serialized function and the digest that names it in worker caches."""

    digest: str
    data: bytes
    description: str


@dataclass(eq=False)
class Task:
    """One unit of work and everything needed to send it again.

    Attributes:
        id: unique within the client.
        function: what to call; ``initializer`` runs once per worker before the first task of its pool.
        mode: CALL (payload is ``(args, kwargs)``), MAP or STARMAP (payload is a chunk of items).
        frames: the serialized payload, kept until the task ends so it can be resent.
        on_done: called exactly once with ``(succeeded, value_or_exception)``.
        node: run on this node while it is a member (a placement preference, not a guarantee).
        retries: how many more times to run the task if its worker crashes (crash retries are opt-in).
        lost_retries: how many more times to resend the task if the node running it is lost.
        memory, timeout, cpu_time: the task's limits in bytes and seconds, enforced on its node.
        made_by: the public call that made the task ("map", "submit", ...), for error messages.
        items: the input positions a map chunk carries (None for a single call), for error messages.
    """

    id: int
    function: FunctionRef
    mode: TaskMode
    frames: list[Any]
    on_done: Callable[[bool, Any], None]
    pool: Optional[str] = None
    initializer: Optional[FunctionRef] = None
    max_tasks: Optional[int] = None
    node: Optional[str] = None
    retries: int = 0
    lost_retries: int = 3
    memory: Optional[int] = None
    timeout: Optional[float] = None
    cpu_time: Optional[float] = None
    made_by: str = ""
    items: Optional[range] = None
    # What each crashed attempt said, and the states it was in: tuples of strings, which the cyclic garbage
    # collector does not track (a client with 10,000 tasks outstanding pays for every tracked object).
    failures: tuple[str, ...] = ()
    state: TaskState = TaskState.PENDING
    worker: Optional[str] = None
    sends: int = 0
    history: tuple[str, ...] = ()
    # Sent by its caller's own thread to a worker's door (lucidity.directcall), which reads the result; and,
    # if that worker went away meanwhile, whether it was lost (the table left the task to its caller).
    direct: bool = False
    orphaned: Optional[bool] = None

    def move(self, new: TaskState) -> None:
        if new not in TRANSITIONS[self.state]:
            trail = " -> ".join([*self.history, self.state.value])
            raise IllegalTransition(f"task {self.id}: illegal move {self.state.value} -> {new.value} (history {trail})")
        self.history += (_NAMES[self.state],)
        self.state = new
        if new is _SENT:
            self.sends += 1
        elif new in FINAL:
            self.frames = []

    @property
    def is_final(self) -> bool:
        return self.state in FINAL

    @property
    def description(self) -> str:
        """What the task carries, for error messages, e.g. "items 40..49 of map(f, defined in app.py:12) (task 17)".

        Formatted here, when an error needs it, so that making a task costs no string work.
        """
        function = self.function.description
        if self.items:
            first, last = self.items[0], self.items[-1]
            where = f"item {first}" if first == last else f"items {first}..{last}"
            return f"{where} of {self.made_by or 'map'}({function}) (task {self.id})"
        if self.made_by:
            return f"{self.made_by}({function}) (task {self.id})"
        return f"task {self.id} ({function})"

    def siblings(self, ids: Iterator[int]) -> "TaskMaker":
        """A maker of tasks like this one but for their id (the next of `ids`), payload, ``on_done`` and items.

        A map makes a task per chunk, and the chunks share everything else: the shared fields are read here
        once, and each task is then one positional call, where a task made by keywords (through
        `lucidity.options.TaskOptions.new_task`) cost twice as much (0.5 against 0.3 us).
        """
        # By position, in the order of the fields (tests/unit/test_task.py checks that a sibling is its
        # template's copy): pool, initializer, max_tasks, node, retries, lost_retries, memory, timeout, cpu_time,
        # made_by; then items.
        function, mode, pool, initializer, max_tasks, node = (self.function, self.mode, self.pool, self.initializer,
                                                              self.max_tasks, self.node)
        retries, lost_retries, memory, timeout, cpu_time, made_by = (self.retries, self.lost_retries, self.memory,
                                                                     self.timeout, self.cpu_time, self.made_by)

        def make(frames: list[Any], on_done: Callable[[bool, Any], None], items: Optional[range]) -> Task:
            return Task(next(ids), function, mode, frames, on_done, pool, initializer, max_tasks, node, retries,
                        lost_retries, memory, timeout, cpu_time, made_by, items)

        return make

    def spec(self) -> TaskSpec:
        """The task's entry in a TASKS message (everything but the payload frames)."""
        # Made as `lucidity.messages.batches` makes them, without the NamedTuple's __new__ (Python code, one
        # frame per task; dispatch makes one for every task it sends).
        return _new_tuple(TaskSpec, (self.id, self.function.digest, self.mode,
                                     None if self.initializer is None else self.initializer.digest,
                                     self.max_tasks or 0, (self.pool or "") if self.max_tasks else "",
                                     self.memory or 0, self.timeout or 0.0, self.cpu_time or 0.0))


#: Makes a task from its payload frames, its ``on_done`` and its items (`Task.siblings`).
TaskMaker = Callable[[list[Any], Callable[[bool, Any], None], Optional[range]], Task]
