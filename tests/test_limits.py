"""Limits with real processes: memory caps, wall and CPU time, worker hygiene, recycling (FAULTS rows 9-13).

Every task function is defined at module level, so that workers import it by name (embedded workers inherit
sys.path; the CLI daemons get PYTHONPATH=tests from the fixture). Workers import this module, so it imports
helpers, never conftest (which sets up the test session's leak check).

Clusters are module-scoped where tests do not disturb each other; a breach replaces a worker, which the
tests wait for before they look at a count. Every wait is bounded; nothing sleeps a fixed time to wait for
an event (tasks themselves may sleep).
"""

from __future__ import annotations

import collections
import concurrent.futures
import mmap
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

import psutil
import pytest

import lucidity
from lucidity import job
from lucidity.node import limits
from lucidity.sizes import format_size
from lucidity.status import format_status, query_status

from helpers import WAIT, CliCluster, connected, free_port, wait_until
from tasks import identity

pytestmark = pytest.mark.timeout(120)

#: The cap most tests work under, and what a task tries to take.
CAP = 200_000_000
OVER = 500_000_000
#: How long the watchdog may take to stop a task the rlimit does not (it samples every 15 ms), in seconds.
ESCAPE_WAIT = 10.0
#: Time limits, and how late past limit + one watchdog period a stop may come on this 2-core machine:
#: the round trip, a worker that imports this module for the first time, and a loaded scheduler.
TIME_LIMIT = 0.5
WALL_MARGIN = 1.5
CPU_MARGIN = 2.5
#: A task that ran on a sibling worker while the limited one was stopped, in seconds.
SIBLING_SLEEP = 1.0
PAGE = 4096
CAP_SYS_RESOURCE = 24


# -- tasks -----------------------------------------------------------------------------------------------


def worker_pid(_: Any = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any) -> tuple[Any, int]:
    time.sleep(seconds)
    return value, os.getpid()


def touch(buffer: Any, length: int) -> None:
    for offset in range(0, length, PAGE):
        buffer[offset] = 1


def take_bytearray(size: int = OVER) -> int:
    block = bytearray(size)  # zero-filled, so every page is touched
    return len(block)


