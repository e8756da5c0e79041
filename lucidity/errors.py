"""The exception hierarchy.

Everything lucidity raises on its own account derives from `LucidityError`. Where the standard library
would raise a particular type, the matching error subclasses it too (`MemoryLimitExceeded` is a
`MemoryError`, `JobTimeout` a `TimeoutError`, `SerializationError` a `pickle.PicklingError`), so that
`except` clauses written for multiprocessing keep working.

Errors carry their facts as attributes and in their text. They pickle by keyword so that they survive a
trip between processes unchanged. An error a node reports about one task (`WorkerCrashed` and the limit
errors) says what the task carried, for a map chunk the items that were running ("while running items
40..49 of map(f, defined in app.py:12) (task 17)"), and has the attributes ``task`` (the task's number
within its client) and ``items`` (the ``range`` of input positions of a map chunk, None for a single call).
"""

from __future__ import annotations

import pickle
import signal
from typing import TYPE_CHECKING, Any, Optional

__all__ = [
    "LucidityError",
    "ProtocolError",
    "SerializationError",
    "RemoteError",
    "WorkerCrashed",
    "NodeLost",
    "ClusterUnavailable",
    "MemoryLimitExceeded",
    "JobTimeout",
    "CpuLimitExceeded",
    "AuthenticationError",
]


class LucidityError(Exception):
    """Root of every error lucidity raises on its own account."""

    def __init__(self, message: str = "", **facts: Any) -> None:
        Exception.__init__(self, message)  # not super(): RemoteError's other base has another signature
        self._facts = facts
        for key, value in facts.items():
            setattr(self, key, value)

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), str(self), self._facts))


def _rebuild(cls: type, message: str, facts: dict[str, Any]) -> LucidityError:
    error: LucidityError = cls(message, **facts)
    return error


class ProtocolError(LucidityError):
    """A message broke the wire format: wrong version, kind, frame count, size or fields."""


class VersionMismatch(ProtocolError):
    """The peer speaks another version of the wire protocol (a cluster and a client of different releases).

    Attribute: ``version``, the peer's protocol version.
    """

    version: int


class SerializationError(LucidityError, pickle.PicklingError):
    """An object could not be serialized (or deserialized); nothing was sent."""


class WorkerCrashed(LucidityError):
    """The worker process died while running the task (segfault, os._exit, abort, a signal).

    Attributes: ``pid``, ``node``, ``exit_code`` (None if killed by a signal), ``signal`` (None if it
    exited), ``task`` (the task's number), ``items`` (a map chunk's input positions, or None).
    """


class NodeLost(LucidityError):
    """The node running the task left or stopped answering, and the task had no retries left."""


class ClusterUnavailable(LucidityError, ConnectionError):
    """No control node or no node with workers answered within the bound."""


class MemoryLimitExceeded(LucidityError, MemoryError):
    """The task went over its memory cap; the worker was stopped and replaced."""


class JobTimeout(LucidityError, TimeoutError):
    """The task ran longer than its wall-time limit; the worker was stopped and replaced."""


class CpuLimitExceeded(LucidityError):
    """The task used more CPU time than its limit; the worker was stopped and replaced."""


class AuthenticationError(LucidityError, PermissionError):
    """A peer did not prove it holds the cluster secret."""


def _make_remote_error() -> type:
    # multiprocessing.pool costs a worker most of a megabyte; it is imported only when an error needs it.
    from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

    class RemoteError(LucidityError, MaybeEncodingError):  # type: ignore[misc]
        """A task raised an exception that could not travel back as itself.

        A `multiprocessing.pool.MaybeEncodingError`, as the stdlib reports anything it cannot send back, so
        ``except`` clauses written for multiprocessing still catch it. Attributes: ``type_name`` (qualified
        name of the original exception type) and ``traceback_text``.
        """

        def __init__(self, message: str = "", **facts: Any) -> None:
            LucidityError.__init__(self, message, **facts)
            self.exc, self.value = message, facts.get("type_name", "")

        __str__ = Exception.__str__
        __repr__ = Exception.__repr__

    RemoteError.__module__ = __name__
    RemoteError.__qualname__ = "RemoteError"
    return RemoteError


if TYPE_CHECKING:
    class RemoteError(LucidityError):  # the real class also derives from multiprocessing's MaybeEncodingError
        """A task raised an exception that could not travel back as itself."""


def __getattr__(name: str) -> Any:
    if name == "RemoteError":
        cls = globals()["RemoteError"] = _make_remote_error()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def describe_exit(exit_code: Optional[int]) -> str:
    """Say how a process ended, from a Popen-style return code (negative means a signal)."""
    if exit_code is None:
        return "disappeared"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"died with {name}"
    return f"exited with code {exit_code}"
