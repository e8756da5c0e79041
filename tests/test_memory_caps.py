"""Memory caps do not stop tasks that stay under them (issue 11, item 7), and still stop tasks that do not.

A node started with `lucidity node --memory-limit CAP` backs the cap with RLIMIT_DATA, which counts address
space reserved and never touched: OpenBLAS keeps 32 MiB buffers per thread in numpy and again in scipy, and
every thread has a stack. Before the fix, `import numpy` and a 100 MB array failed under a 200 MB cap with
32 MiB resident, and a first BLAS call in scipy spun for ever. Here numpy and scipy are imported, BLAS runs,
and an array of half the cap is filled on every worker of nodes of 1, 2 and 4 workers, under caps of 200 MB
and 400 MB; then an array of 1.5 times the cap fails with MemoryLimitExceeded, and its message names the
data-segment limit, the data segment and resident memory.

Workers import this module by name (the CLI daemons get PYTHONPATH=tests from CliCluster), so conftest is
imported only inside the fixture, as in test_limits.py. One node per cap and worker count, shared by its
two tests; the leak check of conftest sees every process the module starts reaped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

import lucidity
from lucidity.node import limits
from lucidity.sizes import format_size, parse_size

pytest.importorskip("numpy")
pytest.importorskip("scipy")

pytestmark = pytest.mark.timeout(60)

#: Bound on every wait for a result, in seconds.
WAIT = 30.0
CAPS = ["200MB", "400MB"]
WORKERS = [1, 2, 4]


# -- tasks (run in the workers) --------------------------------------------------------------------------


def _own_memory() -> dict[str, int]:
    with open("/proc/self/statm") as statm:
        fields = statm.read().split()
    page = os.sysconf("SC_PAGE_SIZE")
    return {"resident": int(fields[1]) * page, "data": int(fields[5]) * page}


def numpy_scipy_and_an_array(size: int, started_dir: str, workers: int) -> dict[str, Any]:
    """Import numpy and scipy, call BLAS in both, hold `size` bytes of ones; once all `workers` got here."""
    import numpy as np
    import scipy.linalg

    square = np.ones((500, 500))
    square @ square  # numpy's OpenBLAS takes its buffers
    scipy.linalg.solve(np.eye(300) * 2.0, np.ones(300))  # and scipy's its own
    array = np.ones(size // 8)
    # Every worker holds its array at once: the node's workers share the machine and the cores.
    open(os.path.join(started_dir, str(os.getpid())), "w").close()
    deadline = time.monotonic() + WAIT
    while len(os.listdir(started_dir)) < workers and time.monotonic() < deadline:
        time.sleep(0.01)
    return dict(_own_memory(), pid=os.getpid(), total=int(array.sum()),
                threads=int(os.environ.get("OPENBLAS_NUM_THREADS", "0")))


def numpy_scipy_and_too_big_an_array(size: int) -> int:
    import numpy as np
    import scipy.linalg  # noqa: F401  (its OpenBLAS reserves as in the task above)

    return int(np.ones(size // 8).nbytes)


# -- a node per cap and worker count ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=[(cap, workers) for cap in CAPS for workers in WORKERS],
                ids=[f"{cap}-{workers}w" for cap in CAPS for workers in WORKERS])
def capped_node(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, int]]:
    """A control node and one node daemon of `workers` workers capped at `cap`, started through the CLI."""
    from conftest import CliCluster  # here, not at the top: workers import this module, and must not run conftest

    class CappedCliCluster(CliCluster):
        def start_capped_node(self, name: str, processes: int, cap: str) -> subprocess.Popen[bytes]:
            return self._start(name, "node", self.address, "--processes", str(processes), "--name", name,
                               "--memory-limit", cap)

    cap, workers = request.param
    cluster = CappedCliCluster()
    try:
        cluster.start_control()
        cluster.start_capped_node("n1", workers, cap)
        cluster.wait_for(1, workers_per_node=workers)
        yield cluster.address, parse_size(cap) or 0, workers
    finally:
        cluster.close()


def test_numpy_scipy_and_half_the_cap_fit_on_every_worker(capped_node: tuple[str, int, int], tmp_path: Any) -> None:
    address, cap, workers = capped_node
    with lucidity.Pool(address=address) as pool:
        results = [pool.apply_async(numpy_scipy_and_an_array, (cap // 2, str(tmp_path), workers))
                   for _ in range(workers)]
        held = [result.get(WAIT) for result in results]
    assert len({h["pid"] for h in held}) == workers  # all at once, one per worker
    for h in held:
        assert h["total"] == cap // 2 // 8
        assert cap // 2 < h["resident"] < cap, h  # the task stayed under its cap
        assert h["threads"] <= max(1, len(os.sched_getaffinity(0)) // workers)


def test_one_and_a_half_times_the_cap_fails_and_names_the_limit(capped_node: tuple[str, int, int]) -> None:
    address, cap, _ = capped_node
    with lucidity.Pool(address=address) as pool:
        with pytest.raises(lucidity.MemoryLimitExceeded) as caught:
            pool.apply_async(numpy_scipy_and_too_big_an_array, (cap * 3 // 2,)).get(WAIT)
        error = caught.value
        assert isinstance(error, MemoryError) and error.limit == cap and error.node == "n1"
        text = str(error)
        assert f"memory cap of {format_size(cap)}" in text and str(error.pid) in text
        # The rlimit refused it, and the message says so, with the sizes that explain why.
        assert "data-segment limit (RLIMIT_DATA) of " in text, text
        assert "in its data segment" in text and f"{format_size(error.peak)} resident" in text, text
        assert pool.apply_async(os.getpid).get(WAIT) > 0  # the node serves on, with a replacement worker


def test_native_threads_follow_the_cap_and_the_cpus() -> None:
    """A small cap gets one native thread however many CPUs there are; an operator's count still wins."""
    cpus = len(os.sched_getaffinity(0))
    small = limits.thread_environment(1, {}, parse_size("200MB"))
    assert small["OPENBLAS_NUM_THREADS"] == small["OMP_NUM_THREADS"] == "1"
    assert limits.thread_environment(1, {})["OPENBLAS_NUM_THREADS"] == str(cpus)
    assert limits.thread_environment(1, {"OPENBLAS_NUM_THREADS": "8"}, 10**8)["OPENBLAS_NUM_THREADS"] == "8"
    # An operator's count also widens the rlimit: 8 threads' buffers fit under it.
    cap = parse_size("200MB") or 0
    assert limits.rlimit_for(cap, 8) - limits.rlimit_for(cap) == 7 * limits.RESERVED_PER_NATIVE_THREAD
    assert limits.native_threads_of({"OMP_NUM_THREADS": "3,2", "OPENBLAS_NUM_THREADS": "2"}) == 3