def take_numpy(size: int = OVER) -> int:
    import numpy as np

    return int(np.ones(size // 8).nbytes)


def swallow_memory_errors() -> None:
    """Catch every MemoryError and keep trying: the rlimit alone never stops this task."""
    kept = []
    while True:
        try:
            kept.append(bytearray(10_000_000))
        except MemoryError:
            pass


def swallow_memory_errors_near_the_limit(gap: int = 15 * 2**20, chunk: int = 20_000_000) -> None:
    """Fill the data segment to `gap` bytes under the rlimit, then keep retrying a `chunk`-byte allocation.

    A retry loop whose allocations are bigger than the gap left under the rlimit: every one fails, so the
    data segment stays put, `gap` below the rlimit, and resident memory stays below the cap.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    with open("/proc/self/statm") as statm:
        data = int(statm.read().split()[5]) * PAGE
    kept = [bytearray(max(0, soft - data - gap))]
    while True:
        try:
            kept.append(bytearray(chunk))
        except MemoryError:
            pass


def take_shared(size: int = 300_000_000) -> str:
    """MAP_SHARED memory, which RLIMIT_DATA does not count."""
    region = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    touch(region, size)
    return "survived"


def raise_own_limit_then_take(size: int = OVER) -> tuple[int, int]:
    """Raise the soft data limit to the hard one (always allowed), then allocate and touch past the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
    block = bytearray(size)
    touch(block, size)
    return soft, hard


def raise_hard_limit() -> tuple[str, int, bool]:
    """Try to raise the hard data limit; report the outcome, the hard limit, and CAP_SYS_RESOURCE."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    with open("/proc/self/status") as status:
        effective = int(status.read().split("CapEff:")[1].split()[0], 16)
    privileged = bool(effective >> CAP_SYS_RESOURCE & 1)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard + 100_000_000))
    except ValueError as exc:
        return f"ValueError: {exc}", hard, privileged
    return "raised", hard, privileged


def threads_take(threads: int, total: int, chunk: int = 20_000_000) -> int:
    """`threads` threads, all alive at once, append `chunk`-byte blocks until they hold `total` bytes together.

    A thread that meets a MemoryError stops, and the task raises the first one, as a thread pool would.
    """
    blocks: list[bytearray] = []
    errors: list[MemoryError] = []
    claimed = [0]
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if errors or claimed[0] >= total:
                    return
                claimed[0] += chunk
            try:
                block = bytearray(chunk)
            except MemoryError as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                blocks.append(block)

    barrier = threading.Barrier(threads + 1)

    def start_together() -> None:
        barrier.wait(WAIT)  # every thread is alive, with its stack, before any allocates
        run()

    started = [threading.Thread(target=start_together) for _ in range(threads)]
    for thread in started:
        thread.start()
    barrier.wait(WAIT)
    for thread in started:
        thread.join()
    if errors:
        raise errors[0]
    return len(blocks) * chunk


def start_idle_threads(count: int) -> int:
    """Start `count` threads that only wait (each reserves a stack), then stop them."""
    release = threading.Event()
    started: list[threading.Thread] = []
    try:
        for _ in range(count):
            thread = threading.Thread(target=release.wait, args=(WAIT,))
            thread.start()
            started.append(thread)
    finally:
        release.set()
        for thread in started:
            thread.join()
    return len(started)


def numpy_under_cap() -> tuple[float, int]:
    import numpy as np

    array = np.ones(100_000_000 // 8)
    return float(array.sum()), limits.memory_of(os.getpid()) or 0


def spawn_sleeper(new_session: bool = False) -> int:
    """Start `sleep 600` and return without waiting for it."""
    return subprocess.Popen(["sleep", "600"], start_new_session=new_session).pid


def spawn_sleeper_then_hang(new_session: bool, pid_file: str) -> None:
    pid = subprocess.Popen(["sleep", "600"], start_new_session=new_session).pid
    with open(pid_file, "w") as out:
        out.write(str(pid))
    time.sleep(3600)


def hold_then_exit(fraction: float, cap: int) -> None:
    """Sit just under the cap for a few watchdog periods, then die as OpenBLAS does when it cannot allocate."""
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * PAGE
    block = bytearray(max(1, int(fraction * cap) - resident))
    time.sleep(0.3)  # a few watchdog periods near the cap
    block[-1] = 1  # still held, and resident, up to the exit
    os._exit(1)


def die_like_openblas() -> None:
    os.write(2, b"OpenBLAS : Program is Terminated. Because you tried to allocate too many memory regions.\n")
    os._exit(1)


def take_and_keep(size: int) -> int:
    """Touch `size` bytes, free them, and return the worker's pid (its VmHWM keeps the peak)."""
    block = bytearray(size)
    del block
    return os.getpid()


_HOARD: list[bytearray] = []


def hoard(size: int) -> int:
    """Keep `size` bytes in this worker after the task (a leak), and return the worker's pid."""
    _HOARD.append(bytearray(size))
    return os.getpid()


# Jobs with limits, as a user writes them.


@job(memory="200MB")
def job_take_bytearray() -> int:
    return take_bytearray()


@job(memory="200MB")
def job_take_numpy() -> int:
    return take_numpy()


@job(memory="200MB")
def job_small(x: int) -> int:
    return x * x


@job(memory="200MB")
def job_swallow_memory_errors() -> None:
    swallow_memory_errors()


@job(memory="200MB")
def job_swallow_memory_errors_near_the_limit() -> None:
    swallow_memory_errors_near_the_limit()


@job(memory="200MB")
def job_take_shared() -> str:
    return take_shared()


@job(memory="200MB")
def job_raise_own_limit_then_take() -> tuple[int, int]:
    return raise_own_limit_then_take()


@job(memory="200MB")
def job_threads_take(threads: int, total: int) -> int:
    return threads_take(threads, total)


@job(memory="1GB")
def job_take_under_big_cap() -> int:
    return take_bytearray()


@job(memory="100MB")
def job_sleep_under_cap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@job(timeout=TIME_LIMIT)
def spin_for_ever() -> None:
    while True:
        pass


@job(timeout=TIME_LIMIT)
def c_loop() -> int:
    return sum(range(10**12))


@job(timeout=TIME_LIMIT)
def sleep_for_an_hour() -> None:
    time.sleep(3600)


@job(cpu_time=TIME_LIMIT)
def spin_on_cpu() -> None:
    while True:
        pass


@job(cpu_time=TIME_LIMIT)
def c_loop_on_cpu() -> int:
    return sum(range(10**12))


@job(cpu_time=0.2)
def sleep_past_cpu_time(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@job(timeout=5.0)
def quick_under_timeout(x: int) -> int:
    return x + 1


@job(timeout=TIME_LIMIT)
def spawn_then_hang(new_session: bool, pid_file: str) -> None:
    spawn_sleeper_then_hang(new_session, pid_file)


@job
def sleeper(seconds: float, value: Any) -> tuple[Any, int]:
    return sleep_then(seconds, value)


# -- helpers ---------------------------------------------------------------------------------------------


def workers_of(address: str) -> list[dict[str, Any]]:
    return [w for node in query_status(address)["nodes"] for w in node["workers"]]


def wait_workers_ready(address: str, count: int) -> list[dict[str, Any]]:
    """Poll `lucidity status` until `count` workers are idle and ready (a breached one has been replaced)."""
    def ready() -> Optional[list[dict[str, Any]]]:
        workers = workers_of(address)
        if len(workers) == count and all(w["state"] == "ready" for w in workers):
            return workers
        return None

    return wait_until(ready, WAIT, f"{count} ready workers at {address}")


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pid: int, what: str, timeout: float = 5.0) -> None:
    """Wait until process `pid` has exited (and been reaped); fail saying what it is (and its parent) if not."""
    def parent() -> str:
        try:
            return str(psutil.Process(pid).ppid())
        except psutil.Error:
            return "?"

    try:
        wait_until(lambda: not is_alive(pid), timeout, f"{what} ({pid}) to exit")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its parent is {parent()}") from None


def node_daemon_pid(cluster: lucidity.LocalCluster) -> int:
    nodes = [pid for pid in cluster.pids if "node" in psutil.Process(pid).cmdline()]
    assert len(nodes) == 1, nodes
    return nodes[0]


def check_breach(error: lucidity.MemoryLimitExceeded, limit: int, node: str) -> None:
    """The error names the cap, the peak, the node and the worker, as attributes and in its text."""
    assert isinstance(error, MemoryError) and isinstance(error, lucidity.LucidityError)
    assert error.limit == limit
    assert isinstance(error.peak, int) and error.peak > 0
    assert error.node == node
    assert isinstance(error.pid, int) and error.pid > 0
    text = str(error)
    assert format_size(limit) in text and f"node {node}" in text and str(error.pid) in text
    assert "memory cap" in text
    wait_gone(error.pid, "the worker that broke its cap", WAIT)


# -- clusters --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_pool() -> Iterator[lucidity.Pool]:
    """An embedded pool whose tasks, and whose node, are capped at 200 MB."""
    with lucidity.Pool(2, memory_limit="200MB") as pool:
        yield pool


@pytest.fixture(scope="module")
def capped() -> Iterator[lucidity.LocalCluster]:
    """A node of two workers capped at 200 MB by the node itself (`lucidity node --memory-limit`)."""
    with lucidity.LocalCluster(processes=2, memory_limit="200MB") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def uncapped() -> Iterator[lucidity.LocalCluster]:
    """A node of three workers without a cap of its own: limits come from the tasks."""
    with lucidity.LocalCluster(processes=3) as cluster:
        yield cluster


@pytest.fixture
def jobs(uncapped: lucidity.LocalCluster) -> Iterator[lucidity.LocalCluster]:
    """Jobs run on the uncapped cluster for the test."""
    with connected(uncapped.address):
        yield uncapped


@pytest.fixture
def capped_jobs(capped: lucidity.LocalCluster) -> Iterator[lucidity.LocalCluster]:
    with connected(capped.address):
        yield capped


# -- start-up (sizes and the watchdog's decisions: tests/unit/test_limit_decisions.py) --------------------


def test_local_cluster_with_a_cap_too_small_to_start_a_worker_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match="too small"):
        lucidity.LocalCluster(processes=1, memory_limit="10MB")
    with pytest.raises(ValueError, match="too small"):
        lucidity.Pool(1, memory_limit="10MB")
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("size, why", [("10MB", "too small"), ("lots", "not a size")])
def test_node_with_a_bad_memory_limit_exits_2_and_says_why(size: str, why: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lucidity", "node", f"tcp://127.0.0.1:{free_port()}",
                           "--processes", "1", "--memory-limit", size],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 2
    assert why in done.stderr and "memory" in done.stderr.lower()


# -- memory: the headline cases --------------------------------------------------------------------------


@pytest.mark.parametrize("take", [take_bytearray, take_numpy])
def test_pool_task_over_its_cap_fails_alone_and_the_next_one_runs(capped_pool: lucidity.Pool,
                                                                  take: Callable[[], int]) -> None:
    with pytest.raises(lucidity.MemoryLimitExceeded) as caught:
        capped_pool.apply_async(take).get(WAIT)
    check_breach(caught.value, CAP, "local")
    assert format_size(caught.value.peak) in str(caught.value)
    assert capped_pool.apply_async(identity, (7,)).get(WAIT) == 7
    assert capped_pool.map(identity, range(20), chunksize=1) == list(range(20))


@pytest.mark.parametrize("take", [job_take_bytearray, job_take_numpy])
def test_job_over_its_memory_cap_fails_alone_and_the_next_one_runs(jobs: lucidity.LocalCluster,
                                                                   take: Any) -> None:
    with pytest.raises(MemoryError) as caught:
        take.remote_async().await_get(WAIT)
    assert isinstance(caught.value, lucidity.MemoryLimitExceeded)
    check_breach(caught.value, CAP, "local")
    assert job_small.remote_async(9).await_get(WAIT) == 81


def test_numpy_and_a_100mb_array_fit_under_a_200mb_cap(capped_pool: lucidity.Pool) -> None:
    total, resident = capped_pool.apply_async(numpy_under_cap).get(WAIT)
    assert total == 100_000_000 // 8
    assert 100_000_000 < resident < CAP


def test_threads_under_the_cap_are_not_false_positives(capped_pool: lucidity.Pool) -> None:
    """16 threads alive at once (their stacks, their malloc arenas) hold 80 MB in all, well under a 200 MB cap."""
    assert capped_pool.apply_async(threads_take, (16, 80_000_000, 5_000_000)).get(WAIT) == 80_000_000


def test_threads_that_cannot_start_under_a_cap_are_a_memory_breach_not_a_runtime_error(
        capped_pool: lucidity.Pool) -> None:
    """40 idle threads reserve 40 stacks (8 MiB each by default), which RLIMIT_DATA counts.

    Either they fit (nothing is resident) or the task fails with MemoryLimitExceeded; a bare
    "RuntimeError: can't start new thread" hides that the cap was the cause.
    """
    try:
        assert capped_pool.apply_async(start_idle_threads, (40,)).get(WAIT) == 40
    except lucidity.MemoryLimitExceeded as exc:
        check_breach(exc, CAP, "local")
    assert capped_pool.apply_async(identity, (1,)).get(WAIT) == 1


def test_the_smaller_of_the_task_cap_and_the_node_cap_wins(capped_jobs: lucidity.LocalCluster) -> None:
    with pytest.raises(lucidity.MemoryLimitExceeded) as caught:
        job_take_under_big_cap.remote_async().await_get(WAIT)
    check_breach(caught.value, CAP, "local")


def test_a_job_decorated_in_a_worker_module_stays_a_decorator() -> None:
    """A worker that unpickled a job built outside a module attribute must still import modules using @job.

    Such a job travels as ``lucidity.job._rebuild``, which imports the submodule ``lucidity.job`` by its dotted
    name; from then on ``from lucidity import job`` must still give the decorator, not the submodule.
    """
    with lucidity.LocalCluster(processes=1) as cluster, connected(cluster.address):
        assert job(timeout=5.0)(identity).remote_async(4).await_get(WAIT) == 4
        assert job_small.remote_async(5).await_get(WAIT) == 25


# -- memory: tasks that get past the rlimit, caught by the watchdog --------------------------------------


ESCAPES = {
    "swallows MemoryError": (swallow_memory_errors, "job_swallow_memory_errors", ()),
    "swallows MemoryError near the rlimit": (swallow_memory_errors_near_the_limit,
                                             "job_swallow_memory_errors_near_the_limit", ()),
    "MAP_SHARED": (take_shared, "job_take_shared", ()),
    "raises its soft rlimit": (raise_own_limit_then_take, "job_raise_own_limit_then_take", ()),
    "16 threads": (threads_take, "job_threads_take", (16, 2 * CAP)),
}


@pytest.fixture(params=["pool", "job"])
def run_capped(request: pytest.FixtureRequest, uncapped: lucidity.LocalCluster) -> Iterator[Callable[..., Any]]:
    """Run a task under a 200 MB cap: on a fresh embedded Pool(2, memory_limit="200MB"), or as
    @job(memory="200MB") on the uncapped cluster. Either way, a task the watchdog misses is stopped when
    the test ends (the pool terminates; the job client abandons its tasks), so it cannot hold a worker
    of a later test.
    """
    if request.param == "pool":
        with lucidity.Pool(2, memory_limit="200MB") as pool:
            yield lambda function, _, args: pool.apply_async(function, args).get(ESCAPE_WAIT)
        return
    request.getfixturevalue("jobs")
    yield lambda _, job_name, args: globals()[job_name].remote_async(*args).await_get(ESCAPE_WAIT)


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_a_task_that_escapes_the_rlimit_is_stopped(run_capped: Callable[..., Any], escape: str) -> None:
    started = time.monotonic()
    with pytest.raises(lucidity.MemoryLimitExceeded) as caught:
        run_capped(*ESCAPES[escape])
    check_breach(caught.value, CAP, "local")
    assert time.monotonic() - started < ESCAPE_WAIT
    assert run_capped(identity, "job_small", (3,)) in (3, 9)


def test_a_task_cannot_raise_the_hard_limit_of_a_capped_node(capped: lucidity.LocalCluster) -> None:
    with lucidity.Pool(address=capped.address) as pool:
        outcome, hard, privileged = pool.apply_async(raise_hard_limit).get(WAIT)
    assert hard == limits.rlimit_for(CAP)  # the cap plus its headroom, set before any user code
    if privileged:
        pytest.skip("the worker holds CAP_SYS_RESOURCE here, so the kernel lets it raise its hard limit")
    assert outcome.startswith("ValueError"), outcome


# -- memory: breaches the worker did not report itself (classification) ----------------------------------


def test_a_worker_that_dies_near_its_cap_is_reported_as_a_memory_breach(capped: lucidity.LocalCluster) -> None:
    with lucidity.Pool(address=capped.address) as pool:
        with pytest.raises(lucidity.MemoryLimitExceeded) as caught:
            pool.apply_async(hold_then_exit, (0.95, CAP)).get(WAIT)
        check_breach(caught.value, CAP, "local")
        assert pool.apply_async(identity, (1,)).get(WAIT) == 1


def test_an_openblas_allocation_failure_under_a_cap_is_a_memory_breach(capped: lucidity.LocalCluster,
                                                                       uncapped: lucidity.LocalCluster) -> None:
    with lucidity.Pool(address=capped.address) as pool:
        with pytest.raises(lucidity.MemoryLimitExceeded) as caught:
            pool.apply_async(die_like_openblas).get(WAIT)
        check_breach(caught.value, CAP, "local")
    with lucidity.Pool(address=uncapped.address) as pool:  # without a cap it is an ordinary crash
        with pytest.raises(lucidity.WorkerCrashed) as crashed:
            pool.apply_async(die_like_openblas).get(WAIT)
        assert crashed.value.exit_code == 1 and "OpenBLAS" in str(crashed.value)


# -- memory: the daemon over many breaches ---------------------------------------------------------------


def test_fifty_breaches_leave_the_daemon_flat_and_every_worker_back(capped: lucidity.LocalCluster) -> None:
    daemon = psutil.Process(node_daemon_pid(capped))
    breaches = [take_bytearray, take_shared]  # one the worker reports, one the watchdog kills

    def breach(count: int) -> None:
        results = [pool.apply_async(breaches[i % 2]) for i in range(count)]
        for result in results:
            with pytest.raises(lucidity.MemoryLimitExceeded):
                result.get(WAIT)

    with lucidity.Pool(address=capped.address) as pool:
        breach(6)  # warm up: the daemon's first breaches load code and grow buffers once
        wait_workers_ready(capped.address, 2)
        before = daemon.memory_info().rss
        for _ in range(25):
            breach(2)
        workers = wait_workers_ready(capped.address, 2)
        after = daemon.memory_info().rss
        assert pool.map(identity, range(10), chunksize=1) == list(range(10))
    assert abs(after - before) <= 0.10 * before, f"daemon RSS {before} -> {after} over 50 breaches"
    assert len(workers) == 2 and all(w["cap"] == CAP for w in workers)


# -- worker hygiene: what a task starts ------------------------------------------------------------------


@pytest.mark.parametrize("new_session", [False, True], ids=["same group", "own session"])
def test_a_subprocess_does_not_outlive_its_task(uncapped: lucidity.LocalCluster, new_session: bool) -> None:
    with lucidity.Pool(address=uncapped.address) as pool:
        pid = pool.apply_async(spawn_sleeper, (new_session,)).get(WAIT)
        wait_gone(pid, "the sleep a task started, after the task ended")
        assert pool.apply_async(identity, (2,)).get(WAIT) == 2


@pytest.mark.parametrize("new_session", [False, True], ids=["same group", "own session"])
def test_a_subprocess_does_not_outlive_a_killed_task(jobs: lucidity.LocalCluster, tmp_path: Any,
                                                     new_session: bool) -> None:
    pid_file = str(tmp_path / "sleeper.pid")
    with pytest.raises(lucidity.JobTimeout):
        spawn_then_hang.remote_async(new_session, pid_file).await_get(WAIT)
    with open(pid_file) as text:
        pid = int(text.read())
    wait_gone(pid, "the sleep started by a task killed for its timeout")


# -- time limits -----------------------------------------------------------------------------------------


def run_beside_siblings(limited: Any) -> tuple[BaseException, float, list[tuple[Any, int]]]:
    """Submit two sleeping siblings and the limited job together; the error, its delay, the siblings' results."""
    siblings = [sleeper.remote_async(SIBLING_SLEEP, i) for i in range(2)]
    started = time.monotonic()
    future = limited.remote_async()
    error = future.exception(WAIT)
    elapsed = time.monotonic() - started
    assert error is not None, "the limited task returned"
    return error, elapsed, [s.await_get(WAIT) for s in siblings]


@pytest.mark.parametrize("limited", [spin_for_ever, c_loop, sleep_for_an_hour], ids=["python", "C", "sleep"])
def test_timeout_stops_a_task_and_spares_its_siblings(jobs: lucidity.LocalCluster, limited: Any) -> None:
    error, elapsed, siblings = run_beside_siblings(limited)
    assert isinstance(error, lucidity.JobTimeout) and isinstance(error, TimeoutError), repr(error)
    assert TIME_LIMIT <= elapsed < TIME_LIMIT + limits.WATCH_INTERVAL + WALL_MARGIN, elapsed
    assert error.limit == TIME_LIMIT and error.node == "local"
    assert "wall-time limit" in str(error) and str(error.pid) in str(error)
    assert [value for value, _ in siblings] == [0, 1]
    # (A sibling may have shared the killed worker if the client had not yet seen a replacement worker of the
    # previous test: then it ran first, in that worker's order, and its result is still correct.)
    wait_gone(error.pid, "the stopped worker")
    assert quick_under_timeout.remote_async(1).await_get(WAIT) == 2
    wait_workers_ready(jobs.address, 3)


@pytest.mark.parametrize("limited", [spin_on_cpu, c_loop_on_cpu], ids=["python", "C"])
def test_cpu_time_stops_a_loop_and_spares_its_siblings(jobs: lucidity.LocalCluster, limited: Any) -> None:
    error, elapsed, siblings = run_beside_siblings(limited)
    assert isinstance(error, lucidity.CpuLimitExceeded), repr(error)
    assert TIME_LIMIT <= elapsed < TIME_LIMIT + limits.WATCH_INTERVAL + CPU_MARGIN, elapsed
    assert error.limit == TIME_LIMIT and error.used > TIME_LIMIT and error.node == "local"
    assert "CPU-time limit" in str(error)
    assert [value for value, _ in siblings] == [0, 1]
    wait_gone(error.pid, "the stopped worker")
    wait_workers_ready(jobs.address, 3)


def test_cpu_time_does_not_count_sleep(jobs: lucidity.LocalCluster) -> None:
    assert sleep_past_cpu_time.remote_async(0.6).await_get(WAIT) == "slept"


def test_get_timeout_bounds_the_wait_not_the_task(uncapped: lucidity.LocalCluster) -> None:
    with lucidity.Pool(address=uncapped.address) as pool:
        result = pool.apply_async(sleep_then, (1.0, "late"))
        started = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError) as caught:
            result.get(0.1)
        assert time.monotonic() - started < 0.9
        assert not isinstance(caught.value, lucidity.JobTimeout)
        assert not result.ready()
        assert result.get(WAIT)[0] == "late"
        assert result.successful()


