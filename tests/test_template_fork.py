"""Workers forked by their node's template (lucidity/node/template.py): each is a process that glibc knows as
its own, the template outlives its daemon's stopping, and a LocalCluster still removes the directories of
gone callers.

glibc keeps each thread's kernel id in its thread block and uses it to signal a thread (pthread_kill) or read
its CPU clock; a forked child whose block still held its parent's id could not signal its own main thread.
These tests ask a running worker, through a task, what glibc and the kernel each say. (They were written for
a worker cloned straight into the daemon's children, taken back in session 12; they hold for any fork.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Iterator

import psutil
import pytest

import lucidity
from lucidity.transport import CREATOR_FILE

#: Bound on every wait, in seconds.
WAIT = 30.0
_GET_ROBUST_LIST = {"x86_64": 274, "aarch64": 100}


@pytest.fixture
def pool() -> Iterator[lucidity.Pool]:
    with lucidity.Pool(2) as embedded:
        yield embedded


def test_a_forked_worker_has_its_own_thread_id_where_glibc_keeps_it(pool: lucidity.Pool) -> None:
    for report in pool.map(_thread_ids, range(4), chunksize=1):
        assert report["glibc_tid"] == report["kernel_tid"] == report["pid"]
        assert report["main_thread_signalled"] is True  # pthread_kill from another thread reached it
        assert report["robust_list_registered"] is not False  # None: an architecture this test cannot ask
        assert report["parent_is_node"] is True


def test_a_forked_worker_runs_threads_and_subprocesses(pool: lucidity.Pool) -> None:
    assert pool.apply(_threads_and_a_subprocess) == (sum(range(8)), 0)


@pytest.fixture
def tmpdir_of_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $TMPDIR (short, under /tmp: ipc:// paths in it must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    try:
        yield path
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def test_a_starting_cluster_removes_gone_callers_directories_and_no_live_ones(tmpdir_of_test: Path) -> None:
    """The scan of $TMPDIR runs while the daemons start now (not before): it still runs, and still spares
    a directory whose creator lives."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=WAIT)
    gone_pid = int(gone.stdout)  # exited and reaped: provably gone (unless its pid was reused, then kept)
    with lucidity.LocalCluster(processes=1, hosted_control=True) as first:
        mine = Path(first.address.removeprefix("ipc://")).parent
        _, start, scope = (mine / CREATOR_FILE).read_text().split()
        stale = Path(tempfile.mkdtemp(prefix="lucidity-", dir=tmpdir_of_test))
        (stale / CREATOR_FILE).write_text(f"{gone_pid} {start} {scope}\n")
        with lucidity.LocalCluster(processes=1, hosted_control=True) as second:
            assert not stale.exists()
            assert mine.is_dir()  # ours, alive
            assert Path(second.address.removeprefix("ipc://")).parent.is_dir()


def _thread_ids(_: int) -> dict[str, object]:
    libc = ctypes.CDLL(None, use_errno=True)
    clock = ctypes.c_int()
    libc.pthread_getcpuclockid(ctypes.c_ulong(threading.get_ident()), ctypes.byref(clock))
    glibc_tid = ~(clock.value >> 3)  # the kernel's CPU clock id of a thread: (~tid << 3) | flags
    signalled = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: signalled.set())
    try:
        sender = threading.Thread(target=signal.pthread_kill, args=(threading.main_thread().ident, signal.SIGUSR1))
        sender.start()
        sender.join()
        signalled.wait(WAIT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    robust: object = None
    number = _GET_ROBUST_LIST.get(os.uname().machine)
    if number is not None:
        head, length = ctypes.c_void_p(), ctypes.c_size_t()
        libc.syscall.restype = ctypes.c_long
        robust = libc.syscall(number, 0, ctypes.byref(head), ctypes.byref(length)) == 0 and bool(head.value)
    parent = psutil.Process(os.getppid())
    return {"glibc_tid": glibc_tid, "kernel_tid": threading.get_native_id(), "pid": os.getpid(),
            "main_thread_signalled": signalled.is_set(), "robust_list_registered": robust,
            "parent_is_node": "node" in parent.cmdline()}


def _threads_and_a_subprocess() -> tuple[int, int]:
    results: list[int] = []
    lock = threading.Lock()

    def add(value: int) -> None:
        with lock:
            results.append(value)

    threads = [threading.Thread(target=add, args=(value,)) for value in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    code = subprocess.run([sys.executable, "-c", "pass"], timeout=WAIT).returncode
    return sum(results), code


REPLACED_WHILE_STOPPING = """
    import sys
    import lucidity

    def grow(_):
        return len(b"x" * (200 * 2**20))  # over the cap: the worker is killed, and replaced

    if __name__ == "__main__":
        with lucidity.Pool(2, memory_limit="128MB") as pool:
            try:
                pool.map(grow, range(4), chunksize=1)
            except lucidity.MemoryLimitExceeded:
                print("over the cap")
        # leaving the block stops the daemon while it may still be replacing the killed workers
"""


def test_the_template_outlives_a_sigterm_to_its_daemons_group(tmp_path: Path) -> None:
    # A pool's close sends SIGTERM to its daemon's process group, the template's too: the template must leave
    # with its daemon, not before, or the daemon replaces workers without it and says the template is gone.
    script = tmp_path / "replaced.py"
    script.write_text(textwrap.dedent(REPLACED_WHILE_STOPPING))
    environment = {k: v for k, v in os.environ.items() if k not in ("LUCIDITY_ADDRESS", "PYTHONUNBUFFERED")}
    for _ in range(3):
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                             env=environment, timeout=WAIT * 2, start_new_session=True)
        assert run.stdout == "over the cap\n", run.stderr
        assert "template is gone" not in run.stderr, run.stderr


def _frozen_objects(_: int) -> int:
    import gc

    return gc.get_freeze_count()


def test_what_a_worker_inherits_from_its_template_is_frozen_for_the_collector(pool: lucidity.Pool) -> None:
    # Collections in a worker would otherwise walk, and write to, every object the template held, copying each
    # page of them: the fork-without-exec case Python's gc.freeze is for.
    assert all(count > 10_000 for count in pool.map(_frozen_objects, range(4), chunksize=1))
