"""The client's task table: which tasks wait, which worker holds which, and what becomes of them when a
worker goes away. Pure: no sockets, no threads; its clock is an argument (see below).

The client's I/O thread feeds it events and carries out what it answers::

    add / cancel          (caller threads)      a task joins or leaves the queues
    place / claim / door_ended  (callers)       a lone call its caller sends to a worker's door itself
    add_worker / connected / remove_worker      the workers the client can send to
    dispatch()       -> [(lane, batch)]         what to send to which worker now
    steal()          -> [(lane, task ids)]      what to take back from a worker for others that ran out
    unsend / give_back                          a batch that never left; tasks a worker gave back
    take(lane, id, seconds) -> task             a result arrived: the task it answers, if still ours
    failed(...)      -> (task, retry)           its node reported it crashed or broke a limit
    finish(task)                                the task's outcome was delivered

Policy lives here, where a test reaches it without a socket: each worker's window of tasks in flight (one
until the durations of the client's tasks are known, from any worker: see `pace`; then as many as fill
`WINDOW_TARGET` seconds or one more than it runs in the round trip its results measured
(`Lane.round_trip`), whichever is more; and none while it is busy with a long task after giving back the
ones it had queued: see `give_back`, or while its oldest task has run so long that it is likely such a
task: see `Lane.overdue`), the fair share of a queue per worker, `max_running`, placement on a node,
resends after a lost worker (counted against `Task.lost_retries`) and crash retries. The caller holds the
client's lock around every call. The one clock is the table's `clock` argument, read once per `dispatch`
and `take`, so that a test can drive it.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Callable, Iterable, Optional

from .task import Task, TaskState

__all__ = ["Lane", "TaskTable", "WINDOW_MIN", "WINDOW_MAX", "WINDOW_TARGET", "OVERDUE_AFTER", "OVERDUE_FACTOR",
           "STEAL_WORTH"]

#: Window of tasks in flight per worker: the bounds, and the queueing time it aims for, in seconds. The most
#: is twice the results a worker sends in one batch in a burst of tiny tasks (lucidity.node.worker:
#: RESULT_BATCH_MAX), so that a full batch leaves while as many tasks are still queued there, and the tasks
#: its answer frees arrive before the worker runs dry. At 256 the worker drained its queue before a batch
#: was full, sent the last few results one by one and waited for more: a chunksize=1 map of tiny tasks ran
#: 11-17% slower (110k against 122-130k tasks/s, 15 alternated rounds).
WINDOW_MIN = 2
WINDOW_MAX = 512
WINDOW_TARGET = 0.005
#: Work stealing: a worker's queued tasks are taken back for workers with none once they hold at least this
#: much work (seconds, by the worker's typical task time) and twice its round trip, what the taking costs.
STEAL_WORTH = 0.01
#: A worker whose oldest task in flight has run this long as far as the client can tell (seconds), or
#: `OVERDUE_FACTOR` times its typical task time if that is longer, gets nothing more until it answers: what
#: it runs is likely a long task, and a task sent now would wait behind it. The worker's shedder gives back
#: what already waits there by the same measure (lucidity.node.shedding: SHED_AFTER, SHED_FACTOR).
OVERDUE_AFTER = 0.02
OVERDUE_FACTOR = 4.0


class Lane:
    """A worker as the table sees it: whether it can be written to, its tasks in flight, its pace."""

    __slots__ = ("key", "node", "connected", "inflight", "mean_time", "typical_time", "round_trip", "busy",
                 "head_since", "head_sent_idle", "withdrawing", "_log_time")

    def __init__(self, key: str, node: str) -> None:
        self.key = key
        self.node = node
        self.connected = False  # its connection is made: tasks may go to it
        self.inflight: dict[int, Task] = {}  # in the order sent: the first is the one it runs
        self.mean_time = 0.0  # seconds per task, a moving average of what it reported (0: not known yet)
        # Seconds a task typically takes (0: not known yet): a moving geometric mean, which one long task in a
        # stream of short ones moves little (a 500 ms task after 5 ms ones: 12.5 ms, where the mean goes to
        # 104 ms), so that the next long task is still recognised as long (see `overdue`).
        self.typical_time = 0.0
        self._log_time = 0.0
        # Seconds from sending a task to an idle worker to its result, less the task's own time: a moving
        # average. The window holds at least this much work queued, so that the worker need not wait for it.
        self.round_trip = 0.0
        self.busy = False  # it gave back its queued tasks to run a long one: nothing more until it answers
        # When its oldest task in flight became the oldest (sent to an idle worker, or the one before it was
        # answered): about when the worker started it, as far as the client can tell.
        self.head_since = 0.0
        self.head_sent_idle = False  # ...and it was sent to the worker idle: its answer times a round trip
        self.withdrawing = False  # asked to give back queued tasks (`TaskTable.steal`), not answered yet

    def credit(self, pace: float = 0.0) -> int:
        """How many more tasks it may hold: one until the pace of its tasks is known (no more than it can start
        at once, so that a first map spreads over every worker), then small for slow tasks, so that work
        spreads, and larger for tiny ones, so that they travel in batches; and at least one more than the tasks
        it runs in a round trip, so that it never waits for its next one; none while it is busy with a long
        task. Its own pace, or, until it has answered a task, `pace`: the client's tasks' on other workers."""
        if self.busy:
            return 0
        mean_time = self.mean_time if self.mean_time > 0 else pace
        if mean_time <= 0:
            window = 1
        else:
            window = max(int(WINDOW_TARGET / mean_time), 1 + math.ceil(self.round_trip / mean_time))
            window = max(WINDOW_MIN, min(WINDOW_MAX, window))
        return window - len(self.inflight)

    def observe(self, seconds: float) -> None:
        self.mean_time = seconds if self.mean_time <= 0 else 0.8 * self.mean_time + 0.2 * seconds
        logged = math.log(max(seconds, 1e-6))
        self._log_time = logged if self.typical_time <= 0 else 0.8 * self._log_time + 0.2 * logged
        self.typical_time = math.exp(self._log_time)

    def overdue(self, now: float, pace: float = 0.0) -> bool:
        """Its oldest task has run longer than its tasks typically take (see `OVERDUE_AFTER`); until it has
        answered a task, longer than `pace` says the client's tasks take on other workers."""
        if not self.inflight:
            return False
        typical = self.typical_time if self.typical_time > 0 else pace
        return now - self.head_since > max(OVERDUE_AFTER, OVERDUE_FACTOR * typical)


