"""A client's end of what workers report about its tasks besides results: their output and their progress.

Workers send OUTPUT (what tasks wrote to stdout and stderr) and PROGRESS (how far a running task has come)
to the client whose task was running (`lucidity.node.output` says when). The client's I/O thread hands
both here (`Reports.deliver`)::

    worker --OUTPUT--> client I/O thread --deliver--> caller's stderr, each line "(pid=4121, node=n1) ..."
    worker --PROGRESS--> client I/O thread --deliver--> the hook a face watches the task with (a bar)

Output goes to the caller's stderr, as ray prints its workers' lines, whatever stream the task wrote to:
the caller's stdout stays the caller's own (a program piping its results on is not mixed with its
tasks' chatter). Lines keep their order per worker, so per task. While a tqdm bar is showing, lines go
through ``tqdm.write`` so that the bar is redrawn below them. A client inside a worker (a task that
submits tasks) hands its lines to that worker instead, which sends them on to its own task's client.

Not here: the bar (`lucidity.progress`), the capture on the worker (`lucidity.node.output`), the sockets
(`lucidity.client`).
"""

from __future__ import annotations

import collections
import sys
import threading
from typing import Callable

from . import messages, protocol
from .errors import ProtocolError

__all__ = ["Reports", "KINDS"]

#: The worker messages delivered here.
KINDS = frozenset({protocol.Kind.OUTPUT, protocol.Kind.PROGRESS})
#: Tasks whose late output is still recognized as silenced after they ended (jobs with forward_output=False).
SILENCED_MEMORY = 4096
#: Tasks whose last progress report is kept for a watcher that comes later (`Reports.watch`).
UNWATCHED_MEMORY = 4096

ProgressHook = Callable[[messages.Progress], None]


class Reports:
    """Where one client's task output and progress reports go.

    Attributes:
        forward_output: print what tasks write at this caller (the face's ``forward_output``); False drops
            it here (the nodes' logs keep it).
    """

    def __init__(self) -> None:
        self.forward_output = True
        self._lock = threading.Lock()
        self._watched: dict[int, ProgressHook] = {}
        # The last report of each task not watched when it came, for `lucidity.progress` called after the task
        # started: dropped, it left a bar at 0 until the task's next report, if any.
        self._unwatched: collections.OrderedDict[int, messages.Progress] = collections.OrderedDict()
        self._progress_lock = threading.Lock()  # a report and a new watcher of its task, in one order
        self._silenced: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._partial: dict[tuple[str, int], bytes] = {}  # a worker's unfinished last line, by (node, pid)

    # -- the faces (any thread) ------------------------------------------------------------------------

    def watch(self, task_id: int, hook: ProgressHook) -> None:
        """Call `hook` with each PROGRESS of the task, until `unwatch`: the last one that came before, if any,
        now (on this thread), the next ones on the client's I/O thread, never two at once nor out of order."""
        with self._progress_lock:
            self._watched[task_id] = hook
            earlier = self._unwatched.pop(task_id, None)
            if earlier is not None:
                hook(earlier)

    def unwatch(self, task_id: int) -> None:
        self._watched.pop(task_id, None)

    def silence(self, task_id: int) -> None:
        """Drop the output of this task (a job made with ``forward_output=False``), also what arrives late."""
        with self._lock:
            self._silenced[task_id] = None
            while len(self._silenced) > SILENCED_MEMORY:
                self._silenced.popitem(last=False)

    # -- the I/O thread --------------------------------------------------------------------------------

    def deliver(self, node: str, pid: int, message: protocol.Message) -> None:
        """An OUTPUT or PROGRESS from worker `pid` on `node` (checked here; `ProtocolError` if malformed)."""
        body = messages.parse(message)
        if isinstance(body, messages.Progress):
            with self._progress_lock:
                hook = self._watched.get(body.task)
                if hook is not None:
                    hook(body)
                    return
                self._unwatched[body.task] = body
                self._unwatched.move_to_end(body.task)
                if len(self._unwatched) > UNWATCHED_MEMORY:
                    self._unwatched.popitem(last=False)
            return
        if not isinstance(body, messages.Output) or len(message.payload) != 1:
            raise ProtocolError(f"OUTPUT from worker {pid} on node {node} carries "
                                         f"{len(message.payload)} payload frames, not 1")
        with self._lock:
            silenced = not self.forward_output or body.task in self._silenced
        key = (node, pid)
        frame = message.payload[0]
        data = self._partial.pop(key, b"") + (frame.bytes if hasattr(frame, "bytes") else bytes(frame))
        if silenced:
            return
        *lines, rest = data.split(b"\n")
        if rest and body.end:
            lines.append(rest)
        elif rest:
            self._partial[key] = rest
        if lines:
            prefix = f"(pid={pid}, node={node}) "
            self._write("".join(f"{prefix}{line.decode(errors='replace').rstrip(chr(13))}\n" for line in lines))

    def _write(self, text: str) -> None:
        from .node import output

        if output.forward_nested(text.encode(errors="replace")):
            return  # this client runs in a worker: the worker sends the lines on to its own task's client
        stream = sys.stderr
        if stream is None:
            return
        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
            tqdm_module.tqdm.write(text, file=stream, end="")  # the bar is redrawn below the lines
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # the caller closed its stderr: nowhere to show them
