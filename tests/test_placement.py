"""Placement as a pure function: each fanout scheme on plain NodeInfo values, no cluster and no socket."""

from __future__ import annotations

import collections
import random

import pytest

from lucidity.jobs import FANOUT_SCHEMES, JobFunction
from lucidity.links import NodeInfo
from lucidity.placement import Fanout, local_node, place


def node(name: str, *, host: str = "h1", workers: int = 2, running: int = 0, ours: int = 0) -> NodeInfo:
    return NodeInfo(name=name, host=host, workers=workers, running=running, ours=ours)


THREE = (node("a"), node("b"), node("c"))


def square(x: int) -> int:
    return x * x


def test_the_scheme_names_users_pass_are_the_enum_values() -> None:
    assert FANOUT_SCHEMES == ("roundrobin", "random", "least_loaded")
    assert [Fanout(name) for name in FANOUT_SCHEMES] == [Fanout.ROUNDROBIN, Fanout.RANDOM, Fanout.LEAST_LOADED]
    assert Fanout.RANDOM == "random"  # a str Enum: code comparing the strings keeps working
    assert f"{Fanout.RANDOM}" == str(Fanout.RANDOM) == "random"  # and it prints as the string users wrote
    with pytest.raises(ValueError):
        Fanout("bogus")


def test_a_job_takes_the_scheme_as_a_name_or_a_member_and_keeps_the_member() -> None:
    by_name = JobFunction(square, fanout="least_loaded")
    by_member = JobFunction(square, fanout=Fanout.LEAST_LOADED)
    assert by_name.fanout is by_member.fanout is Fanout.LEAST_LOADED
    assert by_name.options["fanout"] == "least_loaded" and "fanout=least_loaded" in repr(by_name)
    with pytest.raises(ValueError, match="roundrobin, random, least_loaded, not 'bogus'"):
        JobFunction(square, fanout="bogus")


@pytest.mark.parametrize("scheme", list(Fanout))
def test_without_membership_every_task_may_go_anywhere(scheme: Fanout) -> None:
    assert place((), scheme, 3) == [None, None, None]
    assert place(THREE, scheme, 0) == []


def test_roundrobin_goes_node_after_node_from_the_callers_turn() -> None:
    assert place(THREE, Fanout.ROUNDROBIN, 4) == ["a", "b", "c", "a"]
    assert place(THREE, Fanout.ROUNDROBIN, 2, turn=2) == ["c", "a"]
    assert place(THREE, Fanout.ROUNDROBIN, 1, turn=7) == ["b"]


def test_roundrobin_ignores_load() -> None:
    busy = (node("a", running=50), node("b"))
    assert place(busy, Fanout.ROUNDROBIN, 2) == ["a", "b"]


def test_random_draws_from_the_generator_given() -> None:
    first = place(THREE, Fanout.RANDOM, 20, rng=random.Random(7))
    assert first == place(THREE, Fanout.RANDOM, 20, rng=random.Random(7))
    assert set(first) <= {"a", "b", "c"}
    spread = collections.Counter(place(THREE, Fanout.RANDOM, 3000, rng=random.Random(1)))
    assert set(spread) == {"a", "b", "c"} and min(spread.values()) > 800


def test_least_loaded_picks_the_fewest_tasks_per_worker() -> None:
    nodes = (node("a", workers=2, running=4), node("b", workers=4, running=4), node("c", workers=1, running=2))
    assert place(nodes, Fanout.LEAST_LOADED, 1) == ["b"]  # 1 task per worker, against 2 and 2
    assert place((node("a", ours=3), node("b", running=1)), Fanout.LEAST_LOADED, 1) == ["b"]  # ours count too


def test_least_loaded_spreads_a_burst_by_counting_each_task_placed() -> None:
    nodes = (node("a", workers=2), node("b", workers=2, running=2))
    # b starts one task per worker ahead; a takes tasks until it catches up, then they alternate.
    assert place(nodes, Fanout.LEAST_LOADED, 6) == ["a", "a", "a", "b", "a", "b"]


def test_least_loaded_breaks_ties_by_the_order_of_the_nodes() -> None:
    assert place(THREE, Fanout.LEAST_LOADED, 3) == ["a", "b", "c"]
    assert place(tuple(reversed(THREE)), Fanout.LEAST_LOADED, 1) == ["c"]


def test_a_node_without_workers_counts_as_one_worker() -> None:
    assert place((node("a", workers=0, running=1), node("b", workers=1)), Fanout.LEAST_LOADED, 1) == ["b"]


def test_local_node_prefers_the_node_running_this_task() -> None:
    nodes = (node("a", host="h1", running=9), node("b", host="h1"))
    assert local_node(nodes, "a", "h1") == "a"


def test_local_node_otherwise_takes_the_least_loaded_node_on_this_host() -> None:
    nodes = (node("a", host="h1", running=4), node("b", host="h2"), node("c", host="h1", running=1))
    assert local_node(nodes, None, "h1") == "c"
    assert local_node(nodes, "gone", "h1") == "c"  # a task's node that is no member any more
    assert local_node(nodes, None, "h3") is None
    assert local_node((), None, "h1") is None
