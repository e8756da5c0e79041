"""`lucidity demo`: the classic example of the original crate, on an embedded cluster.

`pythagorean` runs as a job on a worker for each pair (a, b); it computes its two squares in two further
jobs (`square.remote_async`) and awaits both, so the demo exercises nested jobs too. Each line says which
node and worker ran the pair.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from .cluster import LocalCluster, connect, current_node
from .jobs import job

PAIRS = [(a, a + 1) for a in range(3, 10)]


@job
def square(a: int) -> int:
    return a * a


@job
def pythagorean(a: int, b: int) -> tuple[int, int, float, Optional[str], int]:
    """The hypotenuse of a right triangle with legs a and b, with the node and worker that computed it."""
    a2 = square.remote_async(a)
    b2 = square.remote_async(b)
    return a, b, math.sqrt(a2.await_get() + b2.await_get()), current_node(), os.getpid()


def run(processes: int = 2) -> None:
    with LocalCluster(processes=processes) as cluster:
        connect(cluster.address)
        print(f"lucidity demo: {len(PAIRS)} pairs over {processes} worker processes of an embedded cluster")
        for a, b, c, node, pid in pythagorean.remote_fanout(PAIRS):
            print(f"  sqrt({a}^2 + {b}^2) = {c:.4f}   on node {node}, worker {pid}")
        connect(None)
