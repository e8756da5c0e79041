"""Placement: which node each task of a `@job` function goes to, as a pure function of what the client knows.

The input is the nodes a client knows (`lucidity.links.NodeInfo`: workers, tasks running there, ours placed
there) and a `Fanout` scheme; the output is a node name for each task. Nothing here does I/O or keeps
state: the turn of a round robin is the caller's (a `JobFunction` counts its own), and `random` takes the
generator to draw from, so that every scheme can be tested with plain `NodeInfo` values.

A placement is a preference, not a guarantee: the client sends a task placed on a node that has left to
any worker (`lucidity.task.Task.node`). Pool and Executor do not place: the client's windows spread their
tasks over every worker.
"""

from __future__ import annotations

import enum
import random
from typing import Optional, Sequence

from .links import NodeInfo

__all__ = ["Fanout", "place", "local_node"]


class Fanout(str, enum.Enum):
    """How `remote`, `remote_async` and `remote_fanout` spread tasks over nodes.

    A str Enum: ``Fanout("random")`` is ``Fanout.RANDOM``, and ``Fanout.RANDOM == "random"``, so the strings
    users pass to ``@job(fanout=...)`` keep working and compare equal to the scheme they name.
    """

    ROUNDROBIN = "roundrobin"  # node after node, in the order the control node lists them
    RANDOM = "random"  # a node drawn uniformly for each task
    LEAST_LOADED = "least_loaded"  # the fewest tasks running and queued per worker, counting this burst

    def __str__(self) -> str:
        """The string users wrote: ``f"{job.fanout}"`` is "random" (as enum.StrEnum prints, from 3.11)."""
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


def place(nodes: Sequence[NodeInfo], scheme: Fanout, count: int, *, turn: int = 0,
          rng: Optional[random.Random] = None) -> list[Optional[str]]:
    """The node for each of `count` tasks placed together, by `scheme`.

    Args:
        nodes: the nodes the client knows, in the control node's order (`Client.nodes`).
        scheme: the fanout scheme.
        count: how many tasks to place.
        turn: for ROUNDROBIN, the position of the first task in the caller's round (the caller then moves
            its turn on by `count`).
        rng: for RANDOM, the generator to draw from (default: the `random` module's).

    Returns:
        A node name per task; None for each task when no node is known yet (membership has not arrived),
        which lets the client send it to any worker as soon as one appears.
    """
    if not nodes:
        return [None] * count
    if scheme is Fanout.ROUNDROBIN:
        return [nodes[(turn + i) % len(nodes)].name for i in range(count)]
    if scheme is Fanout.RANDOM:
        choose = random.choice if rng is None else rng.choice
        return [choose(nodes).name for _ in range(count)]
    # LEAST_LOADED: each task placed adds to its node's load, so a burst spreads instead of piling up on
    # the node that was least loaded before it (the nodes' own counts arrive once a second).
    extra = {n.name: 0 for n in nodes}
    placed: list[Optional[str]] = []
    for _ in range(count):
        best = min(nodes, key=lambda n: (n.running + n.ours + extra[n.name]) / max(1, n.workers))
        extra[best.name] += 1
        placed.append(best.name)
    return placed


def local_node(nodes: Sequence[NodeInfo], here: Optional[str], host: str) -> Optional[str]:
    """The node for a task that must run on this machine, or None if no node of `nodes` runs here.

    Inside a task, the node running it (`here`), if it is a member; otherwise the least loaded node whose
    host is `host` (the first of them on a tie).
    """
    if here is not None and any(n.name == here for n in nodes):
        return here
    local = [n for n in nodes if n.host == host]
    if not local:
        return None
    return min(local, key=lambda n: n.load).name
