"""The job face with real processes: the five ways to run, Job futures, errors, nesting, fanout and retries.

Every function a task runs is defined at module level, so that workers import it by name (embedded workers
inherit sys.path; the CLI daemons get PYTHONPATH=tests from the fixture).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import pickle
import time
from multiprocessing.pool import RemoteTraceback
from typing import Iterator, Optional

import pytest

import lucidity
from lucidity import job
from lucidity.cluster import default_client
from lucidity.status import query_status

from helpers import WAIT, CliCluster, connected, wait_until

pytestmark = pytest.mark.timeout(90)


class Boom(ValueError):
    """A task's own exception type, which must come back as itself."""


@job
def square(a: int) -> int:
    """The square of a."""
    return a * a


@job
def add(a: int, b: int) -> int:
    return a + b


@job
def where(tag: object = None) -> tuple[int, Optional[str], object]:
    return os.getpid(), lucidity.current_node(), tag


@job
def slow(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


@job
def explode(message: str) -> None:
    raise Boom(message)


@job
def checked_square(a: int) -> int:
    if a < 0:
        raise Boom(f"negative input {a}")
    return a * a


@job
def sum_of_squares(a: int, b: int) -> int:
    """A job that runs two jobs and waits for both, from inside its worker."""
    first = square.remote_async(a)
    second = square.remote_async(b)
    return first.await_get(WAIT) + second.await_get(WAIT)


def plain_square(a: int) -> int:
    return a * a


@job
def squares_with_a_pool(n: int) -> tuple[list[int], Optional[str]]:
    """A task using a Pool of its own; Pool() inside a task reaches the task's cluster ($LUCIDITY_ADDRESS)."""
    with lucidity.Pool() as pool:
        return pool.map(plain_square, range(n), chunksize=1), lucidity.current_node()


@job(fanout="random")
def where_random(tag: object = None) -> Optional[str]:
    return lucidity.current_node()


@job(fanout="least_loaded")
def probe_least_loaded(release: str) -> Optional[str]:
    """Lets the holding tasks go (see hold_on) and says where it ran."""
    with open(release, "a"):
        pass
    return lucidity.current_node()


def hold_on(node: str, release: str) -> Optional[str]:
    """On `node`, keep this worker busy until the file `release` exists (at most WAIT s); elsewhere, return.

    A file, not a `helpers.Rendezvous`: the tasks that release the holds run on workers, not in the test.
    """
    if lucidity.current_node() != node:
        return None
    wait_until(lambda: os.path.exists(release), WAIT, f"the release file {release}")
    return node


def _count_attempt(counter: str) -> int:
    with open(counter, "a") as file:
        file.write("x")
    with open(counter) as file:
        return len(file.read())


@job(retries=2)
def crash_twice_then_succeed(counter: str) -> int:
    attempt = _count_attempt(counter)
    if attempt <= 2:
        os._exit(3)
    return attempt


@job
def crash_once(counter: str) -> int:
    attempt = _count_attempt(counter)
    if attempt <= 1:
        os._exit(3)
    return attempt


# -- clusters --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Iterator[lucidity.LocalCluster]:
    """One embedded node with two workers: two worker processes in all."""
    with lucidity.LocalCluster(processes=2) as cluster:
        yield cluster


@pytest.fixture
def on_embedded(embedded: lucidity.LocalCluster) -> Iterator[str]:
    with connected(embedded.address):  # the cluster lives on for the module
        yield "local"


@pytest.fixture
def on_cli(cli_cluster: CliCluster) -> Iterator[CliCluster]:
    with connected(cli_cluster.address):
        yield cli_cluster


@pytest.fixture(params=["embedded", "cli"])
def nodes(request: pytest.FixtureRequest, embedded: lucidity.LocalCluster) -> set[str]:
    """Jobs connected to the embedded cluster, then to the two-node CLI cluster; the node names there.

    The module's embedded cluster is requested up front even for "cli", so that it starts before the
    leak check takes its list of processes.
    """
    if request.param == "embedded":
        request.getfixturevalue("on_embedded")
        return {"local"}
    request.getfixturevalue("on_cli")
    return {"n1", "n2"}


# -- the five ways to run ------------------------------------------------------------------------------


def test_plain_call_runs_in_this_process(nodes: set[str]) -> None:
    assert where("here") == (os.getpid(), None, "here")
    assert square(7) == 49


def test_local_and_remote_run_in_a_worker(nodes: set[str]) -> None:
    for variant in (where.local, where.remote):
        pid, node, tag = variant(tag="kw")
        assert pid != os.getpid()
        assert node in nodes
        assert tag == "kw"
    assert square.local(5) == 25
    assert square.remote(6) == 36


def test_remote_reaches_every_node_in_turn(nodes: set[str]) -> None:
    assert {where.remote()[1] for _ in range(2 * len(nodes))} == nodes


def test_async_variants_return_jobs_that_are_futures(nodes: set[str]) -> None:
    for variant in (square.local_async, square.remote_async):
        one = variant(9)
        assert isinstance(one, lucidity.Job)
        assert isinstance(one, concurrent.futures.Future)
        assert one.await_get(WAIT) == 81
        assert one.done() and one.result(0) == 81 and one.exception(0) is None


@pytest.mark.parametrize("variant", ["local_async", "remote_async"])
def test_try_get_before_and_after_completion(nodes: set[str], variant: str) -> None:
    one = getattr(slow, variant)(0.5, "done")
    assert one.try_get(default="x") == "x"
    assert one.try_get() is None
    assert not one.done()
    assert one.await_get(WAIT) == "done"
    assert one.try_get(default="x") == "done"


def test_await_get_blocks_until_done_or_times_out(nodes: set[str]) -> None:
    submitted = time.monotonic()
    one = slow.remote_async(0.5, "late")
    with pytest.raises(TimeoutError):
        one.await_get(0.05)
    assert time.monotonic() - submitted >= 0.05
    assert one.await_get(WAIT) == "late"
    assert time.monotonic() - submitted >= 0.5  # it blocked until the task had slept its half second
    assert one.done()


def test_jobs_work_with_concurrent_futures_helpers(nodes: set[str]) -> None:
    jobs = [square.remote_async(i) for i in range(6)]
    done, not_done = concurrent.futures.wait(jobs, timeout=WAIT)
    assert not not_done
    assert sorted(j.result() for j in concurrent.futures.as_completed(jobs, timeout=WAIT)) == [
        i * i for i in range(6)]


def test_await_a_job_in_asyncio(nodes: set[str]) -> None:
    async def main() -> tuple[int, list[object]]:
        one = await square.remote_async(8)
        many = await asyncio.wait_for(asyncio.gather(*(slow.local_async(0.05, i) for i in range(4))), WAIT)
        return one, many

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == (64, [0, 1, 2, 3])


def test_remote_fanout_unpacks_tuples_and_keeps_order(nodes: set[str]) -> None:
    assert add.remote_fanout([(1, 2), (3, 4), (5, 6)]) == [3, 7, 11]
    assert square.remote_fanout([(1,), 2, (3,)]) == [1, 4, 9]
    assert square.remote_fanout(range(20)) == [i * i for i in range(20)]
    assert where.remote_fanout([[1, 2]])[0][2] == [1, 2]  # a list is one argument, not unpacked
    # Earlier items take longer, so they finish last; the results still come in item order.
    assert slow.remote_fanout([(0.3, 0), (0.2, 1), (0.1, 2), (0.0, 3)]) == [0, 1, 2, 3]
    assert square.remote_fanout([]) == []


# -- errors ---------------------------------------------------------------------------------------------


def assert_remote(error: BaseException, text: str) -> None:
    assert isinstance(error, Boom)
    assert text in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "Boom" in str(error.__cause__)


def test_remote_raises_the_jobs_own_exception(nodes: set[str]) -> None:
    for variant in (explode.remote, explode.local):
        with pytest.raises(Boom, match="from remote") as caught:
            variant("from remote")
        assert_remote(caught.value, "from remote")
        assert "explode" in str(caught.value.__cause__)


def test_await_get_and_try_get_raise_the_jobs_exception(nodes: set[str]) -> None:
    one = explode.remote_async("awaited")
    with pytest.raises(Boom) as caught:
        one.await_get(WAIT)
    assert_remote(caught.value, "awaited")
    assert "explode" in str(caught.value.__cause__)
    with pytest.raises(Boom):
        one.try_get(default="x")  # done: raises rather than returning the default
    assert isinstance(one.exception(0), Boom)

    other = explode.local_async("tried")
    concurrent.futures.wait([other], timeout=WAIT)
    with pytest.raises(Boom) as caught:
        other.try_get(default="x")
    assert_remote(caught.value, "tried")


def test_remote_fanout_raises_the_first_failed_item(nodes: set[str]) -> None:
    with pytest.raises(Boom) as caught:
        checked_square.remote_fanout([1, 2, -3, 4, -5])
    assert_remote(caught.value, "negative input -3")
    assert "checked_square" in str(caught.value.__cause__)
    # The cluster keeps serving after a failed fanout.
    assert checked_square.remote_fanout([1, 2, 3]) == [1, 4, 9]


# -- nested jobs ----------------------------------------------------------------------------------------


def test_a_job_awaits_jobs_it_started(nodes: set[str]) -> None:
    assert sum_of_squares.remote(3, 4) == 25
    assert sum_of_squares.local_async(1, 2).await_get(WAIT) == 5


@pytest.mark.timeout(60)
def test_nested_jobs_on_two_workers_do_not_deadlock(on_embedded: str, embedded: lucidity.LocalCluster) -> None:
    # Eight outer jobs, each awaiting two inner ones, on two worker processes in all: with plain blocking
    # waits every worker would hold an outer job and the inner jobs would queue behind them for ever.
    assert embedded.processes == 2 and embedded.nodes == 1
    started = time.monotonic()
    results = sum_of_squares.remote_fanout([(i, i + 1) for i in range(8)])
    assert results == [i * i + (i + 1) * (i + 1) for i in range(8)]
    assert time.monotonic() - started < WAIT


def test_a_job_uses_a_pool_inside_itself(nodes: set[str]) -> None:
    values, node = squares_with_a_pool.remote(10)
    assert values == [i * i for i in range(10)]
    assert node in nodes


# -- fanout schemes on two nodes ------------------------------------------------------------------------


def test_roundrobin_alternates_nodes(on_cli: CliCluster) -> None:
    placed = [node for _, node, _ in where.remote_fanout(range(10))]
    assert set(placed) == {"n1", "n2"}
    assert all(a != b for a, b in zip(placed, placed[1:])), placed
    # The turn carries over between calls: two single remotes land on different nodes.
    assert {where.remote()[1], where.remote()[1]} == {"n1", "n2"}


def test_random_uses_both_nodes(on_cli: CliCluster) -> None:
    placed = where_random.remote_fanout(range(40))
    assert set(placed) == {"n1", "n2"}


def test_least_loaded_avoids_a_busy_node(on_cli: CliCluster, tmp_path) -> None:
    release = str(tmp_path / "release")
    address = on_cli.address
    with lucidity.Pool(address=address) as pool:
        # Two tasks per worker: both n1 workers hold theirs until released; those on n2 return at once.
        holds = [pool.apply_async(hold_on, ("n1", release)) for _ in range(8)]
        try:
            def n1_busy() -> bool:
                report = query_status(address, timeout=2.0)
                return any(n.get("name") == "n1" and n.get("running") == 2 for n in report["nodes"])

            wait_until(n1_busy, WAIT, "n1 with both workers busy")
            # The client learns the nodes' running counts through the control node, about once a second.
            wait_until(lambda: any(n.name == "n1" and n.running == 2 for n in default_client().nodes()), WAIT,
                       "the client to see n1 busy")
            # Each probe releases the holds when it runs, so one placed on n1 is not stuck behind them.
            placed = probe_least_loaded.remote_fanout([release] * 4)
        finally:
            open(release, "a").close()
        assert "n1" in [h.get(WAIT) for h in holds]
    assert placed.count("n2") >= 3, placed


# -- the decorated function itself -----------------------------------------------------------------------


def test_decorated_function_stays_introspectable() -> None:
    assert square.__name__ == "square"
    assert square.__qualname__ == "square"
    assert square.__doc__ == "The square of a."
    assert square.__module__ == __name__
    assert inspect.isfunction(square.__wrapped__) and square.__wrapped__(4) == 16
    assert list(inspect.signature(square).parameters) == ["a"]
    assert "square" in repr(square)


def test_a_job_pickles_and_still_runs(on_embedded: str) -> None:
    clone = pickle.loads(pickle.dumps(square))
    assert clone(4) == 16
    assert clone.remote(5) == 25
    assert clone.remote_fanout([1, 2]) == [1, 4]
    copy_of_random = pickle.loads(pickle.dumps(where_random))
    assert copy_of_random.fanout == "random"


def test_unknown_fanout_is_refused() -> None:
    with pytest.raises(ValueError, match="bogus"):
        @job(fanout="bogus")
        def f() -> None:
            pass


@pytest.mark.parametrize("option", [{"memory": "1GB"}, {"memory": 2**30}, {"timeout": 5.0}, {"cpu_time": 1.0}])
def test_limits_are_refused_or_kept_never_ignored(option: dict) -> None:
    # Until the nodes enforce limits, setting one raises NotImplementedError; once they do, the job keeps
    # the (parsed) limit to send with each task. Accepting one and dropping it would be the bug.
    (name, value), = option.items()
    try:
        limited = job(**option)(plain_square)
    except NotImplementedError:
        return
    kept = getattr(limited, name)
    if name == "memory":
        assert isinstance(kept, int) and (kept == value if isinstance(value, int) else 10**9 <= kept <= 2**30)
    else:
        assert kept == value
    assert getattr(pickle.loads(pickle.dumps(limited)), name) == kept


def test_a_job_that_is_not_a_module_attribute_pickles_by_value() -> None:
    renamed = job(fanout="random", retries=1)(plain_square)  # module attribute plain_square is the function
    clone = pickle.loads(pickle.dumps(renamed))
    assert clone is not renamed
    assert (clone.fanout, clone.retries, clone(3)) == ("random", 1, 9)


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ValueError):
        job(retries=-1)(plain_square)


