"""``python -m benchmarks.reports``: what output forwarding and progress bars cost (issue 14, items 1 and 2).

Two CLI clusters of 1 node x 2 workers run side by side (idle workers use no CPU): one whose node forwards
task output (the default), one started with ``--no-forward-output``. In each round, a fresh client process
per configuration runs, in a rotated order:

- ``apply``: `--applies` sequential ``pool.apply(noop)`` round trips (p50 of each round, in ms);
- ``map``: `--repeats` times ``pool.map(square, range(--items))`` with the default chunking (the median, s);
- ``map-chunk1``: ``pool.map(square, range(--chunk1-items), chunksize=1)``: one task per item (seconds).

Each also gives the CPU time the client process and the workers spent per apply, item or task: on a
machine shared with other work, wall times move with the load, and CPU time much less.

Four configurations: "off" (forwarding off at the node and the pool, no bar), "forwarding" (on at both),
"bar" (every map with ``progress=`` a tqdm bar drawn to /dev/null, tqdm's own cost included) and "both".
The tasks print nothing: what is measured is what the machinery costs a task that does not use it. Each
cell is the median over rounds, and the ratio to "off" follows it. Options: ``--rounds``, ``--applies``,
``--items``, ``--chunk1-items``, ``--quick``.

``--hooks`` instead times, in this process, what the machinery adds to one task where it runs: the
worker's calls per task (`lucidity.node.output.Reports`: task_started, items, task_ended) and per batch of
results (flush), with forwarding on and off, and the caller's per task of a map with a bar (a
`lucidity.progressbar.Tracker` with a tqdm bar to /dev/null, or a callable). These are the costs the
end-to-end table cannot resolve on a busy machine of two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.cli_cluster import CliCluster

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Seconds one client run may take.
RUN_TIMEOUT = 600.0

CLIENT = r"""
import functools, json, os, statistics, sys, time
import psutil
import lucidity
from lucidity.status import query_status
from tqdm import tqdm
from benchmarks.tasks import noop, square

address, forward, with_bar = sys.argv[1], sys.argv[2] == "on", sys.argv[3] == "bar"
applies, items, chunk1_items, repeats = map(int, sys.argv[4:8])
bar = functools.partial(tqdm, file=open(os.devnull, "w")) if with_bar else None
workers = [psutil.Process(w["pid"]) for node in query_status(address)["nodes"] for w in node["workers"]]

def cpu():
    # (this process, the workers) in CPU seconds: less sensitive than wall time to load from elsewhere.
    own = os.times()
    return own.user + own.system, sum(sum(w.cpu_times()[:2]) for w in workers)

def measure(name, count, run, times):
    cpu_before = cpu()
    walls = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
    cpu_after = cpu()
    out[name] = statistics.median(walls) * (1000 if name == "apply" else 1)  # ms for a round trip
    out[name + " client cpu"] = (cpu_after[0] - cpu_before[0]) / (count * times) * 1e6
    out[name + " worker cpu"] = (cpu_after[1] - cpu_before[1]) / (count * times) * 1e6

out = {}
with lucidity.Pool(address=address, forward_output=forward) as pool:
    pool.map(square, range(1000))  # warm: functions shipped, windows sized
    for _ in range(200):
        pool.apply(noop)
    measure("apply", 1, lambda: pool.apply(noop), applies)
    measure("map", items, lambda: pool.map(square, range(items), progress=bar), repeats)
    measure("map-chunk1", chunk1_items, lambda: pool.map(square, range(chunk1_items), chunksize=1, progress=bar), 1)
