"""Turning pooled samples into the results table, the ratio columns and the targets, as text or markdown.

Rows are workloads, columns are peers, then ratio columns "A ÷ B": A's value divided by B's, in the row's
own unit. Every row says which way is better, which fixes how to read its ratios: for a time or a size
(lower is better, ↓) a ratio below 1 favours A; for a throughput (higher is better, ↑) a ratio above 1
favours A.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .peers import LOKY, LUCIDITY, LUCIDITY_CLI, LUCIDITY_EXECUTOR, LUCIDITY_PEERS, MP_FORK, MP_SPAWN, PPE

MIB = 2**20
#: The ratio columns, (numerator, denominator), kept when both peers ran.
RATIOS = [(LUCIDITY, MP_FORK), (LUCIDITY, MP_SPAWN), (LUCIDITY, PPE), (LUCIDITY, LOKY), (LUCIDITY_EXECUTOR, PPE),
          # Executor.map against the stdlib's Pool.map with the same chunking (issue 13's target), and against
          # lucidity's own Pool.map on the same kind of cluster, which tells the face's cost from the core's.
          (LUCIDITY_EXECUTOR, MP_FORK), (LUCIDITY_EXECUTOR, LUCIDITY)]

#: samples[peer][metric]: every sample of every round.
Samples = dict[str, dict[str, list[float]]]


def percentile(values: list[float], percent: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least `percent` % of samples at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    metric: str
    statistic: Callable[[list[float]], float]
    #: Multiplies the statistic into `unit`.
    scale: float
    higher_is_better: bool

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit}) {'↑' if self.higher_is_better else '↓'}"


def make_rows(map_items: int, map1_items: int, submits: int, array_bytes: int) -> list[Row]:
    """The table's rows; the labels carry this run's sizes."""
    median = statistics.median
    return [
        Row("apply_p50", "apply no-op p50", "ms", "apply_latency", lambda v: percentile(v, 50), 1e3, False),
        Row("apply_p99", "apply no-op p99", "ms", "apply_latency", lambda v: percentile(v, 99), 1e3, False),
        Row("map", f"map {map_items:,} tiny, default chunks", "tasks/s", "map_throughput", median, 1, True),
        Row("map1", f"map {map1_items:,} tiny, chunksize=1", "tasks/s", "map1_throughput", median, 1, True),
        Row("submit", f"submit {submits:,} + wait", "tasks/s", "submit_throughput", median, 1, True),
        Row("array", f"{array_bytes // MIB} MiB array round trip", "GB/s", "array_gbps", median, 1, True),
        Row("start", "new pool to first result", "s", "start_time", median, 1, False),
        Row("close", "close+join / shutdown", "s", "close_time", median, 1, False),
        Row("start_cpu", "CPU of a new pool, open to closed", "ms", "start_cpu", median, 1e3, False),
        Row("worker_uss", "idle worker USS", "MiB", "worker_uss", median, 1 / MIB, False),
        Row("daemon_uss", "node daemon USS", "MiB", "daemon_uss", median, 1 / MIB, False),
    ]


@dataclass(frozen=True)
class Target:
    """A goal from the issue: a ratio to a peer (`versus`) or an absolute value, bounded above or below."""

    text: str
    row: str
    bound: float
    at_most: bool
    versus: Optional[str] = None
    #: The peers the target is about (None: every lucidity peer); the others show "n/a".
    peers: Optional[tuple[str, ...]] = None

    def check(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound


#: Issue 13's targets ("Speed II"), and the earlier ones it keeps ("nothing already met gets worse").
TARGETS = [
    Target("apply p50 ≤ 1.2× mp-fork's", "apply_p50", 1.2, True, MP_FORK),
    Target("default-chunk map throughput ≥ 0.7× mp-fork's", "map", 0.7, False, MP_FORK, (LUCIDITY, LUCIDITY_CLI)),
    Target("Executor.map ≥ 0.9× mp-fork's Pool.map, same chunks", "map", 0.9, False, MP_FORK, (LUCIDITY_EXECUTOR,)),
    Target("chunksize=1 map throughput ≥ 1.2× mp-fork's", "map1", 1.2, False, MP_FORK),
    Target("submit+wait throughput ≥ 3× PPE's", "submit", 3.0, False, PPE),
    Target("array round trip ≥ 1.0 GB/s", "array", 1.0, False),
    Target("new pool to first result < 0.1 s", "start", 0.1, True, None, (LUCIDITY, LUCIDITY_EXECUTOR)),
    Target("idle worker USS < 10 MiB", "worker_uss", 10.0, True),
]
#: The peers the targets are evaluated for; the issue's targets are about the first (the embedded Pool).
TARGET_PEERS = list(LUCIDITY_PEERS)


class Results:
    """The pooled samples and errors of a run, and the table built from them."""

    def __init__(self, peers: list[str], rows: list[Row], samples: Samples, errors: dict[str, dict[str, str]]):
        self.peers = peers
        self.rows = rows
        self.samples = samples
        self.errors = errors
        self.ratios = [(a, b) for a, b in RATIOS if a in peers and b in peers]

    def value(self, peer: str, row: Row) -> Optional[float]:
        values = self.samples.get(peer, {}).get(row.metric)
        return row.statistic(values) * row.scale if values else None

    def ratio(self, numerator: str, denominator: str, row: Row) -> Optional[float]:
        a, b = self.value(numerator, row), self.value(denominator, row)
        return a / b if a is not None and b else None

    def cell(self, peer: str, row: Row) -> str:
        value = self.value(peer, row)
        if value is not None:
            return format_value(value, row.unit)
        if row.metric == "daemon_uss" and peer not in LUCIDITY_PEERS:
            return "n/a"
        return "error" if row.metric in self.errors.get(peer, {}) else "—"

    def ratio_cell(self, numerator: str, denominator: str, row: Row) -> str:
        ratio = self.ratio(numerator, denominator, row)
        return "n/a" if ratio is None else f"{ratio:.2f}"

    def table(self) -> tuple[list[str], list[list[str]]]:
        header = ["workload (unit), ↑ higher or ↓ lower is better", *self.peers,
                  *[f"{a} ÷ {b}" for a, b in self.ratios]]
        body = [[row.title, *[self.cell(p, row) for p in self.peers],
                 *[self.ratio_cell(a, b, row) for a, b in self.ratios]] for row in self.rows]
        return header, body

    def has_targets(self) -> bool:
        """Whether any target can be shown: a lucidity peer ran, and a workload a target is about."""
        keys = {row.key for row in self.rows}
        return any(p in self.peers for p in TARGET_PEERS) and any(t.row in keys for t in TARGETS)

    def target_table(self) -> tuple[list[str], list[list[str]]]:
        peers = [p for p in TARGET_PEERS if p in self.peers]
        rows = {row.key: row for row in self.rows}
        header = ["target", *peers]
        body = []
        for target in TARGETS:
            if target.row not in rows:  # its workload was not selected
                continue
            if target.peers is not None and not set(target.peers) & set(peers):  # nor the peers it is about
                continue
            row = rows[target.row]
            cells = [target.text]
            for peer in peers:
                if target.peers is not None and peer not in target.peers:
                    cells.append("n/a")
                    continue
                if target.versus is None:
                    value = self.value(peer, row)
                    shown = None if value is None else format_value(value, row.unit) + f" {row.unit}"
                else:
                    value = self.ratio(peer, target.versus, row) if target.versus in self.peers else None
                    shown = None if value is None else f"{value:.2f}×"
                if value is None:
                    cells.append("not measured")
                else:
                    cells.append(f"{shown}: {'met' if target.check(value) else 'NOT met'}")
            body.append(cells)
        return header, body

    def error_notes(self) -> list[str]:
        """One line per peer and error message, naming the metrics it hit."""
        notes = []
        for peer, errors in self.errors.items():
            by_message: dict[str, list[str]] = {}
            for metric, message in errors.items():
                by_message.setdefault(message, []).append(metric)
            for message, metrics in by_message.items():
                partly = [m for m in metrics if self.samples.get(peer, {}).get(m)]
                when = " (in some rounds only; the cells use the other rounds)" if partly else ""
                notes.append(f"{peer} failed {', '.join(metrics)}{when}: {message}")
        return notes


def format_value(value: float, unit: str) -> str:
    if unit == "tasks/s":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *[line(cells) for cells in body]])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


RATIO_NOTE = ("Ratios are the first peer's value ÷ the second's, in the row's unit. Rows marked ↓ (times, memory; "
              "lower is better): a ratio < 1 favours the first peer. Rows marked ↑ (throughputs; higher is "
              "better): a ratio > 1 favours the first peer.")


def machine_info(repository: str) -> list[tuple[str, str]]:
    """What the numbers depend on: CPU, cores, load, kernel, Python and library versions, lucidity's commit."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    info = [
        ("CPU", model),
        ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this process)"),
        ("load average at start", " ".join(f"{load:.2f}" for load in os.getloadavg())),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
    ]
    for label, version in (("pyzmq / libzmq", _zmq_versions), ("numpy", lambda: _version_of("numpy")),
                           ("loky", lambda: _version_of("loky")), ("lucidity", lambda: _lucidity_version(repository))):
        try:
            info.append((label, version()))
        except Exception as exc:  # a missing library is a fact to report, not a reason to stop
            info.append((label, f"unavailable ({type(exc).__name__})"))
    info.append(("date", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    return info


def _zmq_versions() -> str:
    import zmq

    return f"{zmq.__version__} / {zmq.zmq_version()}"


def _version_of(module: str) -> str:
    import importlib

    return str(importlib.import_module(module).__version__)


def _lucidity_version(repository: str) -> str:
    import lucidity

    try:
        commit = subprocess.run(["git", "-C", repository, "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return lucidity.__version__
    return f"{lucidity.__version__} (git {commit})"
