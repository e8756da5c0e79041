"""One round of one peer, in a process of its own: ``python -m benchmarks.runner --config JSON``.

The orchestrator (`benchmarks.__main__`) starts this once per peer and round, so that no peer runs in a
process another peer has touched: a fork-based pool would otherwise copy whatever the previous peers left
in memory, and a hung peer can be killed without losing the others. Results go to stdout as lines
``BENCH {"metric": ..., "samples": [...]}`` or ``BENCH {"metric": ..., "error": "..."}``, written as
each workload finishes, so a peer killed for taking too long still reports what it had measured.

The config holds the peer's name, the workloads, the `Sizes` of one round, and for lucidity-cli the
cluster's address and node daemon pids.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any, Optional

from . import workloads
from .peers import Peer, make_peer

#: The marker that starts every result line on stdout.
PREFIX = "BENCH "


def emit(metric: str, samples: list[float]) -> None:
    print(PREFIX + json.dumps({"metric": metric, "samples": samples}), flush=True)


def emit_error(names: list[str], exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    for name in names:
        for metric in workloads.METRICS[name]:
            print(PREFIX + json.dumps({"metric": metric, "error": message}), flush=True)


def open_warm(peer: Peer, sizes: workloads.Sizes) -> Any:
    pool = peer.open()
    try:
        workloads.warm_up(peer, pool, sizes)
    except BaseException:
        peer.kill(pool)
        raise
    return pool


def run(peer: Peer, names: list[str], sizes: workloads.Sizes) -> None:
    """Run the workloads `names` on `peer`: a shared warmed-up pool first, then the startup workload.

    A workload that fails reports an error for its metrics; the pool is killed and a fresh one opened for
    the next workload, since a failure may have left it stuck.
    """
    shared = [name for name in workloads.ORDER if name in names and name in workloads.ON_SHARED_POOL]
    pool: Optional[Any] = None
    for index, name in enumerate(shared):
        try:
            if pool is None:
                pool = open_warm(peer, sizes)
        except Exception as exc:
            traceback.print_exc()
            emit_error(shared[index:], exc)
            break
        try:
            workloads.ON_SHARED_POOL[name](peer, pool, sizes, emit)
        except Exception as exc:
            traceback.print_exc()
            emit_error([name], exc)
            peer.kill(pool)
            pool = None
    if pool is not None:
        peer.close(pool)
    if "startup" in names:
        try:
            workloads.startup(peer, sizes, emit)
        except Exception as exc:
            traceback.print_exc()
            emit_error(["startup"], exc)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="JSON: peer, workloads, sizes, address, node_pids")
    config = json.loads(parser.parse_args(argv).config)
    peer = make_peer(config["peer"], config.get("address"), config.get("node_pids", ()))
    run(peer, config["workloads"], workloads.Sizes(**config["sizes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