# -- retries --------------------------------------------------------------------------------------------


def test_retries_rerun_a_job_whose_worker_crashed(on_embedded: str, tmp_path) -> None:
    counter = str(tmp_path / "attempts")
    assert crash_twice_then_succeed.remote(counter) == 3
    with open(counter) as file:
        assert len(file.read()) == 3


def test_without_retries_a_crash_raises_worker_crashed(on_embedded: str, tmp_path) -> None:
    counter = str(tmp_path / "attempts")
    with pytest.raises(lucidity.WorkerCrashed) as caught:
        crash_once.remote(counter)
    assert caught.value.node == "local"
    assert caught.value.exit_code == 3
    with open(counter) as file:
        assert len(file.read()) == 1
    # The worker was replaced and the job runs again.
    assert crash_once.remote(counter) == 2


@job(retries=2)
def always_crash() -> None:
    os._exit(5)


def test_out_of_retries_the_error_lists_every_attempt(on_embedded: str) -> None:
    with pytest.raises(lucidity.WorkerCrashed) as caught:
        always_crash.remote()
    assert "run 3 times" in str(caught.value)
    assert str(caught.value).count("exited with code 5") == 4  # the last one, then all three listed


@job
def write_after(path: str, seconds: float) -> str:
    time.sleep(seconds)
    with open(path, "w") as marker:
        marker.write("ran")
    return path


