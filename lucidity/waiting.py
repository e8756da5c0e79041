"""Blocking waits that keep a worker useful while its task waits for other tasks.

A task may submit further tasks and wait for them (nested jobs, a Pool inside a task). If it simply
blocked, a cluster whose every worker runs such a task would deadlock: the children sit queued behind
their waiting parents. So inside a worker process, every blocking wait of the faces (``AsyncResult.get``,
``Future.result``, ``Job.await_get``) goes through `wait`, and the worker installs a helper that, while the
wait lasts, runs the tasks queued at this worker (its slot goes to queued work) and returns as soon as the
awaited result is in.

Outside a worker nothing is installed and `wait` is a plain ``Event.wait``.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

__all__ = ["wait", "install", "completed", "serves_queued_tasks"]

_Helper = Callable[[threading.Event, Optional[float]], bool]

# Set once, by a worker process at start-up, before any task runs; read-only afterwards.
_helper: Optional[_Helper] = None
_wake: Optional[Callable[[], None]] = None


def install(helper: _Helper, wake: Callable[[], None]) -> None:
    """Called by the worker process: `helper` serves queued tasks until the event is set or time is up."""
    global _helper, _wake
    _helper, _wake = helper, wake


def wait(event: threading.Event, timeout: Optional[float] = None) -> bool:
    """Wait for `event` (at most `timeout` seconds); True if it is set."""
    if event.is_set():
        return True
    if _helper is None or threading.current_thread() is not threading.main_thread():
        return event.wait(timeout)
    return _helper(event, timeout)


def serves_queued_tasks() -> bool:
    """True if `wait` in this thread runs queued tasks meanwhile (a worker's main thread); else it is a plain
    ``Event.wait``, and a caller holding a lock or condition of its own may wait on that instead."""
    return _helper is not None and threading.current_thread() is threading.main_thread()


def completed() -> None:
    """Called after any task's result is delivered, so that a worker serving while it waits looks again."""
    if _wake is not None:
        _wake()
