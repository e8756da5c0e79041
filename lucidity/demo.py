"""`lucidity demo`: the classic example of the original crate, on an embedded cluster.

Each pair (a, b) goes to a worker, which computes the hypotenuse and says where it ran.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from .cluster import current_node
from .pool import Pool

PAIRS = [(a, a + 1) for a in range(3, 10)]


def pythagorean(a: int, b: int) -> tuple[int, int, float, Optional[str], int]:
    """The hypotenuse of a right triangle with legs a and b, with the node and worker that computed it."""
    return a, b, math.sqrt(a * a + b * b), current_node(), os.getpid()


def run(processes: int = 2) -> None:
    with Pool(processes) as pool:
        print(f"lucidity demo: {len(PAIRS)} pairs over {processes} worker processes of an embedded cluster")
        for a, b, c, node, pid in pool.starmap(pythagorean, PAIRS, chunksize=1):
            print(f"  sqrt({a}^2 + {b}^2) = {c:.4f}   on node {node}, worker {pid}")
