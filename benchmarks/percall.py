"""``python -m benchmarks.percall``: CPU time per task in the caller and in the worker (issue 13, item 2).

On a machine of two cores, the CPU a round trip costs each side is its latency, and the worker's share is
the part a worker can cut on its own. Each peer runs in a fresh process with one worker (``Pool(1)``:
the embedded lucidity cluster, or multiprocessing's fork pool), warms up, then measures:

- ``apply``: `--applies` sequential ``pool.apply(noop)`` round trips;
- ``map-chunk1``: ``pool.map(square, range(--tasks), chunksize=1)``, one task per item.

For each, the CPU time (user + system, from psutil) the calling process and the worker process spent,
divided by the number of tasks, in microseconds, and the wall time per task. The calling process's time
includes its own I/O thread (lucidity) or result and task handler threads (multiprocessing); the embedded
node daemon is idle while tasks run (it is off the task path) and is not counted. Each cell is the median
over `--rounds` rounds, the peers in a rotated order; the load average is printed at the end, since the
machine may be shared.

Options: ``--rounds`` (3), ``--applies`` (5000), ``--tasks`` (5000), ``--peers lucidity,mp-fork``,
``--quick`` (one round of 500: a smoke test).

``--in-process N`` measures the worker's loop alone, with no cluster and no other process: a real
`lucidity.node.worker.Worker` runs in a thread of this process, on its own ZeroMQ context and an ipc socket,
and this thread sends it N no-op applies (one TASKS message each, as a client sends them) and waits for each
RESULTS. It prints the CPU time of the worker's thread per apply (from /proc, in microseconds). Under
callgrind it gives instructions per apply, which the load of a shared machine does not move::

    valgrind --tool=callgrind --separate-threads=yes python -m benchmarks.percall --in-process 100
    valgrind --tool=callgrind --separate-threads=yes python -m benchmarks.percall --in-process 600

and the difference of the worker thread's totals (the largest per-thread file) divided by 500.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("lucidity", "mp-fork")
#: Seconds one peer's run may take.
RUN_TIMEOUT = 600.0


def _measure(pool: Any, applies: int, tasks: int) -> dict[str, float]:
    import psutil

    from benchmarks.tasks import noop, square

    worker = psutil.Process(pool.apply(os.getpid))
    caller = psutil.Process()
    pool.map(square, range(1000))  # warm: functions shipped, windows sized
    for _ in range(300):
        pool.apply(noop)

    def cpu(process: Any) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def measure(name: str, count: int, run: Callable[[], Any]) -> None:
        before = cpu(caller), cpu(worker), time.perf_counter()
        run()
        after = cpu(caller), cpu(worker), time.perf_counter()
        out[f"{name} caller cpu us"] = (after[0] - before[0]) / count * 1e6
        out[f"{name} worker cpu us"] = (after[1] - before[1]) / count * 1e6
        out[f"{name} wall us"] = (after[2] - before[2]) / count * 1e6

    out: dict[str, float] = {}

    def apply_loop() -> None:
        for _ in range(applies):
            pool.apply(noop)

    measure("apply", applies, apply_loop)
    measure("map-chunk1", tasks, lambda: pool.map(square, range(tasks), chunksize=1))
    return out


def run_peer(peer: str, applies: int, tasks: int) -> dict[str, float]:
    """Run in a fresh process (``--child PEER``): one pool of one worker, measured."""
    if peer == "lucidity":
        import lucidity

        with lucidity.Pool(1) as pool:
            return _measure(pool, applies, tasks)
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as mp_pool:
        return _measure(mp_pool, applies, tasks)


def run_in_process(applies: int) -> None:
    """Drive a Worker in a thread of this process (see the module docstring, ``--in-process``)."""
    import tempfile
    import threading
    import uuid

    import zmq

    os.environ.setdefault("LUCIDITY_FORWARD_OUTPUT", "0")  # as an embedded cluster's workers
    from benchmarks.tasks import noop
    from lucidity import messages, protocol, serialization, transport
    from lucidity.node.slots import SlotTable
    from lucidity.node.worker import Worker

    with tempfile.TemporaryDirectory() as directory:
        slots = SlotTable(os.path.join(directory, "slots"), 1, create=True)
        sock = transport.new_socket(transport.new_context(), zmq.ROUTER)
        address = transport.bind(sock, f"ipc://{directory}/worker")
        worker = Worker(sock, slots, 0)
        loop = threading.Thread(target=worker.run, name="worker-loop", daemon=True)
        loop.start()
        client = zmq.Context().socket(zmq.DEALER)
        client.connect(address)
        function = serialization.dumps_function(noop)
        digest = serialization.digest(function)
        layout, frames = protocol.pack_items([serialization.dumps(((), {}))])
        session = uuid.uuid4().hex

        def tasks(first: bool) -> list[Any]:
            spec = messages.TaskSpec(1, digest, messages.TaskMode.CALL)
            body = messages.Tasks(session, (digest,) if first else (), (spec,), tuple(layout),
                                  main=messages.MainEntry((), "") if first else None)
            return messages.encode(body, ([function] if first else []) + frames, sliced=False)

        client.send_multipart(tasks(True))  # the function and the main entry, once
        client.recv_multipart()
        message = tasks(False)
        stat = f"/proc/self/task/{loop.native_id}/schedstat"

        def worker_ns() -> int:
            with open(stat) as file:
                return int(file.read().split()[0])

        before = worker_ns()
        for _ in range(applies):
            client.send_multipart(message)
            reply = client.recv_multipart()
        spent = worker_ns() - before
        if bytes(reply[0])[1] != protocol.Kind.RESULTS:
            raise SystemExit(f"the worker answered {reply[:2]}, not RESULTS")
        print(f"worker thread CPU per apply: {spent / applies / 1000:.1f} us ({applies} applies)")
        os._exit(0)  # the worker's thread and sockets go with the process


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.percall", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--applies", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--in-process", type=int, metavar="N", help="the worker's loop alone, N applies")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        run_in_process(args.in_process)
        return 0
    if args.quick:
        args.rounds, args.applies, args.tasks = 1, 500, 500
    if args.child:
        print(json.dumps(run_peer(args.child, args.applies, args.tasks)))
        return 0
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    env.pop("LUCIDITY_ADDRESS", None)
    samples: dict[str, list[dict[str, float]]] = {peer: [] for peer in peers}
    for round_index in range(args.rounds):
        order = peers[round_index % len(peers):] + peers[:round_index % len(peers)]
        for peer in order:
            command = [sys.executable, "-m", "benchmarks.percall", "--child", peer, "--applies", str(args.applies),
                       "--tasks", str(args.tasks)]
            done = subprocess.run(command, cwd=REPOSITORY, env=env, stdout=subprocess.PIPE, text=True,
                                  timeout=RUN_TIMEOUT, check=True)
            samples[peer].append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = list(samples[peers[0]][0])
    print(f"{'median of ' + str(args.rounds) + ' rounds':<28}" + "".join(f"{peer:>14}" for peer in peers))
    for key in keys:
        cells = "".join(f"{statistics.median(s[key] for s in samples[peer]):>14.1f}" for peer in peers)
        print(f"{key:<28}{cells}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
