"""``python -m benchmarks.footprint``: what a client costs per worker it knows, and the control node per node.

Two parts (issue 13, item 4), on clusters started from the CLI on 127.0.0.1 (`benchmarks.scaling.Cluster`,
one cluster at a time):

**client**: for 16, 64 and 256 workers, a cluster of ``--per-node`` (8) workers per node daemon, and a
fresh client process per round and peer (`benchmarks.isolated`), which imports lucidity and
multiprocessing, reads its own open file descriptors (``len(os.listdir('/proc/self/fd'))``) and RSS
(psutil), opens the pool, runs tasks until every worker has run one (so every connection is made), and
reads them again. The peers are ``lucidity.Pool(W, address=...)`` and, for comparison,
``multiprocessing.get_context("fork").Pool(W)`` on the same machine (its workers forked by the client,
the cluster idle meanwhile). Before it opens anything, the client raises its soft limit of open files to
the hard limit, so that a client that needs more than the usual 1,024 is measured instead of failing; the
limit in force is reported, and whether the count would fit under 1,024.

**control**: for 16, 64 and 256 idle nodes (``--processes 1``, the minimum), ``python -m lucidity control``
and the nodes are started and waited for with ``lucidity status``; after a few seconds to settle, the CPU
time (psutil ``cpu_times()``, user + system, all threads) of the control daemon and of each node daemon is
read before and after ``--seconds`` (25) of idleness, ``--windows`` (1) times; reported as a percentage of one
core. No client is connected (`benchmarks.scaling` measures one idle client's cost).

CPU times come in ticks of 10 ms: 0.04% of a core over 25 s. Hundreds of daemons on 2 cores take a
minute or two to start; every process started here is stopped on every way out (the end, an error,
Ctrl-C, SIGTERM). Options: ``--quick`` (a smoke test), ``--only client,control``, ``--workers 16,64,256``,
``--per-node``, ``--nodes 16,64,256``, ``--seconds``, ``--windows``, ``--rounds``, ``--markdown FILE``.
Results: docs/performance.md, "Speed II baseline".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import sys
import time
from typing import Any, Callable, Optional

import psutil

from . import isolated, report
from .scaling import SETTLE, Cluster, cpu_window, warm_up

REPOSITORY = isolated.REPOSITORY
LUCIDITY = "lucidity"
MP_FORK = "mp-fork"
PEERS = [LUCIDITY, MP_FORK]
#: The usual soft limit of open files, which issue 13 wants a 256-worker client to fit under with room to spare.
USUAL_FD_LIMIT = 1024
#: Issue 13's targets for a client that knows 256 workers, and for the control node with 256 idle nodes.
FD_TARGET = 600
RSS_TARGET_MIB = 100.0
CONTROL_TARGET = 2.0
TARGET_WORKERS = 256
#: Seconds a client's round may take, and a cluster of hundreds of daemons to come up on 2 cores.
CLIENT_TIMEOUT = 300.0
READY_TIMEOUT = 300.0

Table = tuple[list[str], list[list[str]]]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def measure_client(config: dict[str, Any]) -> None:
    """In a fresh process: raise the file limit, measure, open the pool, reach every worker, measure again."""
    import multiprocessing

    import lucidity

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workers = config["workers"]
    before_fds, before_rss = open_fds(), rss()
    started = time.perf_counter()
    if config["peer"] == MP_FORK:
        pool: Any = multiprocessing.get_context("fork").Pool(workers)
    else:
        pool = lucidity.Pool(workers, address=config["address"])
    try:
        warm_up(pool, workers)
        ready = time.perf_counter() - started
        isolated.emit({"fds": open_fds(), "rss": rss(), "fds_before": before_fds, "rss_before": before_rss,
                       "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "ready": ready})
    finally:
        pool.terminate()
        pool.join()


# -- client part ---------------------------------------------------------------------------------------------


def run_clients(worker_counts: list[int], per_node: int, rounds: int) -> dict[int, dict[str, dict[str, list[float]]]]:
    """Per worker count, per peer, per field, one value per round."""
    collected: dict[int, dict[str, dict[str, list[float]]]] = {}
    for workers in worker_counts:
        nodes = max(1, workers // per_node)
        with Cluster(nodes, workers // nodes) as cluster:
            cluster.ready_timeout = READY_TIMEOUT
            cluster.start()
            print(f"client: control + {nodes} node(s) x {workers // nodes} worker(s) ready after "
                  f"{cluster.ready_after:.1f} s", flush=True)
            for index in range(rounds):
                for peer in PEERS[index % 2:] + PEERS[:index % 2]:
                    outcome = isolated.run("benchmarks.footprint", {"peer": peer, "workers": workers,
                                                                    "address": cluster.address}, CLIENT_TIMEOUT)
                    if outcome.failure or not outcome.lines:
                        print(f"client: {workers} workers, {peer} failed: {outcome.failure or 'no result'}\n    "
                              f"{outcome.stderr_tail}", flush=True)
                        continue
                    line = outcome.lines[0]
                    fields = collected.setdefault(workers, {}).setdefault(peer, {})
                    for name, value in line.items():
                        fields.setdefault(name, []).append(float(value))
                    print(f"client: {workers} workers, round {index + 1}/{rounds}, {peer:<8}: {line['fds']} open "
                          f"files ({line['fds_before']} before the pool, limit {line['fd_limit']}), RSS "
                          f"{line['rss'] / report.MIB:.1f} MiB ({line['rss_before'] / report.MIB:.1f} before), "
                          f"every worker reached after {line['ready']:.2f} s", flush=True)
    return collected


def client_tables(collected: dict[int, dict[str, dict[str, list[float]]]]) -> tuple[Table, Table]:
    def median(workers: int, peer: str, name: str) -> Optional[float]:
        values = collected.get(workers, {}).get(peer, {}).get(name)
        return statistics.median(values) if values else None

    counts = sorted(collected)
    header = ["client, workers known →", *(f"{w} {peer}" for w in counts for peer in PEERS),
              *(f"{w}: {LUCIDITY} ÷ {MP_FORK}" for w in counts)]
    rows: list[tuple[str, str, Callable[[float], str], float]] = [
        ("open files ↓", "fds", lambda v: f"{v:.0f}", 1.0),
        ("open files before the pool", "fds_before", lambda v: f"{v:.0f}", 1.0),
        ("RSS (MiB) ↓", "rss", lambda v: f"{v:.1f}", 1 / report.MIB),
        ("RSS before the pool (MiB)", "rss_before", lambda v: f"{v:.1f}", 1 / report.MIB),
        ("pool open to every worker reached (s) ↓", "ready", lambda v: f"{v:.2f}", 1.0),
        ("soft limit of open files in force", "fd_limit", lambda v: f"{v:.0f}", 1.0),
    ]
    body = []
    for label, name, show, scale in rows:
        cells = []
        for workers in counts:
            for peer in PEERS:
                value = median(workers, peer, name)
                cells.append("n/a" if value is None else show(value * scale))
        for workers in counts:
            a, b = median(workers, LUCIDITY, name), median(workers, MP_FORK, name)
            cells.append(f"{a / b:.2f}" if a is not None and b and name not in ("fd_limit",) else "")
        body.append([label, *cells])
    per_worker = []
    for workers in counts:
        for peer in PEERS:
            a, b = median(workers, peer, "fds"), median(workers, peer, "fds_before")
            per_worker.append(f"{(a - b) / workers:.2f}" if a is not None and b is not None else "n/a")
    body.append(["open files per worker (after − before) ÷ workers", *per_worker, *([""] * len(counts))])

    targets = []
    for workers in counts:
        fds, resident = median(workers, LUCIDITY, "fds"), median(workers, LUCIDITY, "rss")
        if fds is not None:
            targets.append([f"{workers} workers: under {USUAL_FD_LIMIT:,} open files (the usual limit)",
                            f"{fds:.0f}: {'fits' if fds < USUAL_FD_LIMIT else 'does NOT fit'}"])
        if workers == TARGET_WORKERS and fds is not None and resident is not None:
            targets.append([f"{workers} workers: under {FD_TARGET} open files", f"{fds:.0f}: "
                            f"{'met' if fds < FD_TARGET else 'NOT met'}"])
            mib = resident / report.MIB
            targets.append([f"{workers} workers: under {RSS_TARGET_MIB:g} MiB RSS", f"{mib:.1f} MiB: "
                            f"{'met' if mib < RSS_TARGET_MIB else 'NOT met'}"])
    return (header, body), (["target (lucidity client)", "result"], targets)


# -- control part --------------------------------------------------------------------------------------------


def run_control(node_counts: list[int], seconds: float, windows: int) -> dict[int, dict[str, list[float]]]:
    """Per node count: "control" (one value per window), "node_mean", "node_max", "ready_after"."""
    collected: dict[int, dict[str, list[float]]] = {}
    for nodes in node_counts:
        with Cluster(nodes, 1) as cluster:
            cluster.ready_timeout = READY_TIMEOUT
            cluster.start()
            print(f"control: control + {nodes} node(s) x 1 worker ready after {cluster.ready_after:.1f} s; "
                  f"{SETTLE:g} s to settle, then {windows} window(s) of {seconds:g} s", flush=True)
            result = collected.setdefault(nodes, {"ready_after": [cluster.ready_after]})
            time.sleep(SETTLE)
            groups = {"control": [cluster.control()], "node": cluster.node_daemons()}
            for index in range(windows):
                sample = cpu_window(groups, seconds)
                result.setdefault("control", []).append(sample["control"][0])
                result.setdefault("node_mean", []).append(statistics.mean(sample["node"]))
                result.setdefault("node_max", []).append(max(sample["node"]))
                print(f"control: {nodes} nodes, window {index + 1}/{windows}: control {sample['control'][0]:.2f}% "
                      f"of a core, node daemons mean {statistics.mean(sample['node']):.3f}% "
                      f"(max {max(sample['node']):.2f}%)", flush=True)
    return collected


def control_tables(collected: dict[int, dict[str, list[float]]], seconds: float) -> tuple[Table, Table]:
    counts = sorted(collected)

    def cell(nodes: int, name: str, digits: int = 2) -> str:
        values = collected[nodes].get(name)
        return f"{statistics.median(values):.{digits}f}" if values else "n/a"

    header = ["idle cluster, nodes × 1 worker →", *(str(n) for n in counts)]
    body = [["control daemon, % of one core ↓", *(cell(n, "control") for n in counts)],
            ["node daemon, mean, % of one core ↓", *(cell(n, "node_mean", 3) for n in counts)],
            ["node daemon, busiest, % of one core ↓", *(cell(n, "node_max") for n in counts)],
            ["control daemon, % of one core per 100 nodes ↓",
             *(f"{100 * statistics.median(collected[n]['control']) / n:.2f}" if collected[n].get("control")
               else "n/a" for n in counts)],
            ["cluster ready after (s)", *(cell(n, "ready_after", 1) for n in counts)]]
    targets = []
    for nodes in counts:
        values = collected[nodes].get("control")
        if values:
            value = statistics.median(values)
            targets.append([f"control daemon < {CONTROL_TARGET:g}% of one core, {nodes} idle nodes ({seconds:g} s)",
                            f"{value:.2f}%: {'met' if value < CONTROL_TARGET else 'NOT met'}"])
    return (header, body), (["target", "result"], targets)


# -- the run -------------------------------------------------------------------------------------------------


def parse_counts(text: str, what: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{what} takes comma-separated numbers; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"{what} takes positive numbers; got {text!r}")
    return counts


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small clusters, one short window: a smoke test")
    parser.add_argument("--only", help="client,control (default both)")
    parser.add_argument("--workers", help="worker counts of the client part (default 16,64,256)")
    parser.add_argument("--per-node", type=int, help="workers per node daemon in the client part (default 8)")
    parser.add_argument("--nodes", help="idle node counts of the control part (default 16,64,256)")
    parser.add_argument("--seconds", type=float, help="seconds per CPU window (default 25)")
    parser.add_argument("--windows", type=int, help="CPU windows per node count (default 1)")
    parser.add_argument("--rounds", type=int, help="client rounds per worker count (default 3)")
    parser.add_argument("--markdown", metavar="FILE", help="also write machine and tables as markdown")
    parser.add_argument("--config", help=argparse.SUPPRESS)  # one client's measurement, in its own process
    args = parser.parse_args(argv)
    if args.config:
        measure_client(json.loads(args.config))
        return 0
    quick = args.quick
    parts = ["client", "control"] if args.only is None else [p.strip() for p in args.only.split(",") if p.strip()]
    if not parts or set(parts) - {"client", "control"}:
        raise SystemExit("--only takes client, control or both")
    worker_counts = parse_counts(args.workers or ("4,8" if quick else "16,64,256"), "--workers")
    node_counts = parse_counts(args.nodes or ("2,4" if quick else "16,64,256"), "--nodes")
    per_node = args.per_node or (2 if quick else 8)
    seconds = args.seconds or (2.0 if quick else 25.0)
    windows = args.windows or 1
    rounds = args.rounds or (1 if quick else 3)
    if min(per_node, windows, rounds) < 1 or seconds <= 0:
        raise SystemExit("sizes must be positive")

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the finally blocks stop the daemons
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    machine = report.machine_info(REPOSITORY)
    print("# lucidity footprint: client per worker, control per node" + (" (--quick)" if quick else ""))
    for label, value in machine:
        print(f"{label + ':':<24}{value}")
    print(flush=True)
    started = time.monotonic()
    sections: list[tuple[str, list[Table]]] = []
    if "client" in parts:
        sections.append((f"Client: open files and RSS against workers known ({per_node} workers per node, medians "
                         f"of {rounds} round(s))", list(client_tables(run_clients(worker_counts, per_node, rounds)))))
    if "control" in parts:
        sections.append((f"Control daemon: CPU with idle nodes (median of {windows} window(s) of {seconds:g} s)",
                         list(control_tables(run_control(node_counts, seconds, windows), seconds))))
    elapsed = time.monotonic() - started
    machine.append(("load average at end", " ".join(f"{load:.2f}" for load in os.getloadavg())))
    print(f"\nResults ({elapsed:.0f} s; load average at end {machine[-1][1]})")
    for title, tables in sections:
        print(f"\n## {title}\n")
        for header, body in tables:
            print(report.text_table(header, body) + "\n")
    if args.markdown:
        lines = ["#### Machine", ""] + [f"- {label}: {value}" for label, value in machine]
        lines.append(f"- elapsed: {elapsed:.0f} s")
        for title, tables in sections:
            lines += ["", f"#### {title}"]
            for header, body in tables:
                lines += ["", report.markdown_table(header, body)]
        with open(args.markdown, "w") as out:
            out.write("\n".join(lines) + "\n")
        print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