def run_on_every_worker(workers: int) -> None:
    """Return once a job submitted now has finished on each of the `workers` workers.

    Each worker runs its tasks in the order they came, so by then every task sent earlier has run too.
    """
    seen: set[int] = set()

    def every_worker_seen() -> bool:
        seen.update(pid for pid, _, _ in where.remote_fanout(range(2 * workers)))
        return len(seen) >= workers

    wait_until(every_worker_seen, WAIT, f"a job to finish on each of the {workers} workers")


def test_cancelling_a_queued_job_means_it_never_runs(on_embedded: str, embedded: lucidity.LocalCluster,
                                                      tmp_path) -> None:
    busy = [write_after.remote_async(str(tmp_path / f"busy-{i}"), 0.5) for i in range(6)]
    last = write_after.remote_async(str(tmp_path / "cancelled"), 0.0)
    assert last.cancel() is True and last.cancelled()
    for one in busy:
        one.await_get(WAIT)
    # Had the cancelled job been sent to a worker anyway, it ran before the jobs sent there after it.
    run_on_every_worker(embedded.processes)
    assert not (tmp_path / "cancelled").exists()


@job(fanout="least_loaded")
def least_loaded_sleep(seconds: float) -> Optional[str]:
    time.sleep(seconds)
    return lucidity.current_node()


def test_least_loaded_spreads_a_burst(on_cli: CliCluster) -> None:
    jobs = [least_loaded_sleep.remote_async(0.3) for _ in range(4)]
    nodes = [one.await_get(WAIT) for one in jobs]
    assert sorted(nodes) == ["n1", "n1", "n2", "n2"]
