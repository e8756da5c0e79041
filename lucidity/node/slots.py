"""What each worker is doing, in memory shared between the worker and its node daemon.

Tasks travel straight between client and worker (one hop each way), so the daemon does not see them
pass. It still has to know which task a worker was running when the worker died, to fail exactly that
task. A message from the worker could be lost with the worker; a store into shared memory cannot. So each
worker writes its current task into its slot of a small file-backed mmap before running it (a few hundred
nanoseconds), and the daemon reads the slot when it supervises: after a death, for status, for limits.

Layout of one slot (little-endian, `SLOT_SIZE` bytes): state, task id, client id, start time
(CLOCK_MONOTONIC, shared by all processes of a machine), tasks completed, and the task's limits: memory cap,
wall time, CPU time, and the worker's CPU time when the task began. Then the worker's `Tally`, what it has
done since it started: tasks by outcome, bytes received and sent, the sum of task durations, and the
count of tasks per duration bucket (`DURATION_BUCKETS`). The daemon exports these as metrics
(`lucidity.node.reporting`); the worker adds to them in place through typed views of its slot
(`SlotTable.counters`), three stores per task (about 0.2 µs with the bucket's bisect), and no message.

Each field is an aligned 8-byte store, so a reader in another process sees each counter whole, though a
task's counters may be seen half-updated (one more in its outcome, not yet in its bucket): metrics are
sampled, never compared within one slot.
"""

from __future__ import annotations

import bisect
import enum
import mmap
import os
import struct
import time
from typing import NamedTuple, Optional

from .limits import Limits

__all__ = ["SlotState", "SlotView", "SlotTable", "SLOT_SIZE", "Tally", "DURATION_BUCKETS", "TALLY_FIELDS"]

_LAYOUT = struct.Struct("<B7xq16sdQQddd")
#: Upper bounds of the task duration histogram's buckets, in seconds (a last bucket, +Inf, is implied): from
#: the tiny tasks that travel in batches to the hour-long ones.
DURATION_BUCKETS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0)
#: The worker's counters, in slot order (`Tally` names them); the duration sum follows, then the buckets.
TALLY_FIELDS = ("ok", "error", "memory", "dropped", "received_bytes", "sent_bytes")
_TALLY = struct.Struct("<6Qd")
_TALLY_OFFSET = _LAYOUT.size
_BUCKETS_OFFSET = _TALLY_OFFSET + _TALLY.size
_BUCKETS = struct.Struct(f"<{len(DURATION_BUCKETS) + 1}Q")
SLOT_SIZE = 256


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


class Tally(NamedTuple):
    """What a worker has done since it started (or, summed, every worker of a daemon)."""

    ok: int = 0  # tasks that returned a value
    error: int = 0  # tasks that raised (their exception went back to the client)
    memory: int = 0  # tasks refused memory under their cap (MemoryLimitExceeded raised in the worker)
    dropped: int = 0  # queued tasks dropped unstarted because their client went away (DROP)
    received_bytes: int = 0  # every frame the worker's socket received
    sent_bytes: int = 0  # every frame it sent
    duration_sum: float = 0.0  # seconds, over the tasks counted in ok, error and memory
    buckets: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)  # tasks per duration bucket, not cumulative

    def plus(self, other: "Tally") -> "Tally":
        return Tally(self.ok + other.ok, self.error + other.error, self.memory + other.memory,
                     self.dropped + other.dropped, self.received_bytes + other.received_bytes,
                     self.sent_bytes + other.sent_bytes, self.duration_sum + other.duration_sum,
                     tuple(a + b for a, b in zip(self.buckets, other.buckets)))


class SlotCounters(NamedTuple):
    """Typed views of one slot's tally, for the worker to add to in place (`TALLY_FIELDS` order, then the
    duration sum, then the per-bucket counts)."""

    counts: memoryview[int]  # of unsigned 64-bit integers
    duration_sum: memoryview[float]  # of one double
    buckets: memoryview[int]  # of unsigned 64-bit integers

    def count_task(self, outcome: int, seconds: float) -> None:
        """Count a finished task: its outcome (a position in `TALLY_FIELDS`), its duration and its bucket."""
        self.counts[outcome] += 1
        self.duration_sum[0] += seconds
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1  # the first bound >= seconds: Prometheus' le


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

    def counters(self, index: int) -> SlotCounters:
        """Views of the slot's tally (the worker's: an mmap with views on it cannot be closed, and a worker
        never closes its table)."""
        view = memoryview(self._map)[index * SLOT_SIZE:(index + 1) * SLOT_SIZE]
        counts_end = _TALLY_OFFSET + 8 * len(TALLY_FIELDS)
        return SlotCounters(view[_TALLY_OFFSET:counts_end].cast("Q"), view[counts_end:_BUCKETS_OFFSET].cast("d"),
                            view[_BUCKETS_OFFSET:_BUCKETS_OFFSET + _BUCKETS.size].cast("Q"))

    def tally(self, index: int) -> Tally:
        base = index * SLOT_SIZE
        ok, error, memory, dropped, received, sent, duration_sum = _TALLY.unpack_from(self._map, base + _TALLY_OFFSET)
        return Tally(ok, error, memory, dropped, received, sent, duration_sum,
                     _BUCKETS.unpack_from(self._map, base + _BUCKETS_OFFSET))

    def restore(self, index: int, view: SlotView) -> None:
        """Put back a slot reading (a task resumes after the nested tasks it waited on)."""
        self.begin(index, view.task_id, view.client, view.tasks_done, view.limits, view.cpu_start, view.started)

    def reset(self, index: int) -> None:
        """Clear a slot for a new worker, counters included (its daemon has added the old ones up)."""
        self._map[index * SLOT_SIZE:(index + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)
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
