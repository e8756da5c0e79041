"""``python -m benchmarks.scaling``: what more node daemons cost when idle, and what they do to throughput.

Two measurements, on clusters started from the CLI as an operator would (`benchmarks.cli_cluster`), on
127.0.0.1 only, with ports outside the ephemeral range:

**idle**: ``python -m lucidity control --bind tcp://127.0.0.1:PORT`` and 16 ``python -m lucidity node
tcp://127.0.0.1:PORT --processes 1 --name nK``, waited for with `lucidity.status.query_status`. After a
few seconds to settle, the CPU time (psutil ``cpu_times()``, user + system, all threads) of the control
daemon, of each node daemon and of each worker is read at the start and the end of a window of idleness
(``--windows`` windows of ``--idle-seconds``), and reported as a percentage of one core: CPU seconds ÷ wall
seconds × 100. Then a client connects, ``lucidity.Pool(16, address=...)`` in a process of its own, runs a
few tasks on every worker and sits idle, and the same windows are measured again, with the client
process's own CPU: what its heartbeats (a WATCH to the control daemon and a HEARTBEAT to every node, each
second) cost everyone.

**throughput**: clusters of 1 node × 2 workers and 4 nodes × 2 workers; since that also quadruples the
workers, and 8 workers oversubscribe a 2-core machine, also the same workers on 1 node and on 4: 1 node ×
4 workers against 4 nodes × 1 worker, and 1 node × 8 workers against 4 nodes × 2 workers. On each:
``map(square, range(20000), chunksize=1)``, the same map with Pool's default chunking, and 2,000
``apply(noop)`` round trips, one at a time, with the CPU time the client process, the workers and the node
daemons spent over them, per apply (node daemons are not on the task path: theirs should be 0). One
cluster runs at a time: in each round every shape gets a fresh cluster and a fresh
``lucidity.Pool(W, address=...)`` (W = all its workers) in this process, warmed up until every worker has
run tasks; the shapes' order rotates from round to round, so that load from elsewhere on the machine
spreads over them. Cells are medians over ``--rounds`` rounds.

CPU times come from /proc in clock ticks of 10 ms: 0.1% of a core over a 10 s window, 5 µs per apply
over 2,000 applies.

Every process started here is stopped on every way out (an error, Ctrl-C, SIGTERM): SIGTERM, a bounded
wait, then SIGKILL of its process group; node workers still alive after their daemon stopped are killed.

Options: ``--quick`` (a smoke test: one short window, one round, small sizes), ``--only idle,throughput``,
``--nodes``, ``--idle-seconds``, ``--windows``, ``--rounds``, ``--map-items``, ``--applies``,
``--markdown FILE`` (machine, tables and targets as markdown). Results are in docs/performance.md,
"Scaling with nodes".
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import psutil

from . import report, tasks
from .cli_cluster import STOP_GRACE, CliCluster

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds a freshly started cluster (or a newly connected client) sits before the first idle window.
SETTLE = 3.0
#: Seconds a client may take to connect and warm up, and any single map or apply may take.
TASK_TIMEOUT = 120.0
#: No-op applies after every worker has run a task, before anything is timed.
WARMUP_APPLIES = 50
#: Idle-CPU target for the control daemon, in percent of one core (from the issue).
CONTROL_TARGET = 2.0
#: Throughput with 4 nodes ÷ with 1 node must be at least this (from the issue).
RATIO_TARGET = 1.0


def free_port() -> int:
    """A free port outside the ephemeral range, so that no daemon's bind to port 0 can take it meanwhile."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        low, high = (int(p) for p in ports.read().split())
    rng = random.Random()
    while True:
        port = rng.randrange(10000, low) if low > 11000 else rng.randrange(high + 1, 65535)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Cluster(CliCluster):
    """A `CliCluster` on a port outside the ephemeral range, which also kills node workers left behind."""

    def __init__(self, nodes: int, processes: int) -> None:
        super().__init__(nodes, processes, REPOSITORY)
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.started = 0.0
        self.ready_after = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        super().start()
        self.ready_after = time.monotonic() - self.started

    def __enter__(self) -> "Cluster":
        return self

    def control(self) -> psutil.Process:
        if self._control is None:
            raise RuntimeError("the cluster is not running")
        return psutil.Process(self._control.pid)

    def node_daemons(self) -> list[psutil.Process]:
        return [psutil.Process(pid) for pid in self.node_pids]

    def workers(self) -> list[psutil.Process]:
        """The worker processes of every node (children of the node daemons started as workers)."""
        return [child for node in self.node_daemons() for child in node.children()
                if "lucidity.node.worker" in " ".join(_cmdline(child))]

    def stop(self) -> None:
        """`CliCluster.stop`, then SIGKILL for any descendant of a daemon still alive after the grace period."""
        descendants: list[psutil.Process] = []
        for pid in ([self._control.pid] if self._control is not None else []) + self.node_pids:
            try:
                descendants += psutil.Process(pid).children(recursive=True)
            except psutil.Error:
                pass
        super().stop()
        _, alive = psutil.wait_procs(descendants, timeout=STOP_GRACE)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return list(proc.cmdline())
    except psutil.Error:
        return []


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    env.pop("LUCIDITY_ADDRESS", None)
    return env


