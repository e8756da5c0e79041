"""``python -m benchmarks``: every workload against lucidity and its peers, in one run, as one table.

The peers, each with 2 worker processes: lucidity.Pool on the embedded cluster, lucidity.Pool on a cluster
started from the CLI (2 node daemons x 1 worker, over TCP), lucidity.Executor, multiprocessing.Pool with
the fork and the spawn context, concurrent.futures.ProcessPoolExecutor and loky. A peer that is not
installed is skipped with a note. See docs/performance.md for what each workload measures.

How a run goes: the CLI cluster is started once; then, in each of ``--rounds`` rounds, every peer runs
every workload in a fresh process of its own (`benchmarks.runner`), the peers in a rotated order, so that
a burst of load from elsewhere on the machine spreads over the peers instead of landing on one. Samples of
all rounds are pooled and each cell is their median (percentiles for apply). The CLI cluster is stopped
at the end, also on error or Ctrl-C.

Options: ``--quick`` (smaller sizes, one round: a smoke test under a minute), ``--only apply,map``
(workloads; ``--only latency`` is apply,map,map-chunk1,submit), ``--peers lucidity,mp-fork``,
``--markdown FILE`` (machine, table and targets as markdown).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

from . import report, workloads
from .cli_cluster import CliCluster
from .peers import ALL_PEERS, DESCRIPTIONS, LUCIDITY_CLI, PROCESSES, unavailable_reason
from .runner import PREFIX

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class RunSizes:
    """A run's sizes: `Sizes` plus the rounds, with the apply calls, array round trips and fresh pools as
    totals over all rounds (the other workloads run once per round)."""

    rounds: int
    sizes: workloads.Sizes
    #: Seconds one peer's process may take for one round before it is killed (its finished workloads count).
    peer_timeout: float

    def per_round(self) -> workloads.Sizes:
        """The sizes one round of one peer runs: the totals divided over the rounds, rounded up."""
        return dataclasses.replace(self.sizes, apply_calls=math.ceil(self.sizes.apply_calls / self.rounds),
                                   array_repeats=math.ceil(self.sizes.array_repeats / self.rounds),
                                   starts=math.ceil(self.sizes.starts / self.rounds))


FULL = RunSizes(5, workloads.Sizes(apply_calls=2000, apply_warmup=50, map_items=100_000, map1_items=10_000,
                                   submits=10_000, array_bytes=64 * report.MIB, array_repeats=5, starts=5,
                                   timeout=120.0), peer_timeout=300.0)
QUICK = RunSizes(1, workloads.Sizes(apply_calls=300, apply_warmup=20, map_items=20_000, map1_items=2_000,
                                    submits=2_000, array_bytes=16 * report.MIB, array_repeats=2, starts=2,
                                    timeout=30.0), peer_timeout=60.0)
#: Lines of a failed peer process's stderr shown.
STDERR_TAIL_LINES = 15
#: Names --only accepts for several workloads: issue 13's latency rows (apply p50, chunksize=1 map, submit+wait,
#: and the default-chunk map, whose lucidity-exec ÷ mp-fork column is Executor.map against Pool.map).
GROUPS = {"latency": ["apply", "map", "map-chunk1", "submit"]}
#: Node daemons of the CLI cluster, with PROCESSES // CLI_NODES workers each: 2 workers, as every other peer.
CLI_NODES = 2


def parse_names(text: Optional[str], choices: list[str], what: str) -> list[str]:
    if text is None:
        return list(choices)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(choices)}")
    return [name for name in choices if name in names]


class Collector:
    """Samples and first error per peer and metric, pooled over the rounds."""

    def __init__(self) -> None:
        self.samples: report.Samples = {}
        self.errors: dict[str, dict[str, str]] = {}

    def add(self, peer: str, line: dict[str, Any]) -> None:
        if "error" in line:
            self.errors.setdefault(peer, {}).setdefault(line["metric"], line["error"])
        else:
            self.samples.setdefault(peer, {}).setdefault(line["metric"], []).extend(line["samples"])

    def fail(self, peer: str, names: list[str], message: str) -> None:
        for name in names:
            for metric in workloads.METRICS[name]:
                self.errors.setdefault(peer, {}).setdefault(metric, message)


def run_peer(peer: str, names: list[str], sizes: workloads.Sizes, timeout: float, collector: Collector,
             cluster: Optional[CliCluster]) -> str:
    """One round of one peer in a fresh process; returns a one-line summary for the progress log."""
    config: dict[str, Any] = {"peer": peer, "workloads": names, "sizes": dataclasses.asdict(sizes)}
    if cluster is not None:
        config.update(address=cluster.address, node_pids=cluster.node_pids)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    env.pop("LUCIDITY_ADDRESS", None)  # the embedded peers must start their own cluster
    started = time.monotonic()
    # Files, not pipes: an embedded cluster's daemons inherit them and may outlive the runner by a moment.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.runner", "--config", json.dumps(config)],
                                cwd=REPOSITORY, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:
                # Its own session: this stops the runner and the pool workers it forked or spawned.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        seen: set[str] = set()
        errors = 0
        for raw in out.read().decode(errors="replace").splitlines():
            if raw.startswith(PREFIX):
                line = json.loads(raw[len(PREFIX):])
                collector.add(peer, line)
                seen.add(line["metric"])
                errors += "error" in line
        missing = [name for name in names if not set(workloads.METRICS[name]) & seen]
        why = f"timed out after {timeout:.0f} s" if timed_out else f"runner exited with status {proc.returncode}"
        collector.fail(peer, missing, why)
        summary = f"{peer:<14} {time.monotonic() - started:6.1f} s"
        if missing or errors or proc.returncode:
            err.seek(0)
            tail = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
            summary += f"  {errors + len(missing)} workload(s) failed ({why if missing else 'see the notes'})"
            if tail:
                summary += "; stderr tail:\n    " + "\n    ".join(tail[-STDERR_TAIL_LINES:])
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Every workload against lucidity "
                                     "and its peers, in one run, as one table (see docs/performance.md).")
    parser.add_argument("--quick", action="store_true", help="small sizes and one round: a smoke test")
    parser.add_argument("--only", help=f"workloads to run, comma-separated: {','.join(workloads.ORDER)}; "
                        f"or latency ({','.join(GROUPS['latency'])})")
    parser.add_argument("--peers", help=f"peers to run, comma-separated: {','.join(ALL_PEERS)}")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 1 with --quick)")
    parser.add_argument("--markdown", metavar="FILE", help="also write machine, table and targets as markdown")
    args = parser.parse_args(argv)
    only = args.only if args.only is None else ",".join(
        ",".join(GROUPS.get(name.strip(), [name.strip()])) for name in args.only.split(","))
    names = parse_names(only, workloads.ORDER, "workload")
    run_sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be at least 1")
        run_sizes = dataclasses.replace(run_sizes, rounds=args.rounds)
    rounds, sizes = run_sizes.rounds, run_sizes.sizes
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the CLI cluster.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    notes: list[str] = []
    peers = []
    for peer in parse_names(args.peers, ALL_PEERS, "peer"):
        reason = unavailable_reason(peer)
        if reason:
            notes.append(f"{peer} skipped: {reason}")
        else:
            peers.append(peer)
    machine = report.machine_info(REPOSITORY)
    print("# lucidity benchmarks" + (" (--quick: small sizes, not for comparison)" if args.quick else ""))
    for label, value in machine:
        print(f"{label + ':':<24}{value}")
    for note in notes:
        print(f"note: {note}")
    print(f"{len(peers)} peers x {len(names)} workloads x {rounds} round(s), {PROCESSES} workers each\n", flush=True)

    run_started = time.monotonic()
    collector = Collector()
    cluster: Optional[CliCluster] = None
    try:
        if LUCIDITY_CLI in peers:
            cluster = CliCluster(CLI_NODES, PROCESSES // CLI_NODES, REPOSITORY)
            try:
                cluster.start()
            except Exception as exc:
                notes.append(f"{LUCIDITY_CLI} skipped: the CLI cluster did not start ({exc})")
                print(f"note: {notes[-1]}")
                peers.remove(LUCIDITY_CLI)
                cluster.close()
                cluster = None
        per_round = run_sizes.per_round()
        for index in range(rounds):
            shift = index % len(peers) if peers else 0
            for peer in peers[shift:] + peers[:shift]:
                peer_names = names
                if peer == LUCIDITY_CLI and index > 0:
                    # The CLI cluster's workers live through every round: after the first, they are no
                    # longer the fresh workers the idle-memory workload is about (numpy imported, etc.).
                    peer_names = [name for name in names if name != "memory"]
                summary = run_peer(peer, peer_names, per_round, run_sizes.peer_timeout, collector,
                                   cluster if peer == LUCIDITY_CLI else None)
                print(f"round {index + 1}/{rounds}  {summary}", flush=True)
    finally:
        if cluster is not None:
            cluster.close()
    elapsed = time.monotonic() - run_started
    machine.append(("load average at end", " ".join(f"{load:.2f}" for load in os.getloadavg())))

    rows = report.make_rows(sizes.map_items, sizes.map1_items, sizes.submits, sizes.array_bytes)
    selected_metrics = {metric for name in names for metric in workloads.METRICS[name]}
    results = report.Results(peers, [row for row in rows if row.metric in selected_metrics],
                             collector.samples, collector.errors)
    print(f"\nResults ({elapsed:.0f} s; load average at end {machine[-1][1]}). {report.RATIO_NOTE}\n")
    print(report.text_table(*results.table()))
    if results.has_targets():
        print("\nTargets (from the issue; they are about lucidity.Pool on the embedded cluster, the first column):\n")
        print(report.text_table(*results.target_table()))
    for note in notes + results.error_notes():
        print(f"note: {note}")
    if args.markdown:
        write_markdown(args.markdown, machine, results, notes, rounds, elapsed)
        print(f"\nmarkdown written to {args.markdown}")
    return 0


def write_markdown(path: str, machine: list[tuple[str, str]], results: report.Results, notes: list[str],
                   rounds: int, elapsed: float) -> None:
    lines = ["### Machine", ""]
    lines += [f"- {label}: {value}" for label, value in machine]
    lines += ["", "### Peers", ""]
    lines += [f"- **{peer}**: {DESCRIPTIONS[peer]}" for peer in results.peers]
    lines += ["", f"### Results ({rounds} round(s), {elapsed:.0f} s)", "", report.RATIO_NOTE, "",
              report.markdown_table(*results.table())]
    if results.has_targets():
        lines += ["", "### Targets", "", "The issue's targets are about lucidity.Pool on the embedded cluster (the "
                  "first column); the other lucidity peers are shown for comparison.", "",
                  report.markdown_table(*results.target_table())]
    extra = notes + results.error_notes()
    if extra:
        lines += ["", "### Notes", ""] + [f"- {note}" for note in extra]
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