def test_job_await_timeout_bounds_the_wait_not_the_job(jobs: lucidity.LocalCluster) -> None:
    future = sleeper.remote_async(1.0, "late")
    with pytest.raises(concurrent.futures.TimeoutError):
        future.await_get(0.1)
    assert not future.done()
    assert future.await_get(WAIT)[0] == "late"


# -- status ----------------------------------------------------------------------------------------------


def test_status_shows_each_workers_cap_current_and_peak_memory(capped: lucidity.LocalCluster) -> None:
    wait_workers_ready(capped.address, 2)
    with lucidity.Pool(address=capped.address) as pool:
        pid = pool.apply_async(take_and_keep, (120_000_000,)).get(WAIT)
    workers = {w["pid"]: w for w in workers_of(capped.address)}
    assert pid in workers
    for worker in workers.values():
        assert worker["cap"] == CAP
        assert 0 < worker["rss"] <= worker["peak"]
    assert workers[pid]["peak"] >= 120_000_000 > workers[pid]["rss"]
    text = format_status(query_status(capped.address))
    assert f"cap {CAP / 2**20:.0f} MiB" in text and "peak" in text and "RSS" in text
    printed = subprocess.run([sys.executable, "-m", "lucidity", "status", capped.address],
                             capture_output=True, text=True, timeout=WAIT, check=True).stdout
    assert f"cap {CAP / 2**20:.0f} MiB" in printed and str(pid) in printed


