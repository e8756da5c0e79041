"""Shedding: a worker gives back the tasks queued behind a long one, so that idle workers run them.

A client keeps a small window of tasks in flight on each worker, so that a worker never waits a round trip
for its next task. The price is that a task queued behind one that turns out long waits for it, while
other workers may sit idle: the long tail of a map. The worker's loop cannot answer while its task runs
(it is running the caller's code), so a `Shedder` thread watches instead: once the running task has taken
`SHED_AFTER` seconds, or `SHED_FACTOR` times the worker's typical task time if that is longer, and tasks
are still queued, it gives them back to their clients (MISSING, ``busy``); each client sends them to other
workers, and this one nothing more until its long task ends (`lucidity.tasktable.TaskTable.give_back`).

The typical task time here is the shedder's own, a moving geometric mean of the times its worker reports
(`task_ended`): one long task moves an arithmetic mean so far (a 500 ms task after 5 ms ones: to 104 ms, a
threshold of 0.4 s) that the tasks queued behind the next long one would wait for it; and until a task has
ended it is unknown, and `SHED_AFTER_FIRST` applies.

Tasks also arrive while a long task runs (the client's window had room when it sent them, before the task
turned out long), and they wait in the socket, where the queue does not show them: so the thread is armed
not only while tasks are queued behind the running one but also while the worker is in a stream of tasks
(the task before this one had others behind it), and for the worker's first task (a client that has timed
its tasks on other workers sends a second one behind it: `lucidity.tasktable.TaskTable.pace`); before giving
back it takes in what has arrived (`receive`). The client, for its part, sends nothing more to a worker
whose oldest task has run long (`lucidity.tasktable.Lane.overdue`).

The thread sleeps while the worker is not in a stream, so a lone `apply`, or a loop of them, wakes it only
for the worker's first task; in a stream of tasks it wakes about once per `SHED_AFTER`, and so while a long
task runs, looking for tasks that arrived since it last gave back. It touches the worker's socket and queue
only while it holds the worker's lock, which the worker's own thread releases only while it runs the
caller's code: ZeroMQ sockets may change threads only across such a lock.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional

__all__ = ["Shedder", "SHED_AFTER", "SHED_FACTOR", "SHED_AFTER_FIRST"]

#: A task running this long (at least) has the tasks queued behind it given back, in seconds.
SHED_AFTER = 0.02
#: ... or this many times the worker's typical task time, if that is longer.
SHED_FACTOR = 4.0
#: ... or, for a worker's first task, whose typical time is not known yet, this long: a client sends a task
#: behind it once its other workers have answered, and tasks of 20 ms, say, all run past `SHED_AFTER`.
SHED_AFTER_FIRST = SHED_FACTOR * SHED_AFTER
#: Weight of each new task in the typical task time (a moving geometric mean).
_WEIGHT = 0.2


class Shedder:
    """The thread that gives back queued tasks while a long one runs.

    Args:
        lock: the worker's lock, held by its thread except while the caller's code runs.
        give_back: gives back every queued task (called with the lock held); True if there were any.
        receive: takes into the queue the tasks that arrived meanwhile (called with the lock held, first).
    """

    def __init__(self, lock: threading.RLock, give_back: Callable[[], bool],
                 receive: Optional[Callable[[], object]] = None) -> None:
        self._lock = lock
        self._give_back = give_back
        self._receive = receive
        self._wakeup = threading.Condition(threading.Lock())
        self._armed = False
        self._task = 0  # counts the tasks started: the one the thread watches is still running if unchanged
        self._started = 0.0
        self._in_stream = False  # the task running had others queued behind it when it started
        self._log_time = 0.0  # the moving mean of log(seconds) of the tasks that ended
        self.typical_time = 0.0  # seconds a task of this worker typically takes (0: none has ended yet)
        self.given_back = 0  # how many times tasks were given back (for tests and the curious)
        # Started now, while the worker waits for its first task, not when that task starts: a thread's start
        # waits for the new thread to run, and 64 workers starting their first tasks at once on 2 cores made
        # that wait part of every first task's start (issue 13, the cold map).
        self._thread = threading.Thread(target=self._watch, name="lucidity-shedder", daemon=True)
        self._thread.start()

    def task_started(self, queued: bool) -> None:
        """The worker's thread starts a task; `queued`: tasks wait behind it."""
        previous_in_stream, self._in_stream = self._in_stream, queued
        self._task += 1
        self._started = time.monotonic()
        if queued or previous_in_stream or self.typical_time <= 0:
            with self._wakeup:  # uncontended but for a moment: the watcher disarms under it
                if not self._armed:
                    self._armed = True
                    self._wakeup.notify()

    def task_ended(self, seconds: float) -> None:
        """The worker's thread ended a task that ran `seconds`."""
        logged = math.log(max(seconds, 1e-6))
        self._log_time = logged if self.typical_time <= 0 else (1 - _WEIGHT) * self._log_time + _WEIGHT * logged
        self.typical_time = math.exp(self._log_time)

    def _watch(self) -> None:
        checked: tuple[int, float] = (0, 0.0)  # the task last checked while it ran, and when
        while True:
            with self._wakeup:
                while not self._armed:
                    self._wakeup.wait()
            task, started = self._task, self._started
            typical = self.typical_time
            due = started + (max(SHED_AFTER, SHED_FACTOR * typical) if typical > 0 else SHED_AFTER_FIRST)
            if checked[0] == task:
                due = max(due, checked[1] + SHED_AFTER)
            delay = due - time.monotonic()
            if delay > 0:
                with self._wakeup:
                    self._wakeup.wait(delay)  # nothing notifies an armed watcher: this is the task's deadline
                continue
            if task != self._task:
                continue  # that task ended and another began: its own deadline applies
            # Not blocking: if the worker's thread holds the lock, its task is not running the caller's code
            # (it ended, or waits in lucidity and serves the queue itself); the next task arms this again.
            if self._lock.acquire(blocking=False):
                try:
                    if task == self._task:
                        if self._receive is not None:
                            self._receive()
                        if self._give_back():
                            self.given_back += 1
                finally:
                    self._lock.release()
                # Check again while it runs: tasks sent before its client heard that this worker is busy
                # arrive after the first give-back.
                checked = (task, time.monotonic())
                continue
            with self._wakeup:
                if task == self._task:  # else a task started meanwhile, and is watched next
                    self._armed = False
