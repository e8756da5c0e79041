"""``python -m benchmarks.metas``: what writing and reading a TASKS or a RESULTS costs, alone (issue 13).

Each operation is what one side does with one message, through the public API only (so that the same
script measures a checkout from before the binary meta of protocol version 7):

- ``write-tasks-N``: `protocol.pack_items` of N calls, a `Tasks` of N specs, `messages.encode` (the client);
- ``read-tasks-N``: `protocol.decode`, `Tasks.from_meta`, `Tasks.split` of such a message as received from a
  socket, zmq.Frame objects (the worker);
- ``write-results-N`` and ``read-results-N``: the same for RESULTS (the worker, the client);

for N = 1 (an apply) and 100 (a batch of a map). Without options it prints the best of 7 repeats in
microseconds per operation. The machine's load moves those; what it does not move is the number of
instructions, which callgrind counts. ``--repeat OP N`` runs one operation N times and prints nothing, for::

    valgrind --tool=callgrind python -m benchmarks.metas --repeat read-tasks-1 200
    valgrind --tool=callgrind python -m benchmarks.metas --repeat read-tasks-1 2200

whose difference of totals divided by 2000 is the operation's instructions (the start-up cancels out).
"""

from __future__ import annotations

import argparse
import timeit
import uuid
from typing import Any, Callable

#: The operations, by name: (side, kind, count).
OPERATIONS = {f"{side}-{kind}-{count}": (side, kind, count) for side in ("write", "read")
              for kind in ("tasks", "results") for count in (1, 100)}
DIGEST = "0123456789abcdef01234567"  # as serialization.digest writes one


def _received(frames: list[Any]) -> list[Any]:
    """The frames as a peer receives them: zmq.Frame objects, through a PAIR of inproc sockets."""
    import zmq

    context = zmq.Context.instance()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    address = f"inproc://benchmarks-metas-{uuid.uuid4().hex}"  # a socket closed may hold its name a while
    sender.bind(address)
    receiver.connect(address)
    sender.send_multipart(frames)
    received = receiver.recv_multipart(copy=False)
    sender.close(0)
    receiver.close(0)
    return received


def operation(name: str) -> Callable[[], None]:
    """The named operation, ready to run (its inputs made once)."""
    from lucidity import messages, protocol, serialization
    from lucidity.messages import ResultEntry, Results, ResultStatus, TaskMode, Tasks, TaskSpec

    side, kind, count = OPERATIONS[name]
    client = uuid.uuid4().hex
    call = serialization.dumps(((), {}))
    value = serialization.dumps(None)

    def make() -> tuple[Any, list[Any]]:
        if kind == "tasks":
            layout, frames = protocol.pack_items([call] * count)
            return Tasks(client, (), tuple(TaskSpec(i, DIGEST, TaskMode.CALL) for i in range(count)),
                         tuple(layout)), frames
        layout, frames = protocol.pack_items([value] * count)
        return Results(tuple(ResultEntry(i, ResultStatus.OK, 0.000012) for i in range(count)), tuple(layout)), frames

    if side == "write":
        def write() -> None:
            body, frames = make()
            messages.encode(body, frames, sliced=False)
        return write
    body, frames = make()
    wire = _received(messages.encode(body, frames, sliced=False))
    accept = frozenset({body.KIND})
    from_meta = type(body).from_meta

    def read() -> None:
        message = protocol.decode(wire, accept)
        from_meta(message.meta).split(message.payload)
    return read


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metas", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", nargs=2, metavar=("OP", "N"), help="run OP N times, for callgrind")
    args = parser.parse_args(argv)
    if args.repeat:
        run = operation(args.repeat[0])
        for _ in range(int(args.repeat[1])):
            run()
        return 0
    for name in OPERATIONS:
        run = operation(name)
        number = 20_000 if name.endswith("-1") else 500
        best = min(timeit.repeat(run, number=number, repeat=7)) / number
        print(f"{name:18s} {best * 1e6:8.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
