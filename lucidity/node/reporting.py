"""What a node daemon counts and reports about itself: its STATUS_REPLY, and its metrics.

Both read the same things (the workers, their slots, the daemon's own counters), and change together when a
new number is counted; docs/monitoring.md lists every metric, docs/cli.md the status.

Tasks travel between clients and workers without passing the daemon, so most task numbers come from the
workers themselves: each keeps a `Tally` in its slot (tasks that returned a value or raised, memory
refused under a cap, queued tasks dropped because their client went away, bytes, durations), which the
daemon reads here. The daemon adds what only it knows (`NodeCounters`): tasks whose worker died or was
killed over a limit, by reason; watchdog kills; running tasks it stopped because their client went away;
workers started. It also keeps the tallies of workers that exited, so that every counter only grows for
the daemon's life, whatever its workers do. Resident memory is read from /proc at each scrape.

This module decides nothing about the daemon; the daemon (`lucidity.node.daemon`) calls `NodeCounters`
as things happen, and `node_status` or `node_families` when asked, on its own thread.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .. import messages
from ..messages import FailureReport
from . import limits
from .metrics import Family, Sample, counter, gauge, histogram
from .slots import DURATION_BUCKETS, SlotState, SlotTable, SlotView, Tally
from .supervision import WorkerProcess, WorkerState, peak_rss

__all__ = ["NodeCounters", "node_status", "node_families", "OUTCOMES", "WORKER_STATES"]

#: Every value of the outcome label, always exported (a series that appears late breaks rate()).
OUTCOMES = ("ok", "error", "crashed", "memory", "timeout", "cpu", "lost")
#: Every value of the workers' state label.
WORKER_STATES = ("starting", "idle", "busy", "stopping")
#: The watchdog's reasons to kill a worker.
KILL_REASONS = tuple(kind.value for kind in limits.LimitKind)
#: Failures a node's status lists with their text, the newest first.
RECENT_FAILURES = 20


@dataclass
class NodeCounters:
    """What the node daemon counts itself, for its metrics."""

    failures: collections.Counter[str] = field(default_factory=collections.Counter)  # by FailureReason value
    kills: collections.Counter[str] = field(default_factory=collections.Counter)  # by LimitKind value
    abandoned: int = 0  # running tasks stopped because their client went away
    workers_started: int = 0
    retired: Tally = Tally()  # the tallies of workers that exited
    recent: collections.deque[messages.RecentFailure] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_FAILURES))

    @property
    def tasks_failed(self) -> int:
        """Tasks whose worker died or was killed (reported to their client as failed)."""
        return sum(self.failures.values())

    def task_failed(self, report: FailureReport) -> None:
        self.failures[report.reason.value] += 1
        self.recent.appendleft(messages.RecentFailure(time.time(), report.task, report.pid, report.reason.value,
                                                      report.message))

    def worker_exited(self, worker: WorkerProcess, slot: SlotView, tally: Tally) -> None:
        """Keep an exited worker's tally, and count why it ended (before its slot is reused)."""
        self.retired = self.retired.plus(tally)
        if worker.breach is not None:
            self.kills[worker.breach.kind.value] += 1
        if worker.abandoned and slot.state is SlotState.RUNNING:
            self.abandoned += 1


def node_status(counters: NodeCounters, slots: SlotTable, workers: Iterable[WorkerProcess], *, name: str,
                address: str, instance: str, memory_limit: Optional[int], processes: int,
                clients: int) -> messages.NodeStatus:
    """The node's STATUS_REPLY (`lucidity status`)."""
    entries = []
    tally = counters.retired
    for worker in sorted(workers, key=lambda w: w.index):
        if worker.state is not WorkerState.EXITED:
            tally = tally.plus(slots.tally(worker.index))
        slot = slots.read(worker.index)
        running = slot.state is SlotState.RUNNING
        entries.append(messages.WorkerStatus(
            worker.child.pid, worker.address, "busy" if running else worker.state.value,
            limits.memory_of(worker.child.pid) or 0,  # the worker and anything its task started
            slot.tasks_done, slot.task_id if running else None, peak_rss(worker.child.pid),
            slot.limits.memory if running and slot.limits.memory else memory_limit))
    retired = counters.retired
    done_by_exited = retired.ok + retired.error + retired.memory  # each task a worker ran to a result
    return messages.NodeStatus(
        name, address, instance, memory_limit, processes, tuple(entries), clients,
        done_by_exited + sum(w.tasks_done for w in entries), counters.tasks_failed,
        sum(1 for w in entries if w.state == "busy"), _outcomes(counters, tally),
        {reason: counters.kills[reason] for reason in KILL_REASONS}, tuple(counters.recent))