def warm_up(pool: Any, workers: int) -> None:
    """Run tasks until every one of the `workers` workers has run some (connections made), then some applies."""
    deadline = time.monotonic() + TASK_TIMEOUT
    seen: set[int] = set()
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(seen)} of {workers} workers ran a task within {TASK_TIMEOUT:.0f} s")
        handles = [pool.apply_async(os.getpid) for _ in range(8 * workers)]
        seen.update(handle.get(TASK_TIMEOUT) for handle in handles)
        if len(seen) < workers:
            time.sleep(0.1)  # a node the client has not heard of yet
    for _ in range(WARMUP_APPLIES):
        pool.apply_async(tasks.noop).get(TASK_TIMEOUT)


# -- idle CPU ------------------------------------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def cpu_window(groups: dict[str, list[psutil.Process]], seconds: float) -> dict[str, list[float]]:
    """Percent of one core each process of each group used over the next `seconds`."""
    before = {name: [cpu_seconds(proc) for proc in procs] for name, procs in groups.items()}
    started = time.monotonic()
    time.sleep(seconds)
    after = {name: [cpu_seconds(proc) for proc in procs] for name, procs in groups.items()}
    elapsed = time.monotonic() - started
    return {name: [100.0 * max(0.0, b - a) / elapsed for a, b in zip(before[name], after[name])]
            for name in groups}


class HeldClient:
    """``lucidity.Pool(workers, address=...)`` in a process of its own, warmed up, then idle until stopped."""

    def __init__(self, address: str, workers: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scaling", "--hold-client", address,
                                      "--hold-workers", str(workers)], cwd=REPOSITORY, env=_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + TASK_TIMEOUT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if readable:
                line = self.proc.stdout.readline()
                if line.strip() == b"ready":
                    return
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"the idle client did not get ready (exit status {self.proc.poll()})")

    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def stop(self) -> None:
        """Close its stdin (it closes its pool and exits), then SIGTERM, then SIGKILL of its process group."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        for sig in (None, signal.SIGTERM):
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_GRACE)
                break
            except subprocess.TimeoutExpired:
                pass
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def hold_client(address: str, workers: int) -> int:
    """The idle client's process: connect, warm up, say "ready", sit idle until stdin closes, close the pool."""
    import lucidity

    with lucidity.Pool(workers, address=address) as pool:
        warm_up(pool, workers)
        print("ready", flush=True)
        sys.stdin.buffer.read()
        pool.close()
        pool.join()
    return 0


@dataclass
class IdleResults:
    nodes: int
    seconds: float
    ready_after: float = 0.0
    #: Per phase ("no client", "1 idle client"), per group, one list per window of per-process percents.
    windows: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)


IDLE_PHASES = ["no client", "1 idle client"]


def run_idle(nodes: int, seconds: float, windows: int) -> IdleResults:
    results = IdleResults(nodes, seconds)
    from lucidity.status import query_status

    cluster = Cluster(nodes, 1)
    client: Optional[HeldClient] = None
    try:
        cluster.start()
        results.ready_after = cluster.ready_after
        print(f"idle: control + {nodes} nodes x 1 worker ready after {cluster.ready_after:.1f} s at "
              f"{cluster.address}", flush=True)
        groups = {"control": [cluster.control()], "node": cluster.node_daemons(), "worker": cluster.workers()}
        if len(groups["worker"]) != nodes:
            raise RuntimeError(f"found {len(groups['worker'])} workers, expected {nodes}")
        for phase in IDLE_PHASES:
            if phase == "1 idle client":
                client = HeldClient(cluster.address, nodes)
                client.wait_ready()
                groups["client"] = [client.process()]
            time.sleep(SETTLE)
            per_window = results.windows.setdefault(phase, {})
            for index in range(windows):
                sample = cpu_window(groups, seconds)
                for name, percents in sample.items():
                    per_window.setdefault(name, []).append(percents)
                print(f"idle: {phase:<13} window {index + 1}/{windows}: control {sample['control'][0]:.2f}%, "
                      f"node daemons mean {statistics.mean(sample['node']):.2f}% (max {max(sample['node']):.2f}%), "
                      f"workers mean {statistics.mean(sample['worker']):.2f}%"
                      + (f", client {sample['client'][0]:.2f}%" if "client" in sample else ""), flush=True)
            status = query_status(cluster.address, timeout=5.0)
            alive = [node for node in status["nodes"] if "error" not in node]
            if len(alive) != nodes:
                raise RuntimeError(f"after the windows, status lists {len(alive)} healthy nodes, expected {nodes}")
    finally:
        if client is not None:
            client.stop()
        cluster.close()
    return results


