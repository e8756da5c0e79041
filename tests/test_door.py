"""A lone blocking call carried by its caller's thread to a worker's door (lucidity.directcall).

The door is taken once the worker has what the call needs (its second call of a function), and whatever
can befall a task still ends the call clearly: a crash, a memory breach, a Ctrl-C in the caller, a
terminate from another thread, a worker that retires after the call. Each test warms the door first and
checks that the call under test went by it, so that none of them passes by taking the ZeroMQ way.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

import psutil
import pytest

import lucidity
from lucidity.directcall import STREAMS_PER_THREAD

from helpers import Rendezvous, connected, hold, wait_until

pytestmark = pytest.mark.timeout(120)


def pid_or_exit(code=None):
    if code is not None:
        os._exit(code)
    return os.getpid()


def allocate(megabytes):
    block = bytearray(megabytes * 1024 * 1024)
    return len(block)


def append_line(path):
    with open(path, "a") as out:
        out.write(f"{os.getpid()}\n")
    return os.getpid()


def big_result(size):
    return bytes(range(256)) * (size // 256)


def release_twice(rendezvous):
    for _ in range(2):
        rendezvous.started(1)
        rendezvous.release()


def main_thread_waits_at_the_door():
    """The main thread is in `Doors.wait` (not still writing its task: a Ctrl-C there is another case)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    return frame is not None and frame.f_code.co_name == "wait" and frame.f_code.co_filename.endswith("directcall.py")


def door_connections(pid):
    """Connections accepted at the worker's door (its listening socket excluded)."""
    sockets = [c for c in psutil.Process(pid).net_connections(kind="unix") if c.laddr.endswith(".door")]
    return len(sockets) - 1


def warm(pool, function, *args):
    """Call twice: the first call brings the function (the ZeroMQ way), the second goes by the door."""
    pool.apply(function, args)
    return pool.apply(function, args)


