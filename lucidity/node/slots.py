"""What each worker is doing, in memory shared between the worker and its node daemon.

Tasks travel straight between client and worker (one hop each way), so the daemon does not see them
pass. It still has to know which task a worker was running when the worker died, to fail exactly that
task. A message from the worker could be lost with the worker; a store into shared memory cannot. So each
worker writes its current task into its slot of a small file-backed mmap before running it (a few hundred
nanoseconds), and the daemon reads the slot when it supervises: after a death, for status, for limits.

Layout of one slot (little-endian, `SLOT_SIZE` bytes): state, task id, client id, start time
(CLOCK_MONOTONIC, shared by all processes of a machine), tasks completed, and the task's limits: memory cap,
wall time, CPU time, and the worker's CPU time when the task began.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import time
from typing import NamedTuple, Optional

from .limits import Limits

__all__ = ["SlotState", "SlotView", "SlotTable", "SLOT_SIZE"]

_LAYOUT = struct.Struct("<B7xq16sdQQddd")
SLOT_SIZE = 128


class SlotState(enum.IntEnum):
    IDLE = 0
    RUNNING = 1


class SlotView(NamedTuple):
    """One reading of a slot."""

    state: SlotState
    task_id: int
    client: bytes
    started: float
    tasks_done: int
    limits: Limits
    cpu_start: float

    @property
    def running_for(self) -> float:
        return time.monotonic() - self.started if self.state is SlotState.RUNNING else 0.0


class SlotTable:
    """A file of slots, one per worker position; the daemon creates it, each worker maps it too."""

    def __init__(self, path: str, count: int, *, create: bool) -> None:
        self.path = path
        self.count = count
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, count * SLOT_SIZE)
            self._map = mmap.mmap(fd, count * SLOT_SIZE)
        finally:
            os.close(fd)

    def begin(self, index: int, task_id: int, client: bytes, tasks_done: int, limits: Limits = Limits(),
              cpu_start: float = 0.0, started: Optional[float] = None) -> None:
        """Record that the worker at `index` runs a task (`started` restores an interrupted one's start)."""
        _LAYOUT.pack_into(self._map, index * SLOT_SIZE, SlotState.RUNNING, task_id, client,
                          time.monotonic() if started is None else started, tasks_done, limits.memory,
                          limits.timeout, limits.cpu_time, cpu_start)

    def end(self, index: int, tasks_done: int) -> None:
        _LAYOUT.pack_into(self._map, index * SLOT_SIZE, SlotState.IDLE, -1, b"", 0.0, tasks_done, 0, 0.0, 0.0, 0.0)

    def read(self, index: int) -> SlotView:
        state, task_id, client, started, done, memory, timeout, cpu, cpu_start = _LAYOUT.unpack_from(
            self._map, index * SLOT_SIZE)
        return SlotView(SlotState(state), task_id, client, started, done, Limits(memory, timeout, cpu), cpu_start)

    def restore(self, index: int, view: SlotView) -> None:
        """Put back a slot reading (a task resumes after the nested tasks it waited on)."""
        self.begin(index, view.task_id, view.client, view.tasks_done, view.limits, view.cpu_start, view.started)

    def reset(self, index: int) -> None:
        self.end(index, 0)

    def close(self, unlink: bool = False) -> None:
        self._map.close()
        if unlink:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def open_slot_table(path: str, count: int) -> Optional[SlotTable]:
    """Map an existing slot table, or None if it is gone (the daemon exited)."""
    try:
        return SlotTable(path, count, create=False)
    except OSError:
        return None
