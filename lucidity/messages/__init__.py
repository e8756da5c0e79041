"""Every message body: one immutable record per kind and per nested entry, read and checked in one place.

`lucidity.protocol` owns the envelope (version, kind, frames, the limits of a meta frame) and hands its
receiver a `protocol.Message` whose meta is plain JSON, or for TASKS and RESULTS binary (`batches`). This
package owns what the meta says. Each body class has ``to_meta()``, what it travels as (a JSON object; the
binary meta's bytes), and ``from_meta(meta)``, which checks it completely (types, required fields, ids and
sizes within 64 bits, client ids of 32 hex digits, finite non-negative seconds, enum values; for a binary
meta, also that its parts add up to its length) and raises `ProtocolError` naming the field, before the
receiver changes any state::

    sender:   messages.encode(Tasks(...), payload)  =  protocol.encode(Kind.TASKS, body.to_meta(), payload)
    receiver: messages.parse(protocol.decode(frames, accepted))  ->  a Tasks, checked

Receivers that answer a bad body (a worker REFUSED a batch; a client fails the tasks of a worker whose
RESULTS it cannot read) call the kind's ``from_meta`` themselves and catch its `ProtocolError`.

A JSON meta is what lucidity sent before these classes existed, key for key and in the same order (the enums
are str-valued, and json writes them as their strings), so peers of one release agree byte for byte. A
field an earlier reader did without (a node's ``host``, a MODULE's ``reason``) may still be absent; one of
the wrong type is refused.

A batch's payload layout (`protocol.pack_items`, each entry's ``"n"``) travels inside the task and result
entries but is kept apart here (`Tasks.layout`, `Results.layout`): it describes frames, not work, and a
task sent again has the same `TaskSpec` and a new layout.

Modules: `membership` (the cluster's own messages), `status` (status replies), `work` (the task path's
records), `batches` (TASKS and RESULTS, binary), `alongside` (the task path's smaller messages), `fields`
(the checks of single fields), `record` (the base class of the bodies: immutable, compared by value).
Deliberately not here: framing (`lucidity.protocol`), and what a message means to its receiver (addresses
are parsed by `lucidity.addresses`; failure reports become exceptions in `lucidity.links`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union

from .. import protocol
from ..protocol import Kind
from .membership import (Abandon, Bye, Drop, FailureReason, FailureReport, Heartbeat, Hello, Leave, NodeBeat, NodeEntry,
                         Nodes, Status, Watch, Welcome, WorkerEntry, Workers)
from .status import ControlStatus, NodeStatus, RecentFailure, WorkerStatus, status_reply
from .alongside import Cancel, Fetch, Missing, Refused, Withdraw
from .work import MainEntry, Module, Output, Progress, ResultEntry, ResultStatus, TaskMode, TaskSpec
from .batches import Results, Tasks, TasksPayload

__all__ = ["TaskMode", "ResultStatus", "FailureReason", "NodeEntry", "Welcome", "Heartbeat", "Leave", "Watch",
           "Nodes", "Hello", "WorkerEntry", "Workers", "FailureReport", "Abandon", "Bye", "Status", "WorkerStatus",
           "NodeStatus", "RecentFailure", "ControlStatus", "MainEntry", "Module", "TaskSpec", "Tasks", "TasksPayload",
           "ResultEntry", "Results", "Cancel", "Missing", "Fetch", "Drop", "Refused", "Output", "Progress", "Withdraw",
           "Body", "BODIES", "parse", "encode", "NodeBeat", "status_reply"]

Body = Union[NodeEntry, NodeBeat, Welcome, Heartbeat, Leave, Watch, Nodes, Hello, Workers, FailureReport, Abandon,
             Bye, Status, NodeStatus, ControlStatus, Tasks, Results, Cancel, Missing, Fetch, Module, Drop, Refused, Output,
             Progress, Withdraw]

#: How each kind's body is read.
BODIES: dict[Kind, Callable[[Any], Body]] = {
    Kind.JOIN: NodeEntry.from_meta,
    Kind.WELCOME: Welcome.from_meta,
    Kind.HEARTBEAT: Heartbeat.from_meta,
    Kind.LEAVE: Leave.from_meta,
    Kind.BEAT: NodeBeat.from_meta,
    Kind.WATCH: Watch.from_meta,
    Kind.NODES: Nodes.from_meta,
    Kind.HELLO: Hello.from_meta,
    Kind.WORKERS: Workers.from_meta,
    Kind.TASK_FAILED: FailureReport.from_meta,
    Kind.ABANDON: Abandon.from_meta,
    Kind.BYE: Bye.from_meta,
    Kind.STATUS: Status.from_meta,
    Kind.STATUS_REPLY: status_reply,
    Kind.TASKS: Tasks.from_meta,
    Kind.RESULTS: Results.from_meta,
    Kind.CANCEL: Cancel.from_meta,
    Kind.MISSING: Missing.from_meta,
    Kind.FETCH: Fetch.from_meta,
    Kind.MODULE: Module.from_meta,
    Kind.DROP: Drop.from_meta,
    Kind.REFUSED: Refused.from_meta,
    Kind.OUTPUT: Output.from_meta,
    Kind.PROGRESS: Progress.from_meta,
    Kind.WITHDRAW: Withdraw.from_meta,
}


def parse(message: protocol.Message) -> Body:
    """The checked body of a decoded message; `ProtocolError` naming the field that is wrong."""
    return BODIES[message.kind](message.meta)


def encode(body: Body, payload: Iterable[Any] = (), *, sliced: bool = True) -> list[Any]:
    """The frames of a message with this body (see `protocol.encode` for the payload and `sliced`)."""
    return protocol.encode(body.KIND, body.to_meta(), payload, sliced=sliced)
