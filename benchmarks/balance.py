"""``python -m benchmarks.balance``: does any worker sit idle while work waits? The first map of a fresh pool.

Two workloads (issue 13, item 1), each on a **fresh pool** whose first map is timed, since a user's first
map is the one they judge and a pool that has learnt its task durations hides the problem:

**cold**: ``map(sleep_for, [0.02] * 1920, chunksize=1)`` over 64 workers. The tasks sleep rather than
spin, because 64 spinning workers on this 2-core machine would measure the CPU, not the placement. Reported
as a percentage of the ideal makespan, tasks × duration ÷ workers (0.6 s): 100% means no worker ever
waited while a task did.

**tail**: a long-tailed mix on the same 64 workers, chunksize=1: 1,920 tasks of 5 ms, 2% of them (at places
drawn with a fixed seed, the same list for every peer) 500 ms instead. Reported as the makespan, its ratio
to multiprocessing.Pool's on the same list, and a percentage of the ideal, max(total ÷ workers, longest).

The peers, each with 64 workers:

    lucidity    lucidity.Pool(64): the embedded cluster, started by the pool (not timed: Pool() returns
                once every worker is connected, and the map is timed from then on)
    cli-1x64    lucidity.Pool(64, address=...) on a CLI cluster of 1 node x 64 workers
    cli-32x2    lucidity.Pool(64, address=...) on a CLI cluster of 32 nodes x 2 workers
    mp-fork     multiprocessing.get_context("fork").Pool(64)

The CLI clusters are started once per run (``python -m lucidity control`` and ``node`` on 127.0.0.1, as in
`benchmarks.scaling`), all before the first round, and stay up, idle, while the other peers run; the pools
are fresh in every round. Each peer's round runs in a process of its own (`benchmarks.isolated`), the peers
in an order rotated from round to round; cells are medians over the rounds. Every task returns its
worker's pid, so the table also shows how many workers a map reached, and results are checked after the
clock stops. Every process started here is stopped on every way out (the end, an error, Ctrl-C, SIGTERM).

Options: ``--quick`` (small sizes, one round), ``--only cold,tail``, ``--peers``, ``--shapes 1x64,32x2``,
``--rounds``, ``--workers``, ``--tasks``, ``--markdown FILE``, ``--trace``. Results: docs/performance.md,
"Speed II baseline" and "Balance: cold map and long tail".

``--trace`` says where each round's idle worker time went: every task also returns when it started and
ended (``time.monotonic()``, one clock for the processes of a machine), and each round's line adds the
workers' first starts after the map began (median and last, ms) and their idle worker-seconds before their
first task, between tasks and after their last one. The sums are against workers × makespan; the work
itself is the sum of the durations.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from . import isolated, report, tasks
from .scaling import Cluster

REPOSITORY = isolated.REPOSITORY
LUCIDITY = "lucidity"
MP_FORK = "mp-fork"
WORKLOADS = ["cold", "tail"]
#: Issue 13's targets: cold map at least this % of ideal; tail makespan at most this × mp-fork's.
COLD_TARGET = 90.0
TAIL_TARGET = 1.1
#: Seconds one peer's round may take before its process is killed.
PEER_TIMEOUT = 300.0
#: Seconds a CLI cluster of many workers may take to come up on 2 cores.
CLUSTER_READY_TIMEOUT = 240.0


@dataclass(frozen=True)
class Plan:
    """The sizes of a run; every peer maps the same lists."""

    workers: int = 64
    tasks: int = 1920
    duration: float = 0.02
    tail_tasks: int = 1920
    tail_short: float = 0.005
    tail_long: float = 0.5
    tail_long_share: float = 0.02
    seed: int = 13
    #: Seconds a pool may take to open, and a map to finish, before the round counts as hung.
    timeout: float = 120.0

    def durations(self, workload: str) -> list[float]:
        if workload == "cold":
            return [self.duration] * self.tasks
        rng = random.Random(self.seed)
        longs = set(rng.sample(range(self.tail_tasks), max(1, round(self.tail_tasks * self.tail_long_share))))
        return [self.tail_long if index in longs else self.tail_short for index in range(self.tail_tasks)]

    def ideal(self, workload: str) -> float:
        """The shortest possible makespan: the work spread evenly, and never less than the longest task."""
        durations = self.durations(workload)
        return max(sum(durations) / self.workers, max(durations))


FULL = Plan()
QUICK = Plan(workers=8, tasks=160, tail_tasks=160, tail_long=0.2, tail_long_share=0.05, timeout=60.0)


def parse_shape(text: str) -> tuple[int, int]:
    """``"32x2"`` -> (32 nodes, 2 workers each)."""
    try:
        nodes, processes = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"a shape is NODESxWORKERS, like 32x2; got {text!r}") from None
    if nodes < 1 or processes < 1:
        raise SystemExit(f"a shape needs at least one node and one worker; got {text!r}")
    return nodes, processes


# -- one peer's round, in a process of its own ---------------------------------------------------------------


def idle_time(runs: list[tuple[int, float, float]], began: float, ended: float) -> dict[str, float]:
    """Where the workers' idle time went in one traced map: `runs` are (pid, start, end) of each task."""
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for pid, start, end in runs:
        by_worker.setdefault(pid, []).append((start, end))
    firsts, before, between, after = [], 0.0, 0.0, 0.0
    for spans in by_worker.values():
        spans.sort()
        firsts.append(spans[0][0] - began)
        before += spans[0][0] - began
        between += sum(max(0.0, later[0] - earlier[1]) for earlier, later in zip(spans, spans[1:]))
        after += max(0.0, ended - spans[-1][1])
    return {"first_start_median": statistics.median(firsts), "first_start_last": max(firsts),
            "idle_before": before, "idle_between": between, "idle_after": after}