def idle_tables(results: IdleResults) -> tuple[tuple[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]:
    """The idle table (percent of one core, median of the windows, min–max) and the targets table."""
    def cell(values: list[float]) -> str:
        if not values:
            return "n/a"
        if len(values) == 1:
            return f"{values[0]:.2f}%"
        return f"{statistics.median(values):.2f}% ({min(values):.2f}–{max(values):.2f})"

    def per_window(phase: str, group: str, reduce: Callable[[list[float]], float]) -> list[float]:
        return [reduce(percents) for percents in results.windows.get(phase, {}).get(group, [])]

    def total(phase: str) -> list[float]:
        groups = results.windows.get(phase, {})
        count = len(groups.get("control", []))
        return [sum(sum(groups[name][index]) for name in groups) for index in range(count)]

    n = results.nodes
    rows: list[tuple[str, Callable[[str], list[float]]]] = [
        ("control daemon", lambda phase: per_window(phase, "control", max)),
        (f"node daemon, mean of {n}", lambda phase: per_window(phase, "node", statistics.mean)),
        (f"node daemon, busiest of {n}", lambda phase: per_window(phase, "node", max)),
        (f"worker, mean of {n}", lambda phase: per_window(phase, "worker", statistics.mean)),
        ("client process (idle Pool)", lambda phase: per_window(phase, "client", max)),
        ("all of the above together", total),
    ]
    header = ["process", *IDLE_PHASES]
    body = [[label, *(cell(values(phase)) for phase in IDLE_PHASES)] for label, values in rows]

    targets = []
    for phase in IDLE_PHASES:
        control = per_window(phase, "control", max)
        if control:
            value = statistics.median(control)
            verdict = "met" if value < CONTROL_TARGET else "NOT met"
            targets.append([f"control daemon < {CONTROL_TARGET:g}% of one core, {n} nodes idle, {phase}",
                            f"{value:.2f}%: {verdict}"])
    return (header, body), (["target", "result"], targets)


# -- throughput ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    nodes: int
    processes: int

    @property
    def label(self) -> str:
        return f"{self.nodes}×{self.processes}"

    @property
    def workers(self) -> int:
        return self.nodes * self.processes


SHAPES = [Shape(1, 2), Shape(4, 2), Shape(1, 4), Shape(4, 1), Shape(1, 8)]
#: (4 nodes, 1 node) pairs compared: the issue's 1×2 against 4×2 (which also quadruples the workers), and the
#: same workers on 1 node and on 4: 1×4 against 4×1, and 1×8 against 4×2.
PAIRS = [(Shape(4, 2), Shape(1, 2)), (Shape(4, 1), Shape(1, 4)), (Shape(4, 2), Shape(1, 8))]


@dataclass
class Row:
    metric: str
    label: str
    unit: str
    higher_is_better: bool


def throughput_rows(map_items: int, applies: int) -> list[Row]:
    return [Row("map1", f"map {map_items:,} tiny, chunksize=1 (tasks/s) ↑", "tasks/s", True),
            Row("map", f"map {map_items:,} tiny, default chunks (tasks/s) ↑", "tasks/s", True),
            Row("apply", f"{applies:,} apply round trips (calls/s) ↑", "calls/s", True),
            Row("apply_p50", "apply round trip p50 (ms) ↓", "ms", False),
            Row("apply_client_cpu", "· client CPU per apply (µs) ↓", "µs", False),
            Row("apply_worker_cpu", "· workers' CPU per apply (µs) ↓", "µs", False),
            Row("apply_daemon_cpu", "· node daemons' CPU per apply (µs) ↓", "µs", False)]


def run_shape(shape: Shape, map_items: int, applies: int) -> dict[str, float]:
    """One round of one shape: a fresh cluster and pool, the two maps and the applies; stopped afterwards."""
    import lucidity

    samples: dict[str, float] = {}
    with Cluster(shape.nodes, shape.processes) as cluster:
        cluster.start()
        pool = lucidity.Pool(shape.workers, address=cluster.address)
        try:
            warm_up(pool, shape.workers)
            gc.collect()
            for metric, chunksize in (("map1", 1), ("map", None)):
                started = time.perf_counter()
                results = pool.map_async(tasks.square, range(map_items), chunksize).get(TASK_TIMEOUT)
                elapsed = time.perf_counter() - started
                if len(results) != map_items or results[-1] != (map_items - 1) ** 2:
                    raise RuntimeError(f"map returned {len(results)} results for {map_items} items")
                samples[metric] = map_items / elapsed
            groups = {"client": [psutil.Process()], "worker": cluster.workers(), "daemon": cluster.node_daemons()}
            before = {name: sum(cpu_seconds(proc) for proc in procs) for name, procs in groups.items()}
            latencies = []
            for _ in range(applies):
                started = time.perf_counter()
                pool.apply_async(tasks.noop).get(TASK_TIMEOUT)
                latencies.append(time.perf_counter() - started)
            for name, procs in groups.items():
                used = sum(cpu_seconds(proc) for proc in procs) - before[name]
                samples[f"apply_{name}_cpu"] = max(0.0, used) / applies * 1e6
            samples["apply"] = applies / sum(latencies)
            samples["apply_p50"] = statistics.median(latencies) * 1000
            samples["ready_after"] = cluster.ready_after
        except BaseException:
            pool.terminate()
            raise
        pool.close()
        pool.join()
    return samples


def run_throughput(rounds: int, map_items: int, applies: int) -> dict[str, dict[str, list[float]]]:
    """Per shape label, per metric, one sample per round."""
    collected: dict[str, dict[str, list[float]]] = {}
    for index in range(rounds):
        shift = index % len(SHAPES)
        for shape in SHAPES[shift:] + SHAPES[:shift]:
            started = time.monotonic()
            samples = run_shape(shape, map_items, applies)
            for metric, value in samples.items():
                collected.setdefault(shape.label, {}).setdefault(metric, []).append(value)
            print(f"throughput: round {index + 1}/{rounds} {shape.label:<4} ({shape.nodes} node(s) x "
                  f"{shape.processes} worker(s), ready after {samples['ready_after']:.1f} s): "
                  f"map chunksize=1 {report.format_value(samples['map1'], 'tasks/s')}/s, "
                  f"map default {report.format_value(samples['map'], 'tasks/s')}/s, "
                  f"apply {samples['apply']:.0f}/s (p50 {samples['apply_p50']:.3f} ms); "
                  f"{time.monotonic() - started:.1f} s", flush=True)
    return collected


def format_cell(value: Optional[float], unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "µs":
        return f"{value:.0f}"
    return report.format_value(value, "tasks/s" if unit in ("tasks/s", "calls/s") else unit)


def default_chunksize(items: int, workers: int) -> int:
    chunksize, extra = divmod(items, workers * 4)
    return chunksize + bool(extra)


def throughput_tables(collected: dict[str, dict[str, list[float]]], map_items: int, applies: int
                      ) -> tuple[tuple[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]:
    """Medians per shape and the ratio of each pair (4 nodes ÷ 1 node), then the targets."""
    def median(shape: Shape, metric: str) -> Optional[float]:
        values = collected.get(shape.label, {}).get(metric)
        return statistics.median(values) if values else None

    header = ["workload (unit); cluster = nodes × workers per node", *(shape.label for shape in SHAPES),
              *(f"{big.label} ÷ {small.label}" for big, small in PAIRS)]
    body = []
    targets = []
    for row in throughput_rows(map_items, applies):
        cells = [row.label, *(format_cell(median(shape, row.metric), row.unit) for shape in SHAPES)]
        for big, small in PAIRS:
            a, b = median(small, row.metric), median(big, row.metric)
            ratio = b / a if a and b is not None else None
            cells.append(f"{ratio:.2f}" if ratio is not None else "n/a")
            if row.higher_is_better and ratio is not None:
                verdict = "met" if ratio >= RATIO_TARGET else "NOT met"
                targets.append([f"{row.label.split(' (')[0]}: {big.label} ≥ {RATIO_TARGET:g}× {small.label}",
                                f"{ratio:.3f}×: {verdict}"])
        body.append(cells)
    body.append(["default chunksize (items ÷ (4 × workers), rounded up)",
                 *(str(default_chunksize(map_items, shape.workers)) for shape in SHAPES), *([""] * len(PAIRS))])
    return (header, body), (["target", "result"], targets)


def samples_table(collected: dict[str, dict[str, list[float]]], map_items: int, applies: int
                  ) -> tuple[list[str], list[list[str]]]:
    """Every round's value, per shape and workload: how much the medians rest on."""
    header = ["workload", *(shape.label for shape in SHAPES)]
    body = []
    for row in throughput_rows(map_items, applies):
        body.append([row.label, *(" / ".join(format_cell(v, row.unit)
                                             for v in collected.get(shape.label, {}).get(row.metric, []))
                                  for shape in SHAPES)])
    return header, body


# -- the run -------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one 3 s window, one round, small sizes: a smoke test")
    parser.add_argument("--only", help="idle,throughput (default both)")
    parser.add_argument("--nodes", type=int, default=16, help="node daemons of the idle cluster (default 16)")
    parser.add_argument("--idle-seconds", type=float, help="seconds per idle window (default 10)")
    parser.add_argument("--windows", type=int, help="idle windows per phase (default 3)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 3)")
    parser.add_argument("--map-items", type=int, help="items per map (default 20000)")
    parser.add_argument("--applies", type=int, help="apply round trips (default 2000)")
    parser.add_argument("--markdown", metavar="FILE", help="also write machine, tables and targets as markdown")
    parser.add_argument("--hold-client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--hold-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold_client:
        return hold_client(args.hold_client, args.hold_workers)

    quick = args.quick
    seconds = args.idle_seconds or (3.0 if quick else 10.0)
    windows = args.windows or (1 if quick else 3)
    rounds = args.rounds or (1 if quick else 3)
    map_items = args.map_items or (2000 if quick else 20_000)
    applies = args.applies or (200 if quick else 2000)
    parts = ["idle", "throughput"] if args.only is None else [p.strip() for p in args.only.split(",") if p.strip()]
    if set(parts) - {"idle", "throughput"} or not parts:
        raise SystemExit("--only takes idle, throughput or both")
    if min(args.nodes, windows, rounds, map_items, applies) < 1 or seconds <= 0:
        raise SystemExit("sizes must be positive")

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the finally blocks stop the daemons
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)

    machine = report.machine_info(REPOSITORY)
    print("# lucidity scaling with nodes" + (" (--quick: not for comparison)" if quick else ""))
    for label, value in machine:
        print(f"{label + ':':<24}{value}")
    print(flush=True)
    started = time.monotonic()
    #: (title, [(caption, header, body)]) per part.
    sections: list[tuple[str, list[tuple[str, list[str], list[list[str]]]]]] = []
    if "idle" in parts:
        idle = run_idle(args.nodes, seconds, windows)
        table, targets = idle_tables(idle)
        sections.append((f"Idle CPU: control + {args.nodes} nodes × 1 worker",
                         [(f"Percent of one core, median of {windows} window(s) of {seconds:g} s per column (min–max); "
                           f"the cluster was ready {idle.ready_after:.1f} s after its start.", *table),
                          ("Target:", *targets)]))
    if "throughput" in parts:
        collected = run_throughput(rounds, map_items, applies)
        table, targets = throughput_tables(collected, map_items, applies)
        sections.append(("Throughput: 1 node against 4 nodes",
                         [(f"Medians of {rounds} round(s); each round, every shape gets a fresh cluster and a fresh "
                           "Pool(all its workers, address=...). Ratios are 4 nodes ÷ 1 node.", *table),
                          (f"Targets (throughput with 4 nodes ≥ {RATIO_TARGET:g}× with 1 node):", *targets),
                          ("Every round's value:", *samples_table(collected, map_items, applies))]))
    elapsed = time.monotonic() - started
    machine.append(("load average at end", " ".join(f"{load:.2f}" for load in os.getloadavg())))
    print(f"\nResults ({elapsed:.0f} s; load average at end {machine[-1][1]})")
    for title, tables in sections:
        print(f"\n## {title}")
        for caption, header, body in tables:
            print(f"\n{caption}\n")
            print(report.text_table(header, body))
    if args.markdown:
        # Headings at level 4: the file is pasted under "Scaling with nodes" in docs/performance.md.
        lines = ["#### Machine", ""] + [f"- {label}: {value}" for label, value in machine]
        lines.append(f"- elapsed: {elapsed:.0f} s")
        for title, tables in sections:
            lines += ["", f"#### {title}"]
            for caption, header, body in tables:
                lines += ["", caption, "", report.markdown_table(header, body)]
        with open(args.markdown, "w") as out:
            out.write("\n".join(lines) + "\n")
        print(f"\nmarkdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
