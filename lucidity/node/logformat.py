"""``--log-format json``: the daemons' log lines as one JSON object per line, for log collectors.

Every object has ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``daemon`` (control or node),
``node`` (a node daemon's name), ``pid`` (the daemon's), ``logger`` and ``message``; and, where the line is
about one, ``worker_pid``, ``task_id`` and ``client_id``, which the log call passes as ``extra=context(...)``;
and ``exception``, the traceback text of a line logged with one. Lines a worker writes to its stderr
(tracebacks, faulthandler dumps, a task's own writes to stderr) become objects of the logger
``lucidity.worker`` with the worker's pid (`lucidity.node.supervision`), so that every line parses.

This module only formats. Handlers are configured by the CLI (`lucidity.cli`), never by library code; the
text format stays the default and is unchanged.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

__all__ = ["JsonFormatter", "context", "CONTEXT_FIELDS"]

#: The fields a log call may add with ``extra=context(...)``.
CONTEXT_FIELDS = ("worker_pid", "task_id", "client_id")


def context(worker_pid: Optional[int] = None, task_id: Optional[int] = None,
            client_id: Optional[str] = None) -> dict[str, Any]:
    """The ``extra=`` of a log line about a worker, a task or a client (the text format ignores it)."""
    given = {"worker_pid": worker_pid, "task_id": task_id, "client_id": client_id}
    return {key: value for key, value in given.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON for the daemon `daemon`, named `node` (a node daemon's name,
    which may be set once the daemon knows it)."""

    def __init__(self, daemon: str, node: Optional[str] = None) -> None:
        # datetime here, not at the top: every daemon imports this module (for `context`), and only those
        # logging JSON need it (about 1 ms of each daemon's start-up; issue 13).
        import datetime

        super().__init__()
        self.daemon = daemon
        self.node = node
        self._datetime = datetime.datetime
        self._utc = datetime.timezone.utc

    def format(self, record: logging.LogRecord) -> str:
        moment = self._datetime.fromtimestamp(record.created, self._utc)
        entry: dict[str, Any] = {"time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                                 "level": record.levelname, "daemon": self.daemon}
        if self.node is not None:
            entry["node"] = self.node
        entry.update(pid=record.process, logger=record.name, message=record.getMessage())
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