def open_pool(peer: str, workers: int, address: Optional[str]) -> Any:
    if peer == MP_FORK:
        import multiprocessing

        return multiprocessing.get_context("fork").Pool(workers)
    import lucidity

    return lucidity.Pool(workers, address=address)


def run_round(config: dict[str, Any]) -> None:
    """Each selected workload on a fresh pool of `peer`: open (timed apart), map (timed), check, close."""
    plan = Plan(**config["plan"])
    task: Any = tasks.sleep_and_time if config.get("trace") else tasks.sleep_for
    for workload in config["workloads"]:
        try:
            durations = plan.durations(workload)
            started = time.perf_counter()
            pool = open_pool(config["peer"], plan.workers, config.get("address"))
            try:
                opened, began = time.perf_counter(), time.monotonic()
                results = pool.map_async(task, durations, 1).get(plan.timeout)
                elapsed, ended = time.perf_counter() - opened, time.monotonic()
            except BaseException:
                pool.terminate()
                raise
            pool.close()
            pool.join()
            pids = [result[0] for result in results] if config.get("trace") else results
            if len(pids) != len(durations) or not all(isinstance(pid, int) for pid in pids):
                raise RuntimeError(f"the map returned {len(pids)} results for {len(durations)} tasks")
            line = {"workload": workload, "makespan": elapsed, "open": opened - started, "workers_used": len(set(pids))}
            if config.get("trace"):
                line.update(idle_time(results, began, ended))
            isolated.emit(line)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            isolated.emit({"workload": workload, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})


# -- the run -------------------------------------------------------------------------------------------------


