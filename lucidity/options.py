"""The options every task of one face carries: limits, retries, and the pool it belongs to.

Each face builds one frozen `TaskOptions` when it is made (`Pool`, `Executor`: from their constructor
arguments; a `@job` function: from the decorator's) and hands it, unchanged, to every task it makes, so
that making a task is one call and no task can miss an option its face was given. What differs between
two tasks of one face (the function, the payload, the call that made it, the items it carries, the node
it should run on) is passed to `TaskOptions.new_task` instead.

This module owns the shape of those options and the checks of their values (a face checks its own
arguments first, with the stdlib's messages, before it starts a cluster). It does not own what they mean
on a node (`lucidity.node.limits`, the worker) or how the client sends them (`lucidity.task.Task.spec`).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from .client import Client
from .messages import TaskMode
from .task import FunctionRef, Task

__all__ = ["TaskOptions"]


@dataclass(frozen=True)
class TaskOptions:
    """What every task of one face carries besides its call.

    Attributes:
        pool: the id of the face: a worker counts ``max_tasks`` and runs ``initializer`` per pool.
        initializer: ``initializer(*initargs)``, serialized; runs once per worker and pool before its first task.
        max_tasks: a worker is replaced after running this many tasks of the pool (None: never).
        memory, timeout, cpu_time: the limits of each task in bytes and seconds (None: the node's own).
        retries: how many times to rerun a task whose worker crashed (0: crashes are not retried).
    """

    pool: Optional[str] = None
    initializer: Optional[FunctionRef] = None
    max_tasks: Optional[int] = None
    memory: Optional[int] = None
    timeout: Optional[float] = None
    cpu_time: Optional[float] = None
    retries: int = 0
    # The options that differ from a task's defaults (the defaults above are `Task`'s): a map makes a task
    # per chunk, and every keyword passed costs on that path.
    _given: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        for name, value in (("timeout", self.timeout), ("cpu_time", self.cpu_time)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.init and getattr(self, f.name) != f.default}
        object.__setattr__(self, "_given", given)

    @classmethod
    def for_pool(cls, client: Client, initializer: Optional[Callable[..., object]], initargs: Iterable[Any],
                 max_tasks: Optional[int], memory: Optional[int]) -> "TaskOptions":
        """The options of a Pool or an Executor: a pool id of its own, its initializer serialized by `client`."""
        serialized = None if initializer is None else client.function((initializer, tuple(initargs)))
        return cls(pool=uuid.uuid4().hex, initializer=serialized, max_tasks=max_tasks, memory=memory)

    def new_task(self, client: Client, function: FunctionRef, mode: TaskMode, frames: list[Any],
                 on_done: Callable[[bool, Any], None], *, made_by: str, items: Optional[range] = None,
                 node: Optional[str] = None) -> Task:
        """A task of `client` with these options (see `lucidity.task.Task` for the arguments); not submitted."""
        return client.new_task(function, mode, frames, on_done, made_by=made_by, items=items, node=node, **self._given)
