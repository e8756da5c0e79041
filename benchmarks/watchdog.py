"""What the limits watchdog costs: the node daemon's CPU share, and the latency a memory cap adds to a task.

Run with ``python -m benchmarks.watchdog`` (``--seconds``, ``--applies`` to change the sample sizes). It
measures, on real processes:

- the node daemon's CPU share (user + system time of the daemon process over a window, divided by the
  window) with 2 and with 32 idle workers, where the watchdog is asleep, and with 2 workers each running a
  long task under a memory cap, where it samples every `lucidity.node.limits.WATCH_INTERVAL`;
- the median round trip of ``apply`` of a no-op on ``Pool(2)`` and on ``Pool(2, memory_limit="1GB")``
  (a capped task sets the worker's soft rlimit twice and wakes the watchdog), and their ratio. The two pools
  take turns, so that a change in the machine's load falls on both.

The results go in docs/limits.md; re-run it when the watchdog changes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import psutil

import lucidity
from lucidity.node import limits
from lucidity.status import query_status

#: How long to wait for a cluster's workers, or for tasks to start, in seconds.
READY_TIMEOUT = 120.0
#: Applies run before the timed ones (functions shipped, connections made).
WARMUP_APPLIES = 100


def noop() -> None:
    return None


def node_daemon(cluster: lucidity.LocalCluster) -> psutil.Process:
    """The cluster's node daemon: the one of its processes started as `lucidity node`."""
    for pid in cluster.pids:
        process = psutil.Process(pid)
        if "node" in process.cmdline():
            return process
    raise RuntimeError(f"no node daemon among {cluster.pids}")


def wait_for_workers(cluster: lucidity.LocalCluster, count: int, state: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        workers = [w for node in query_status(cluster.address)["nodes"] for w in node["workers"]]
        if len(workers) == count and all(w["state"] == state for w in workers):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{count} workers did not reach state {state!r} within {READY_TIMEOUT:.0f} s")


def cpu_share(process: psutil.Process, seconds: float) -> tuple[float, float]:
    """The CPU seconds `process` used over the next `seconds`, and the fraction of one core that is."""
    before = process.cpu_times()
    started = time.monotonic()
    time.sleep(seconds)
    after = process.cpu_times()
    elapsed = time.monotonic() - started
    used = max(0.0, after.user + after.system - before.user - before.system)
    return used, used / elapsed


def idle_share(processes: int, seconds: float) -> tuple[float, float]:
    with lucidity.LocalCluster(processes=processes) as cluster:
        wait_for_workers(cluster, processes, "ready")
        return cpu_share(node_daemon(cluster), seconds)


def watching_share(seconds: float) -> tuple[float, float]:
    """Two workers each sleeping through a task under a 1 GB cap: the watchdog samples both all along."""
    with lucidity.LocalCluster(processes=2, memory_limit="1GB") as cluster:
        wait_for_workers(cluster, 2, "ready")
        with lucidity.Pool(address=cluster.address) as pool:
            running = [pool.apply_async(time.sleep, (seconds + 3.0,)) for _ in range(2)]
            wait_for_workers(cluster, 2, "busy")
            share = cpu_share(node_daemon(cluster), seconds)
            for result in running:
                result.get(READY_TIMEOUT)
        return share


def median_applies(applies: int, rounds: int = 20) -> tuple[float, float]:
    """Median seconds of one ``apply(noop)`` round trip on Pool(2) and on Pool(2, memory_limit="1GB").

    Both pools stay open and take turns in `rounds` batches, so that drift in the machine's load (other
    processes, CPU frequency) falls on both alike.
    """
    times: tuple[list[float], list[float]] = ([], [])
    with lucidity.Pool(2) as plain, lucidity.Pool(2, memory_limit="1GB") as capped:
        pools = (plain, capped)
        for pool in pools:
            for _ in range(WARMUP_APPLIES):
                pool.apply(noop)
        for _ in range(rounds):
            for pool, samples in zip(pools, times):
                for _ in range(max(1, applies // rounds)):
                    started = time.perf_counter()
                    pool.apply(noop)
                    samples.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watchdog", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="CPU measurement window (default 5)")
    parser.add_argument("--applies", type=int, default=2000, help="timed applies per pool (default 2000)")
    args = parser.parse_args(argv)

    print(f"# lucidity watchdog cost: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}, WATCH_INTERVAL {limits.WATCH_INTERVAL * 1000:.0f} ms")
    print()
    tick = 1 / os.sysconf("SC_CLK_TCK")
    print(f"Node daemon CPU over {args.seconds:.0f} s (the kernel counts CPU time in {tick * 1000:.0f} ms ticks, "
          f"so the resolution is {100 * tick / args.seconds:.1f} % of a core)")
    print()
    print("| case | daemon CPU time | share of one core |")
    print("|---|---|---|")
    for label, measure in (("2 workers, idle", lambda: idle_share(2, args.seconds)),
                           ("32 workers, idle", lambda: idle_share(32, args.seconds)),
                           ("2 workers, each running a task under a memory cap (watchdog active)",
                            lambda: watching_share(args.seconds))):
        used, share = measure()
        print(f"| {label} | {used * 1000:.0f} ms | {100 * share:.1f} % |", flush=True)
    print()
    print(f"apply() round trip of a no-op, median of {args.applies}")
    print()
    plain, capped = median_applies(args.applies)
    print("| pool | median | ratio |")
    print("|---|---|---|")
    print(f"| Pool(2) | {plain * 1e6:.0f} µs | 1.00 |")
    print(f'| Pool(2, memory_limit="1GB") | {capped * 1e6:.0f} µs | {capped / plain:.2f} |')
    return 0


if __name__ == "__main__":
    sys.exit(main())