def test_a_second_call_goes_by_the_door_and_large_results_come_whole():
    with lucidity.Pool(1) as pool:
        pid = pool.apply(pid_or_exit)
        assert door_connections(pid) == 0, "the first call brings its function the ZeroMQ way"
        assert pool.apply(pid_or_exit) == pid
        assert door_connections(pid) == 1, "the second went by the door"
        data = warm(pool, big_result, 8 * 1024 * 1024)
        assert data == bytes(range(256)) * (8 * 1024 * 1024 // 256)
        assert pool.map(pid_or_exit, [None] * 20) == [pid] * 20  # the ZeroMQ way still serves alongside


def test_a_worker_dying_in_a_call_fails_that_call_and_the_pool_keeps_serving():
    with lucidity.Pool(2) as pool:
        pid = warm(pool, pid_or_exit)
        assert door_connections(pid) == 1
        with pytest.raises(lucidity.WorkerCrashed) as caught:
            pool.apply(pid_or_exit, (3,))
        assert caught.value.exit_code == 3 and str(pid) in str(caught.value)
        assert pool.apply(pid_or_exit) != pid
        assert sorted(pool.map(abs, range(-5, 5))) == sorted(abs(i) for i in range(-5, 5))


def test_a_memory_breach_in_a_call_names_the_limit():
    with lucidity.Pool(1, memory_limit="200MB") as pool:
        assert warm(pool, allocate, 1) == 1024 * 1024
        with pytest.raises(lucidity.MemoryLimitExceeded):
            pool.apply(allocate, (400,))
        assert pool.apply(allocate, (1,)) == 1024 * 1024


def test_ctrl_c_while_a_call_waits_leaves_the_pool_whole():
    """The interrupted call's result still arrives (its stream goes to the client's I/O thread), so that
    close and join end, and the next call works."""
    with Rendezvous() as rendezvous, lucidity.Pool(1) as pool:
        warmer = threading.Thread(target=release_twice, args=(rendezvous,))
        warmer.start()
        pid = warm(pool, hold, rendezvous.address, "warm")
        warmer.join()
        pid = pool.apply(pid_or_exit)
        before = door_connections(pid)

        def interrupt():
            rendezvous.started(1)
            wait_until(main_thread_waits_at_the_door, 30, "the caller to wait for its result")
            os.kill(os.getpid(), signal.SIGINT)

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            pool.apply(hold, (rendezvous.address, "interrupted"))
        interrupter.join()
        assert door_connections(pid) == before, "the interrupted call went by the door"
        assert len(pool._cache) == 1, "its result is still awaited"
        rendezvous.release()
        wait_until(lambda: not pool._cache, 30, "the interrupted call's result to arrive")
        assert pool.apply(pid_or_exit) == pid
        pool.close()
        pool.join()


def test_terminate_from_another_thread_ends_a_waiting_call():
    with Rendezvous() as rendezvous:
        pool = lucidity.Pool(1)
        try:
            warmer = threading.Thread(target=release_twice, args=(rendezvous,))
            warmer.start()
            warm(pool, hold, rendezvous.address, "warm")
            warmer.join()
            stopper = threading.Thread(target=lambda: (rendezvous.started(1), pool.terminate()))
            stopper.start()
            with pytest.raises(RuntimeError, match="terminated"):
                pool.apply(hold, (rendezvous.address, "held"))
            stopper.join()
        finally:
            pool.terminate()


def test_a_worker_that_retires_after_a_call_runs_it_once(tmp_path):
    """maxtasksperchild: the worker exits right after the result it wrote at its door, and its node says
    so; the task must not be sent again elsewhere (the caller reads the result first)."""
    path = tmp_path / "runs"
    with lucidity.Pool(1, maxtasksperchild=3) as pool:
        pids = [pool.apply(append_line, (str(path),)) for _ in range(12)]
    runs = path.read_text().split()
    assert runs == [str(pid) for pid in pids], "every call ran once, where it said it ran"
    assert len(set(pids)) == 4


def test_many_threads_calling_at_once_each_get_their_own_answer():
    with lucidity.Pool(2) as pool:
        errors: list[BaseException] = []

        def calls(offset):
            try:
                for i in range(40):
                    assert pool.apply(abs, (-(offset + i),)) == offset + i
            except BaseException as exc:  # noqa: B036 - reported to the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=calls, args=(1000 * n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors


def test_a_threads_files_are_closed_when_it_ends():
    with lucidity.Pool(2) as pool:
        warm(pool, abs, -1)
        me = psutil.Process()
        before = me.num_fds()
        for _ in range(3 * STREAMS_PER_THREAD):
            thread = threading.Thread(target=lambda: [pool.apply(abs, (-1,)) for _ in range(2)])
            thread.start()
            thread.join()
        wait_until(lambda: me.num_fds() <= before + 3, 10, "the ended threads' files to close")


def test_a_call_inside_a_task_waits_the_worker_way():
    """In a worker, a blocking call serves the worker's own queue while it waits (lucidity.waiting): no door."""
    with lucidity.Pool(2) as pool:
        assert pool.apply(nested_sum, (5,)) == 15
        assert pool.apply(nested_sum, (5,)) == 15


def nested_sum(n):
    if n == 0:
        return 0
    with lucidity.Pool(1) as inner:
        return n + inner.apply(nested_sum, (n - 1,))


def test_a_call_waits_its_turn_behind_tasks_already_queued():
    """While other tasks wait for a worker, a lone call does not jump the queue: it goes the ZeroMQ way."""
    with lucidity.Pool(1) as pool:
        warm(pool, time.sleep, 0)
        queued = [pool.apply_async(time.sleep, (0.05,)) for _ in range(3)]
        pool.apply(time.sleep, (0,))
        assert all(result.ready() for result in queued)


@lucidity.job
def job_pid(code=None):
    return pid_or_exit(code)


def test_a_jobs_blocking_calls_go_by_the_door_and_its_crash_is_named():
    with lucidity.LocalCluster(processes=1) as cluster, connected(cluster.address):
        pid = job_pid.local()
        assert job_pid.local() == pid and job_pid.remote() == pid
        assert door_connections(pid) == 1
        with pytest.raises(lucidity.WorkerCrashed, match=r"remote\(job_pid"):
            job_pid.remote(5)
        assert job_pid.remote() != pid


def test_apply_async_get_and_an_executors_result_go_by_the_door_when_waited_for_at_once():
    """Taken from the queue if the I/O thread has not sent it yet (a race it often wins: so, of 50)."""
    with lucidity.Pool(1) as pool:
        pid = warm(pool, pid_or_exit)
        waited = []
        for _ in range(50):
            result = pool.apply_async(pid_or_exit)
            assert result.get() == pid
            waited.append(result._task.direct)
        assert any(waited) and door_connections(pid) == 1
    with lucidity.Executor(1) as executor:
        pid = executor.submit(pid_or_exit).result()
        futures = [executor.submit(pid_or_exit) for _ in range(50)]  # all submitted first: none is taken
        assert [f.result(timeout=30) for f in futures] == [pid] * 50 and not any(f.task.direct for f in futures)
        waited = []
        for _ in range(50):
            future = executor.submit(pid_or_exit)
            assert future.result(timeout=30) == pid and future.exception() is None
            waited.append(future.task.direct)
        assert any(waited) and door_connections(pid) == 1


def test_a_wait_that_times_out_leaves_the_call_running_and_its_result_arrives():
    with Rendezvous() as rendezvous, lucidity.Pool(1) as pool:
        warmer = threading.Thread(target=release_twice, args=(rendezvous,))
        warmer.start()
        warm(pool, hold, rendezvous.address, "warm")
        warmer.join()
        result = pool.apply_async(hold, (rendezvous.address, "late"))
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.2)
        assert rendezvous.started(1) == ["late"]
        rendezvous.release()
        assert result.get(timeout=30) == "late"
        assert pool.apply(abs, (-1,)) == 1
