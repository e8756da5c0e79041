"""Shedding: a worker gives back the tasks queued behind a long one, so that idle workers run them.

A client keeps a small window of tasks in flight on each worker, so that a worker never waits a round trip
for its next task. The price is that a task queued behind one that turns out long waits for it, while
other workers may sit idle: the long tail of a map. The worker's loop cannot answer while its task runs
(it is running the caller's code), so a `Shedder` thread watches instead: once the running task has taken
`SHED_AFTER` seconds, or `SHED_FACTOR` times the worker's mean task time if that is longer, and tasks are
still queued, it gives them back to their clients (MISSING, ``busy``); each client sends them to other
workers, and this one nothing more until its long task ends (`lucidity.tasktable.TaskTable.give_back`).

The thread sleeps while nothing is queued behind the running task, so a lone `apply` never wakes it; in a
stream of tasks it wakes about once per `SHED_AFTER`. It touches the worker's socket and queue only while it
holds the worker's lock, which the worker's own thread releases only while it runs the caller's code:
ZeroMQ sockets may change threads only across such a lock.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["Shedder", "SHED_AFTER", "SHED_FACTOR"]

#: A task running this long (at least) has the tasks queued behind it given back, in seconds.
SHED_AFTER = 0.02
#: ... or this many times the worker's mean task time, if that is longer.
SHED_FACTOR = 4.0


class Shedder:
    """The thread that gives back queued tasks while a long one runs.

    Args:
        lock: the worker's lock, held by its thread except while the caller's code runs.
        give_back: gives back every queued task (called with the lock held); True if there were any.
        mean_time: the worker's mean task time, in seconds.
    """

    def __init__(self, lock: threading.RLock, give_back: Callable[[], bool], mean_time: Callable[[], float]) -> None:
        self._lock = lock
        self._give_back = give_back
        self._mean_time = mean_time
        self._wakeup = threading.Condition(threading.Lock())
        self._armed = False
        self._task = 0  # counts the tasks started: the one the thread watches is still running if unchanged
        self._started = 0.0
        self.given_back = 0  # how many times tasks were given back (for tests and the curious)
        self._thread: threading.Thread | None = None  # started with the first task that has others behind it

    def task_started(self, queued: bool) -> None:
        """The worker's thread starts a task; `queued`: tasks wait behind it."""
        self._task += 1
        self._started = time.monotonic()
        if queued:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="lucidity-shedder", daemon=True)
                self._thread.start()
            with self._wakeup:  # uncontended but for a moment: the watcher disarms under it
                if not self._armed:
                    self._armed = True
                    self._wakeup.notify()

    def _watch(self) -> None:
        while True:
            with self._wakeup:
                while not self._armed:
                    self._wakeup.wait()
            task, started = self._task, self._started
            delay = started + max(SHED_AFTER, SHED_FACTOR * self._mean_time()) - time.monotonic()
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
                    if task == self._task and self._give_back():
                        self.given_back += 1
                finally:
                    self._lock.release()
            with self._wakeup:
                if task == self._task:  # else a task started meanwhile, and is watched next
                    self._armed = False