class TaskTable:
    """Every unfinished task of one client, the queues they wait in, and the workers that hold them.

    Args:
        max_running: at most this many workers hold tasks at once (None: every worker).
        clock: seconds, monotonic: when tasks were sent and answered (`Lane.overdue`).
    """

    def __init__(self, max_running: Optional[int] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_running = max_running
        self._clock = clock
        self.tasks: dict[int, Task] = {}  # every unfinished task, by id
        self._pending: collections.deque[Task] = collections.deque()
        # Tasks placed on a node wait here, by node name, while that node is known.
        self._pending_for: dict[str, collections.deque[Task]] = collections.defaultdict(collections.deque)
        self._placed: collections.Counter[str] = collections.Counter()  # unfinished tasks placed per node
        self._nodes: frozenset[str] = frozenset()
        self.lanes: dict[str, Lane] = {}  # in round-robin order: a worker chosen moves to the end
        # Seconds per task over every worker, a moving average (0: none answered yet). A worker that has not
        # answered yet runs the same tasks: it gets a window by this pace rather than one task and a round
        # trip's wait for the next, once any worker has answered (a first map's second task on each worker).
        self.pace = 0.0
        self.withdrawals = 0  # WITHDRAW requests made (`steal`), for tests and the curious

    # -- the caller's side --------------------------------------------------------------------------------

    def add(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.tasks[task.id] = task
            self._queue_of(task).append(task)
            if task.node is not None:
                self._placed[task.node] += 1

    def cancel(self, task: Task) -> bool:
        """Cancel a task that no worker holds yet; False if one does (or it has ended)."""
        if task.state is not TaskState.PENDING:
            return False
        task.move(TaskState.CANCELLED)
        self._forget(task)  # its queue skips it when its turn comes
        return True

    @property
    def idle(self) -> bool:
        """No task is unfinished."""
        return not self.tasks

    def placed_on(self, node: str) -> int:
        """Unfinished tasks placed on a node (the faces' placement sees its own burst through this)."""
        return self._placed[node]

    def waiting(self) -> bool:
        """Some task waits for a worker."""
        return bool(self._pending) or any(self._pending_for.values())

    def unfinished(self) -> list[Task]:
        return [task for task in self.tasks.values() if not task.is_final]

    # -- workers and nodes --------------------------------------------------------------------------------

    def set_nodes(self, names: frozenset[str]) -> None:
        """The nodes the client knows now; tasks placed on one that left go to any worker, first in line."""
        for name in self._nodes - names:
            stranded = self._pending_for.pop(name, None)
            if stranded:
                self._pending.extendleft(reversed(stranded))
        self._nodes = names

    def add_worker(self, key: str, node: str) -> Lane:
        lane = self.lanes[key] = Lane(key, node)
        return lane

    def remove_worker(self, key: str, *, lost: bool) -> tuple[list[Task], list[Task]]:
        """The worker is gone: its unfinished tasks wait for another.

        A worker its node saw exit had not started them (its running task is reported on its own); one lost
        with its node may have, so each such resend counts against the task's `lost_retries`.

        Returns:
            (the tasks queued again, the tasks out of retries: the caller fails them with `NodeLost`).
        """
        lane = self.lanes.pop(key)
        unfinished = [t for t in lane.inflight.values() if t.state is TaskState.SENT and t.worker == key]
        requeued, out_of_retries = [], []
        for task in sorted(unfinished, key=lambda t: t.id, reverse=True):
            if task.direct:
                task.orphaned = lost  # its caller may still read its result: it decides (`door_ended`)
                continue
            if lost:
                task.lost_retries -= 1
                if task.lost_retries < 0:
                    out_of_retries.append(task)
                    continue
            self._requeue(task)
            requeued.append(task)
        return requeued, out_of_retries

    def place(self, task: Task, usable: Callable[[Lane], bool], prefer: Iterable[str] = ()) -> Optional[Lane]:
        """A lone task whose caller sends it to a worker's door itself (lucidity.directcall): added and put on
        an idle worker that `usable` accepts (one of `prefer` if it can; on its node if it is placed), as
        `dispatch` would put it. None, with nothing done, while other tasks wait (they come first), or if no
        such worker is idle."""
        if self._pending or self._pending_for:
            return None
        if task.node is not None:
            if task.node not in self._nodes:
                return None
            chosen_by = usable
            usable = lambda lane: lane.node == task.node and chosen_by(lane)  # noqa: E731
        if self.max_running and sum(1 for lane in self.lanes.values() if lane.inflight) >= self.max_running:
            return None
        chosen = None
        for key in prefer:
            lane = self.lanes.get(key)
            if lane is not None and lane.connected and not lane.inflight and not lane.busy and usable(lane):
                chosen = lane
                break
        if chosen is None:
            chosen = next((lane for lane in self.lanes.values()
                           if lane.connected and not lane.inflight and not lane.busy and usable(lane)), None)
            if chosen is None:
                return None
            self.lanes[chosen.key] = self.lanes.pop(chosen.key)  # round robin, as `dispatch`
        self.tasks[task.id] = task
        task.move(TaskState.SENT)
        task.worker, task.direct = chosen.key, True
        chosen.inflight[task.id] = task
        chosen.head_since, chosen.head_sent_idle = self._clock(), True
        return chosen

    def claim(self, task: Task, usable: Callable[[Lane], bool], prefer: Iterable[str] = ()) -> Optional[Lane]:
        """A task its caller now waits for (``Future.result``, ``AsyncResult.get`` just after submitting it):
        if it is the one task waiting to be sent, it leaves the queue and is placed as `place` places a new
        one. None, with nothing done, otherwise (dispatch sends it, or has)."""
        if (task.state is not TaskState.PENDING or task.node is not None or self._pending_for
                or len(self._pending) != 1 or self._pending[0] is not task):
            return None
        self._pending.popleft()
        del self.tasks[task.id]
        lane = self.place(task, usable, prefer)
        if lane is None:
            self.tasks[task.id] = task
            self._pending.appendleft(task)
        return lane

    def door_ended(self, task: Task) -> Optional[bool]:
        """The door's stream a task went by ended without its result: from now on the task is dispatch's,
        as if it had been sent the usual way. If its worker went away meanwhile, what `remove_worker` would
        have done is done now. Returns None (nothing more to do), True (queued again) or False (out of
        retries: the caller fails it with `NodeLost`)."""
        if task.is_final or not task.direct:
            return None
        task.direct = False
        if task.orphaned is None:
            return None  # its worker is still listed: its failure report, MISSING or exit will come
        if task.orphaned:
            task.lost_retries -= 1
            if task.lost_retries < 0:
                return False
        self._requeue(task)
        return True

    def load_of(self, node: str) -> int:
        """This client's tasks in flight on a node's workers."""
        return sum(len(lane.inflight) for lane in self.lanes.values() if lane.node == node)

    # -- dispatch -----------------------------------------------------------------------------------------

    def dispatch(self) -> list[tuple[Lane, list[Task]]]:
        """Hand waiting tasks to workers with credit: placed tasks to their node's workers, the rest to any.

        Each task moves to SENT and into its worker's window; the caller sends each batch (or gives it back
        with `unsend` if it cannot).
        """
        batches: list[tuple[Lane, list[Task]]] = []
        now = self._clock()
        for node in list(self._pending_for):
            queue = self._pending_for[node]
            if queue:
                self._dispatch_queue(queue, node, batches, now)
            if not queue:
                del self._pending_for[node]
        self._dispatch_queue(self._pending, None, batches, now)
        return batches

    def steal(self) -> list[tuple[Lane, list[int]]]:
        """Queued tasks to take back (WITHDRAW) from the workers holding most, while others have nothing to do
        and nothing waits to be sent: the end of a map, where a few workers would otherwise run the last
        tasks one after another. Half of a worker's queued tasks, the last sent, from as many workers as run
        dry (never the task a worker runs or the one it starts next); only a queue worth the round trip
        (`STEAL_WORTH`), and one request per worker at a time. What the
        worker still held comes back through `give_back` and goes to the idle workers first."""
        if len(self.tasks) < 3 or self._pending or self._pending_for or self.max_running:
            return []  # (fewer than 3 tasks: none is queued behind a worker's next one; the apply path)
        idle = sum(1 for lane in self.lanes.values() if lane.connected and not lane.inflight and not lane.busy)
        idle -= sum(1 for lane in self.lanes.values() if lane.withdrawing)  # already being served
        if idle <= 0:
            return []
        donors = []
        for lane in self.lanes.values():
            # Not the running task, nor the one after it: the worker starts that one before it reads a request.
            queued = len(lane.inflight) - 2
            typical = lane.typical_time if lane.typical_time > 0 else self.pace
            if queued > 0 and not lane.withdrawing and queued * typical >= max(STEAL_WORTH, 2 * lane.round_trip):
                donors.append((queued, lane))
        donors.sort(key=lambda donor: donor[0], reverse=True)
        taken = []
        for queued, lane in donors[:idle]:
            held = list(lane.inflight.values())
            ids = [task.id for task in held[len(held) - (queued + 1) // 2:]
                   if task.node is None]  # placed tasks stay on their node
            if ids:
                lane.withdrawing = True
                taken.append((lane, ids))
                self.withdrawals += 1
        return taken

    def unsend(self, lane: Lane, batch: list[Task]) -> None:
        """A batch could not be sent (its connection broke): back to the head of its queues, as if unsent."""
        for task in reversed(batch):
            lane.inflight.pop(task.id, None)
            if task.state is TaskState.SENT and task.worker == lane.key:
                self._requeue(task)

    # -- outcomes ------------------------------------------------------------------------------------------

    def take(self, lane: Lane, task_id: int, seconds: float) -> Optional[Task]:
        """A worker answered a task in `seconds`: the task, or None for a late duplicate of one that ended."""
        now = self._clock()
        # Not from a worker's first answer: that one also timed its cold start (loading the function,
        # importing its module, and, with many workers starting on few cores, waiting for one), which is
        # not the transport's and does not recur. Taken for the round trip, it held every window of a first
        # map open a task or two wider than needed, and a map's last tasks queued behind other last ones.
        if (lane.head_sent_idle and lane.mean_time > 0 and lane.inflight
                and next(iter(lane.inflight)) == task_id):
            sample = max(0.0, now - lane.head_since - seconds)
            lane.round_trip = sample if lane.round_trip <= 0 else 0.8 * lane.round_trip + 0.2 * sample
        task = lane.inflight.pop(task_id, None)
        lane.observe(seconds)
        self.pace = seconds if self.pace <= 0 else 0.8 * self.pace + 0.2 * seconds
        lane.busy = False
        lane.head_since, lane.head_sent_idle = now, False  # the worker went on to the next task it holds, if any
        if task is None or task.is_final:
            return None
        return task

    def give_back(self, lane: Lane, task_ids: Iterable[int], *, busy: bool = False) -> None:
        """The worker did not run these tasks: it lacked their function, or (``busy``) it gave them up while a
        long task held it, and gets no more until that task ends. They wait first in line for a worker, in the
        order given."""
        lane.busy = busy  # a MISSING says whether the worker is busy now; an empty one, that it is free again
        lane.withdrawing = False  # the answer to a WITHDRAW, if one was asked (another MISSING: asked again, harmless)
        for task_id in reversed(list(task_ids)):  # each goes to the head of its queue
            task = lane.inflight.pop(task_id, None)
            if task is not None and task.state is TaskState.SENT and task.worker == lane.key:
                self._requeue(task)

    def take_all(self, lane: Lane) -> list[Task]:
        """Every task in flight on a worker whose messages cannot be trusted to answer them (to fail them)."""
        tasks = list(lane.inflight.values())
        lane.inflight.clear()
        return tasks

    def failed(self, worker_key: str, task_id: int, *, crashed: bool, message: str) -> Optional[tuple[Task, bool]]:
        """A task's node reported it failed on a worker.

        Returns:
            None if the report is stale (the task ended, or was resent elsewhere); else the task, and whether
            it was queued again (a crash, with crash retries left) rather than to be failed by the caller.
        """
        lane = self.lanes.get(worker_key)
        task = (lane.inflight.pop(task_id, None) if lane is not None else None) or self.tasks.get(task_id)
        if task is None or task.worker != worker_key or task.is_final:
            return None
        if crashed:
            task.failures += (message,)
            if task.retries > 0:
                task.retries -= 1
                self._requeue(task)
                return task, True
        return task, False

    def finish(self, task: Task, succeeded: bool) -> bool:
        """The task ended; False if it already had (its outcome must not be delivered twice)."""
        if task.is_final:
            return False
        task.move(TaskState.DONE if succeeded else TaskState.FAILED)
        self._forget(task)
        return True

    # -- inside -------------------------------------------------------------------------------------------

    def _forget(self, task: Task) -> None:
        del self.tasks[task.id]
        if task.node is not None:
            self._placed[task.node] -= 1

    def _queue_of(self, task: Task) -> collections.deque[Task]:
        """The pending queue for a task: its node's, while that node is known, else the general one."""
        if task.node is not None and task.node in self._nodes:
            return self._pending_for[task.node]
        return self._pending

    def _requeue(self, task: Task) -> None:
        """A sent task that never ran goes back to the head of its queue."""
        task.move(TaskState.PENDING)
        task.worker = None
        task.direct, task.orphaned = False, None
        self._queue_of(task).appendleft(task)

    def _dispatch_queue(self, queue: collections.deque[Task], node: Optional[str],
                        batches: list[tuple[Lane, list[Task]]], now: float) -> None:
        """Hand out `queue` to the workers with credit, fewest of our tasks in flight first (round robin among
        equals), each no more than its fair share of what waits, so that two slow tasks go to two idle
        workers. One look at every worker per round: a map's results free a few workers at a time, and
        choosing each batch's worker by a look at all of them cost a 64-worker client 0.14 ms per dispatch."""
        pace = self.pace
        while queue:
            candidates = self._candidates(node, now, pace)
            if not candidates:
                return
            candidates.sort(key=_in_flight)  # stable: equals stay in round-robin order
            sharing = len(candidates)
            held_back = False  # some worker got its fair share and had credit left: another round may use it
            for credit, lane in candidates:
                share = -(-len(queue) // sharing)
                sharing -= 1
                if share < credit:
                    held_back = True
                if not lane.inflight:
                    lane.head_since, lane.head_sent_idle = now, True
                batch: list[Task] = []
                while queue and len(batch) < min(credit, share):
                    task = queue.popleft()
                    if task.state is not TaskState.PENDING:
                        continue  # cancelled while queued
                    task.move(TaskState.SENT)
                    task.worker = lane.key
                    lane.inflight[task.id] = task
                    batch.append(task)
                if not batch:
                    return
                self.lanes[lane.key] = self.lanes.pop(lane.key)  # round robin: ties go elsewhere next time
                batches.append((lane, batch))
            if not held_back:
                return

    def _candidates(self, node: Optional[str], now: float, pace: float) -> list[tuple[int, Lane]]:
        """The workers that can take work now, with their credit (on `node`, if given), in round-robin order."""
        lanes: Iterable[Lane] = self.lanes.values()
        if node is not None:
            lanes = [lane for lane in lanes if lane.node == node]
        candidates = []
        for lane in lanes:
            if lane.connected:
                credit = lane.credit(pace)
                if credit > 0 and not lane.overdue(now, pace):
                    candidates.append((credit, lane))
        if self.max_running:
            # At most max_running workers hold our tasks: the busy ones, and idle ones up to the cap.
            free = self.max_running - sum(1 for lane in self.lanes.values() if lane.inflight)
            idle = [candidate for candidate in candidates if not candidate[1].inflight]
            candidates = [candidate for candidate in candidates if candidate[1].inflight] + idle[:max(0, free)]
        return candidates


def _in_flight(candidate: tuple[int, Lane]) -> int:
    return len(candidate[1].inflight)