def test_status_shows_a_running_tasks_own_cap(capped_jobs: lucidity.LocalCluster) -> None:
    future = job_sleep_under_cap.remote_async(1.5)
    busy = wait_until(lambda: [w for w in workers_of(capped_jobs.address) if w["state"] == "busy"], WAIT,
                      "a busy worker")
    assert busy[0]["cap"] == 100_000_000  # the task's cap, smaller than the node's
    assert future.await_get(WAIT) == busy[0]["pid"]


# -- recycling -------------------------------------------------------------------------------------------


@pytest.fixture
def cli_with(request: pytest.FixtureRequest) -> Iterator[CliCluster]:
    """A control node and one node daemon started through the CLI with the options in the parameter."""
    processes, *options = request.param
    with CliCluster() as cluster:
        cluster.start_control()
        cluster.start_node("n1", processes, *options)
        cluster.wait_for(1, workers_per_node=processes)
        yield cluster


@pytest.mark.parametrize("cli_with", [(2, "--max-tasks-per-worker", "3")], indirect=True)
def test_max_tasks_per_worker_replaces_workers(cli_with: CliCluster) -> None:
    with lucidity.Pool(address=cli_with.address) as pool:
        pids = pool.map(worker_pid, range(12), chunksize=1)
    counts = collections.Counter(pids)
    assert len(counts) >= 4, counts
    assert max(counts.values()) <= 3, counts
    cli_with.wait_for(1, workers_per_node=2)


@pytest.mark.parametrize("cli_with", [(1, "--recycle-memory", "100MB")], indirect=True)
def test_recycle_memory_replaces_a_worker_that_grew(cli_with: CliCluster) -> None:
    with lucidity.Pool(address=cli_with.address) as pool:
        first = pool.apply_async(hoard, (0,)).get(WAIT)
        assert pool.apply_async(hoard, (0,)).get(WAIT) == first  # small: kept
        assert pool.apply_async(hoard, (150_000_000,)).get(WAIT) == first
        wait_gone(first, "the worker that grew past --recycle-memory", WAIT)
        assert pool.apply_async(hoard, (0,)).get(WAIT) != first