@dataclass
class Collected:
    """samples[peer][workload][field]: one value per round; errors[peer]: the first message per workload."""

    samples: dict[str, dict[str, dict[str, list[float]]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def values(self, peer: str, workload: str, name: str) -> list[float]:
        return self.samples.get(peer, {}).get(workload, {}).get(name, [])

    def median(self, peer: str, workload: str, name: str) -> Optional[float]:
        values = self.values(peer, workload, name)
        return statistics.median(values) if values else None


def run(plan: Plan, peers: list[str], workloads: list[str], rounds: int,
        clusters: dict[str, Cluster], trace: bool = False) -> Collected:
    collected = Collected()
    for index in range(rounds):
        shift = index % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            config = {"peer": peer, "workloads": workloads, "plan": dataclasses.asdict(plan),
                      "address": clusters[peer].address if peer in clusters else None, "trace": trace}
            started = time.monotonic()
            outcome = isolated.run("benchmarks.balance", config, PEER_TIMEOUT)
            parts = []
            for line in outcome.lines:
                if "error" in line:
                    collected.errors.setdefault(peer, {}).setdefault(line["workload"], line["error"])
                    parts.append(f"{line['workload']} failed")
                    continue
                fields = collected.samples.setdefault(peer, {}).setdefault(line["workload"], {})
                for name in ("makespan", "open", "workers_used"):
                    fields.setdefault(name, []).append(float(line[name]))
                percent = 100 * plan.ideal(line["workload"]) / line["makespan"]
                parts.append(f"{line['workload']} {line['makespan']:.3f} s ({percent:.0f}% of ideal, "
                             f"{line['workers_used']} workers, pool open {line['open']:.2f} s)")
                if "idle_before" in line:
                    parts[-1] += (f" [first starts {1e3 * line['first_start_median']:.0f}/"
                                  f"{1e3 * line['first_start_last']:.0f} ms; idle worker-s: before "
                                  f"{line['idle_before']:.2f}, between {line['idle_between']:.2f}, after "
                                  f"{line['idle_after']:.2f}, of {plan.workers * line['makespan']:.2f}]")
            done = {line["workload"] for line in outcome.lines}
            for workload in workloads:
                if workload not in done:
                    collected.errors.setdefault(peer, {}).setdefault(workload, outcome.failure or "no result")
            summary = "; ".join(parts) or outcome.failure
            if outcome.failure:
                summary += f" [{outcome.failure}]" + (f"; stderr tail:\n    {outcome.stderr_tail}"
                                                      if outcome.stderr_tail else "")
            print(f"round {index + 1}/{rounds}  {peer:<9} {time.monotonic() - started:5.1f} s  {summary}", flush=True)
    return collected


Table = tuple[list[str], list[list[str]]]


def tables(plan: Plan, peers: list[str], workloads: list[str], collected: Collected) -> tuple[Table, Table, Table]:
    """Medians with ratio columns (each lucidity peer ÷ mp-fork), the targets, and every round's values."""
    versus = MP_FORK if MP_FORK in peers else None
    others = [peer for peer in peers if peer != MP_FORK] if versus else []

    def percent(peer: str, workload: str) -> Optional[float]:
        makespan = collected.median(peer, workload, "makespan")
        return 100 * plan.ideal(workload) / makespan if makespan else None

    rows: list[tuple[str, str, str, bool]] = []  # label, workload, field, higher is better
    for workload in workloads:
        longs = plan.durations(workload).count(plan.tail_long)
        what = (f"cold map {plan.tasks:,} × {plan.duration * 1e3:g} ms" if workload == "cold" else
                f"tail {plan.tail_tasks:,} ({longs:,} × {plan.tail_long * 1e3:g} ms, {plan.tail_tasks - longs:,} × "
                f"{plan.tail_short * 1e3:g} ms)")
        ideal = plan.ideal(workload)
        rows += [(f"{what}: % of ideal ({ideal:.3f} s) ↑", workload, "percent", True),
                 (f"{what}: makespan (s) ↓", workload, "makespan", False),
                 (f"{what}: workers that ran tasks", workload, "workers_used", True),
                 (f"{what}: pool open, not in the makespan (s) ↓", workload, "open", False)]

    def value(peer: str, workload: str, name: str) -> Optional[float]:
        return percent(peer, workload) if name == "percent" else collected.median(peer, workload, name)

    def cell(peer: str, workload: str, name: str) -> str:
        found = value(peer, workload, name)
        if found is None:
            return "error" if workload in collected.errors.get(peer, {}) else "—"
        return f"{found:.0f}%" if name == "percent" else f"{found:.0f}" if name == "workers_used" else f"{found:.3f}"

    header = [f"workload, {plan.workers} workers, chunksize=1, first map of a fresh pool", *peers,
              *(f"{peer} ÷ {versus}" for peer in others)]
    body = []
    for label, workload, name, _ in rows:
        ratios = []
        for peer in others:
            a, b = value(peer, workload, name), value(versus or "", workload, name)
            ratios.append(f"{a / b:.2f}" if a is not None and b and name != "workers_used" else "")
        body.append([label, *(cell(peer, workload, name) for peer in peers), *ratios])

    targets = []
    for peer in others or [peer for peer in peers if peer != MP_FORK]:
        if "cold" in workloads:
            found = percent(peer, "cold")
            targets.append([f"cold map ≥ {COLD_TARGET:g}% of ideal", peer, "not measured" if found is None else
                            f"{found:.0f}%: {'met' if found >= COLD_TARGET else 'NOT met'}"])
        if "tail" in workloads and versus:
            a, b = collected.median(peer, "tail", "makespan"), collected.median(versus, "tail", "makespan")
            ratio = a / b if a is not None and b else None
            targets.append([f"tail makespan ≤ {TAIL_TARGET:g}× {versus}'s", peer, "not measured" if ratio is None
                            else f"{ratio:.2f}×: {'met' if ratio <= TAIL_TARGET else 'NOT met'}"])

    rounds_body = [[f"{workload} makespan (s)", *(" / ".join(f"{v:.3f}" for v in collected.values(p, workload,
                                                                                                    "makespan"))
                                                 for p in peers)] for workload in workloads]
    return (header, body), (["target", "peer", "result"], targets), (["every round", *peers], rounds_body)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.balance", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 workers, 160 tasks, one round: a smoke test")
    parser.add_argument("--only", help="cold,tail (default both)")
    parser.add_argument("--peers", help="lucidity,cli,mp-fork (default all; cli means every --shapes cluster)")
    parser.add_argument("--shapes", help="CLI clusters as NODESxWORKERS, comma-separated (default 1x64,32x2; "
                                         "--quick 1x8,4x2); each must have --workers workers")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 1 with --quick)")
    parser.add_argument("--workers", type=int, help="workers of every peer (default 64)")
    parser.add_argument("--tasks", type=int, help="tasks of each map (default 1920)")
    parser.add_argument("--markdown", metavar="FILE", help="also write machine and tables as markdown")
    parser.add_argument("--trace", action="store_true",
                        help="each round also says where the workers' idle time went (see the module's docstring)")
    parser.add_argument("--config", help=argparse.SUPPRESS)  # one peer's round, in its own process
    args = parser.parse_args(argv)
    if args.config:
        import json

        run_round(json.loads(args.config))
        return 0

    plan = QUICK if args.quick else FULL
    if args.workers:
        plan = dataclasses.replace(plan, workers=args.workers)
    if args.tasks:
        plan = dataclasses.replace(plan, tasks=args.tasks, tail_tasks=args.tasks)
    rounds = args.rounds or (1 if args.quick else 5)
    workloads = WORKLOADS if args.only is None else [w.strip() for w in args.only.split(",") if w.strip()]
    if not workloads or set(workloads) - set(WORKLOADS):
        raise SystemExit(f"--only takes {','.join(WORKLOADS)}")
    default_shapes = "1x8,4x2" if args.quick else "1x64,32x2"
    shapes = [parse_shape(text) for text in (args.shapes or default_shapes).split(",") if text.strip()]
    for nodes, processes in shapes:
        if nodes * processes != plan.workers:
            raise SystemExit(f"shape {nodes}x{processes} has {nodes * processes} workers, not {plan.workers}")
    wanted = ["lucidity", "cli", MP_FORK] if args.peers is None else [p.strip() for p in args.peers.split(",")]
    if set(wanted) - {"lucidity", "cli", MP_FORK} or rounds < 1 or plan.workers < 1 or plan.tasks < 1:
        raise SystemExit("--peers takes lucidity, cli, mp-fork; sizes must be positive")
    peers = [LUCIDITY] if LUCIDITY in wanted else []
    peers += [f"cli-{n}x{p}" for n, p in shapes] if "cli" in wanted else []
    peers += [MP_FORK] if MP_FORK in wanted else []

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the finally below stop the daemons
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    machine = report.machine_info(REPOSITORY)
    print("# lucidity balance: the first map of a fresh pool"
          + (" (--quick: not for comparison)" if args.quick else ""))
    for label, value in machine:
        print(f"{label + ':':<24}{value}")
    print(f"{len(peers)} peers x {len(workloads)} workloads x {rounds} round(s), {plan.workers} workers each\n",
          flush=True)
    started = time.monotonic()
    clusters: dict[str, Cluster] = {}
    try:
        for peer in peers:
            if peer.startswith("cli-"):
                nodes, processes = parse_shape(peer[len("cli-"):])
                cluster = clusters[peer] = Cluster(nodes, processes)
                cluster.ready_timeout = CLUSTER_READY_TIMEOUT
                cluster.start()
                print(f"{peer}: control + {nodes} node(s) x {processes} worker(s) ready after "
                      f"{cluster.ready_after:.1f} s at {cluster.address}", flush=True)
        collected = run(plan, peers, workloads, rounds, clusters, args.trace)
    finally:
        for cluster in clusters.values():
            cluster.close()
    elapsed = time.monotonic() - started
    machine.append(("load average at end", " ".join(f"{load:.2f}" for load in os.getloadavg())))
    table, targets, every = tables(plan, peers, workloads, collected)
    notes = [f"{peer} failed {workload}: {message}" for peer, errors in collected.errors.items()
             for workload, message in errors.items()]
    print(f"\nResults ({elapsed:.0f} s; load average at end {machine[-1][1]}). Medians of {rounds} round(s); "
          "ratios are the peer's value ÷ mp-fork's.\n")
    for header, body in (table, targets, every):
        print(report.text_table(header, body) + "\n")
    for note in notes:
        print(f"note: {note}")
    if args.markdown:
        lines = ["#### Machine", ""] + [f"- {label}: {value}" for label, value in machine]
        lines += ["", f"#### Balance ({rounds} round(s), {elapsed:.0f} s)", ""]
        for header, body in (table, targets, every):
            lines += [report.markdown_table(header, body), ""]
        lines += [f"- {note}" for note in notes]
        with open(args.markdown, "w") as out:
            out.write("\n".join(lines) + "\n")
        print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