def _state(worker: WorkerProcess, slot: SlotView) -> Optional[str]:
    if worker.state is WorkerState.READY:
        return "busy" if slot.state is SlotState.RUNNING else "idle"
    return None if worker.state is WorkerState.EXITED else worker.state.value


def node_families(counters: NodeCounters, slots: SlotTable, workers: Iterable[WorkerProcess], *, processes: int,
                  memory_limit: Optional[int], clients: int, joined: bool) -> list[Family]:
    """Every family a node daemon exports, read now."""
    states = dict.fromkeys(WORKER_STATES, 0)
    tally = counters.retired
    resident, peak, caps = [], [], []
    for worker in sorted(workers, key=lambda w: w.index):
        slot = slots.read(worker.index)
        state = _state(worker, slot)
        if state is None:
            continue
        states[state] += 1
        tally = tally.plus(slots.tally(worker.index))
        position = (("position", str(worker.index)),)
        resident.append(Sample("", position, limits.memory_of(worker.child.pid) or 0))
        peak.append(Sample("", position, peak_rss(worker.child.pid)))
        cap = slot.limits.memory if state == "busy" and slot.limits.memory else memory_limit
        if cap:
            caps.append(Sample("", position, cap))
    outcomes = _outcomes(counters, tally)
    return [
        gauge("lucidity_node_joined", "1 if the control node answered this node's last heartbeats, else 0",
              int(joined)),
        gauge("lucidity_node_processes", "Worker processes this node runs when all are up", processes),
        gauge("lucidity_node_clients", "Clients with a session on this node", clients),
        gauge("lucidity_workers", "Worker processes by state", states, label="state"),
        counter("lucidity_workers_started_total", "Worker processes started (first starts and replacements)",
                counters.workers_started),
        counter("lucidity_tasks_total", "Tasks ended on this node, by outcome", outcomes, label="outcome"),
        histogram("lucidity_task_duration_seconds", "Run time of tasks that returned a value or raised",
                  DURATION_BUCKETS, tally.buckets, tally.duration_sum),
        Family("lucidity_worker_resident_bytes", "gauge",
               "Resident memory of each worker position: the worker and what its task started", tuple(resident)),
        Family("lucidity_worker_peak_resident_bytes", "gauge",
               "Peak resident memory of each position's current worker process (VmHWM)", tuple(peak)),
        Family("lucidity_worker_memory_limit_bytes", "gauge",
               "Memory cap of each worker position: its task's, else the node's (absent without a cap)", tuple(caps)),
        counter("lucidity_limit_kills_total", "Workers the watchdog killed over a limit, by reason",
                {reason: counters.kills[reason] for reason in KILL_REASONS}, label="reason"),
        counter("lucidity_worker_received_bytes_total", "Bytes the workers received from clients (tasks, modules)",
                tally.received_bytes),
        counter("lucidity_worker_sent_bytes_total", "Bytes the workers sent to clients (results, requests)",
                tally.sent_bytes),
    ]


def _outcomes(counters: NodeCounters, tally: Tally) -> dict[str, int]:
    """Tasks ended on this node by outcome (`OUTCOMES`): the workers' tallies and the daemon's own counts."""
    failures = counters.failures
    return {"ok": tally.ok, "error": tally.error, "crashed": failures["crashed"],
            "memory": tally.memory + failures["memory"], "timeout": failures["timeout"], "cpu": failures["cpu"],
            "lost": counters.abandoned + tally.dropped}