print(json.dumps(out))
"""


class _Cluster(CliCluster):
    """A `benchmarks.cli_cluster.CliCluster` whose nodes get extra options."""

    def __init__(self, node_options: list[str]) -> None:
        super().__init__(1, 2, REPOSITORY)
        self._node_options = node_options

    def start(self) -> None:
        try:
            self._control = self._start("control", "--bind", self.address)
            self._nodes.append(self._start("node", self.address, "--processes", str(self.processes), "--name", "n1",
                                           *self._node_options))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise


#: (forwarding, bar) of each configuration.
CONFIGURATIONS = {"off": ("off", "none"), "forwarding": ("on", "none"), "bar": ("off", "bar"), "both": ("on", "bar")}


def run_client(address: str, forward: str, bar: str, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    env.pop("LUCIDITY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", CLIENT, address, forward, bar, str(args.applies), str(args.items),
                           str(args.chunk1_items), str(args.repeats)], capture_output=True, text=True, env=env,
                          timeout=RUN_TIMEOUT)
    if done.returncode:
        raise RuntimeError(f"the client (forwarding {forward}, {bar}) failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def time_hooks(count: int) -> None:
    """Print the per-task cost of the worker's and the caller's hooks, in µs of this thread's CPU time (the best
    of 5 runs)."""
    import functools
    import threading

    import zmq

    from tqdm import tqdm

    from lucidity.node.output import Reports
    from lucidity.progressbar import Tracker
    from lucidity.reports import Reports as ClientReports

    def best(run: Any) -> float:
        times = []
        for _ in range(5):
            started = time.thread_time()  # this thread's CPU: the machine's load from elsewhere stays out
            run()
            times.append(time.thread_time() - started)
        return min(times) / count * 1e6

    lock = threading.RLock()
    rows = []
    saved = os.dup(1), os.dup(2)  # forwarding points this process's fds 1 and 2 at pipes: put them back after
    for capture in (False, True):
        reports = Reports(lock, lambda identity, frames: None, capture)
        lock.acquire()
        one_item = (1,)

        def tasks() -> None:
            for task_id in range(count):
                reports.task_started(b"client", task_id)
                for _ in reports.items(one_item):
                    pass
                reports.task_ended()

        def flushes() -> None:
            for _ in range(count):
                reports.flush()

        context = zmq.Context()
        receiver, sender = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        receiver.bind(f"inproc://hooks-{capture}")
        sender.connect(f"inproc://hooks-{capture}")

        def waits() -> None:
            # What the worker does to wait for each message when idle: wait_for_work, then the recv it had.
            for _ in range(count // 10):
                sender.send(b"task")
                reports.wait_for_work(receiver)
                receiver.recv()

        label = "on" if capture else "off"
        rows.append(f"| worker, forwarding {label} | task (start, items, end) | {best(tasks):.2f} |")
        rows.append(f"| worker, forwarding {label} | batch of results (flush) | {best(flushes):.2f} |")
        rows.append(f"| worker, forwarding {label} | wait for work + recv (per message) | {best(waits) * 10:.2f} |")
        lock.release()
        receiver.close(linger=0)
        sender.close(linger=0)
        context.term()
    sys.stdout.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    print("| where | per | µs |")
    print("|---|---|---|")
    print("\n".join(rows))

    class Client:
        reports = ClientReports()

    class Task:
        id = 0

    for name, option in (("tqdm bar", functools.partial(tqdm, file=open(os.devnull, "w"))),
                         ("callable", lambda done, total: None)):
        def tracked() -> None:
            tracker = Tracker(option, count, "map(f)")
            for _ in range(count):
                one = tracker.track(Client(), 1, lambda succeeded, value: None)  # type: ignore[arg-type]
                one.attach(Task())  # type: ignore[arg-type]
                one.on_done(True, None)

        print(f"| caller, progress={name} | task of a map | {best(tracked):.2f} |")


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reports", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--applies", type=int, default=2000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk1-items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=10, help="maps of --items per client (their median counts)")
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes: a smoke test")
    parser.add_argument("--hooks", action="store_true", help="time the per-task hooks in this process instead")
    args = parser.parse_args(argv)
    if args.hooks:
        time_hooks(1000 if args.quick else 100_000)
        return 0
    if args.quick:
        args.rounds, args.applies, args.items, args.chunk1_items, args.repeats = 1, 50, 1000, 100, 1
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in CONFIGURATIONS}
    with _Cluster([]) as forwarding, _Cluster(["--no-forward-output"]) as quiet:
        forwarding.start()
        quiet.start()
        clusters = {"on": forwarding, "off": quiet}
        started = time.monotonic()
        names = list(CONFIGURATIONS)
        for round_number in range(args.rounds):
            for name in names[round_number % len(names):] + names[:round_number % len(names)]:  # rotated
                forward, bar = CONFIGURATIONS[name]
                for metric, value in run_client(clusters[forward].address, forward, bar, args).items():
                    samples[name].setdefault(metric, []).append(value)
    units = {"apply": "apply round trip p50 (ms)",
             "apply client cpu": "· client CPU per apply (µs)", "apply worker cpu": "· workers' CPU per apply (µs)",
             "map": f"map of {args.items:,} tiny tasks, default chunks (s)",
             "map client cpu": "· client CPU per item (µs)", "map worker cpu": "· workers' CPU per item (µs)",
             "map-chunk1": f"map of {args.chunk1_items:,} tiny tasks, chunksize=1 (s)",
             "map-chunk1 client cpu": "· client CPU per task (µs)",
             "map-chunk1 worker cpu": "· workers' CPU per task (µs)"}
    print(f"{args.rounds} rounds, {time.monotonic() - started:.0f} s; each cell the median, [min-max] of rounds\n")
    print("| workload | " + " | ".join(CONFIGURATIONS) + " |")
    print("|---" * (len(CONFIGURATIONS) + 1) + "|")
    for metric, label in units.items():
        base = statistics.median(samples["off"][metric])
        cells = []
        for name in CONFIGURATIONS:
            values = samples[name][metric]
            median = statistics.median(values)
            cells.append(f"{median:.4g} [{min(values):.4g}-{max(values):.4g}]"
                         + ("" if name == "off" or not base else f" ({median / base:.2f}×)"))
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