def test_a_worker_stuck_at_its_rlimit_is_pinned_and_one_under_it_is_not() -> None:
    """The watchdog's pinned rule measures a process against its own rlimit, not against the cap."""
    cap = parse_size("200MB") or 0
    # The child sets its rlimit this far above its own data segment, then waits.
    code = ("import resource, sys, time\n"
            "data = int(open('/proc/self/statm').read().split()[5]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_DATA, (data + int(sys.argv[1]),) * 2)\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    for room, pinned in ((limits.rlimit_for(cap), False), (limits.HEADROOM_MIN // 2, True)):
        child = subprocess.Popen([sys.executable, "-c", code, str(room)], stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            seen = limits.pinned_segment(child.pid, cap)
            assert (seen is not None) == pinned, (seen, room)
            if seen is not None:
                assert seen.limit is not None and seen.limit - seen.data <= limits.HEADROOM_MIN and seen.resident > 0
        finally:
            child.kill()
            child.wait(WAIT)


@pytest.mark.parametrize("data_mib, resident_mib, says", [
    (100, 60, "a single allocation asked for more than"),
    (None, 80, "while under its memory cap of 190.7 MiB"),
    (None, 185, "went over its memory cap of 190.7 MiB"),
], ids=["one big request", "reservations", "at the cap"])
def test_a_refusal_names_the_limit_the_data_segment_resident_memory_and_the_cause(
        data_mib: Any, resident_mib: int, says: str) -> None:
    cap = parse_size("200MB") or 0
    rlimit = limits.rlimit_for(cap)
    data = rlimit - 2**20 if data_mib is None else data_mib * 2**20
    text = limits.describe_refusal(17, cap, "n1", 4121, limits.DataSegment(rlimit, data, resident_mib * 2**20))
    assert says in text, text
    assert f"data-segment limit (RLIMIT_DATA) of {format_size(rlimit)}" in text
    assert f"{format_size(data)} in its data segment and {resident_mib:.1f} MiB resident (worker 4121)" in text
    assert text.startswith("task 17 ") and "node n1" in text and text.endswith("the worker is replaced")
    assert ("OPENBLAS_NUM_THREADS" in text) == (says.startswith("while under"))


def test_a_pressure_breach_needs_the_pinned_segment_and_describes_it() -> None:
    cap = parse_size("200MB") or 0
    under_cap = limits.Limits(memory=cap)
    pressure = limits.PRESSURE_SAMPLES
    # A count without the segment is a data segment past the cap alone: numpy and scipy under their cap.
    assert limits.check(under_cap, 1.0, 80 * 2**20, None, pressure) is None
    pinned = limits.DataSegment(limits.rlimit_for(cap), limits.rlimit_for(cap) - 2**20, 0)
    breach = limits.check(under_cap, 1.0, 80 * 2**20, None, pressure, pinned)
    assert breach is not None and breach.kind is limits.LimitKind.MEMORY and breach.measured == 80 * 2**20
    assert f"(RLIMIT_DATA) of {format_size(pinned.limit)}" in breach.detail
    assert "80.0 MiB resident" in breach.detail and format_size(pinned.data) in breach.detail
    assert limits.check(under_cap, 1.0, 80 * 2**20, None, pressure - 1, pinned) is None
