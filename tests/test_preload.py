"""The caller's main script run once in the worker template of its embedded cluster (lucidity/node/preload.py),
as a user meets it: real scripts in fresh interpreters, against what multiprocessing's fork and spawn print.

Workers forked from a template that ran the script hold it, and what it imported, from their first task
on; where the script leaves the template unfit to fork from (a thread, an open file, an exception, a slow
import), each worker imports it itself on first use, as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import run_script

pytestmark = pytest.mark.timeout(240)

RUNS_ONCE = """
    import os
    import sys
    import time
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    with open(sys.argv[1], "a") as log:  # every process that runs this top-level code
        log.write(f"{os.getpid()}\\n")
    print("top level")

    def square(x):
        time.sleep(0.05)  # long enough that every worker gets some
        return x * x, os.getpid()

    if __name__ == "__main__":
        with Pool(3) as pool:
            results = pool.map(square, range(12), chunksize=1)
        print([value for value, _ in results])
        print("workers", len({pid for _, pid in results}), file=sys.stderr)
"""


def test_the_script_runs_once_for_all_workers_and_prints_as_under_fork(tmp_path: Path) -> None:
    fork = run_script(RUNS_ONCE, tmp_path / "fork", "fork", args=[str(tmp_path / "fork.log")]).check().stdout
    got = run_script(RUNS_ONCE, tmp_path / "lucidity", "lucidity", args=[str(tmp_path / "lucidity.log")]).check()
    assert got.stdout == fork == "top level\n[0, 1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121]\n"
    assert "workers 3" in got.stderr
    runs = (tmp_path / "lucidity.log").read_text().split()
    # The caller, and the template for its three workers (each worker's own import would add three more).
    assert len(runs) == 2, runs


IMPORTED_AS = """
    import os
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    os.environ["IMPORTED_AS"] = __name__  # the caller's top level says __main__, an import __mp_main__
    os.environ.pop("DROPPED_BY_THE_SCRIPT", None)

    def seen(_):
        return os.environ.get("IMPORTED_AS"), os.environ.get("DROPPED_BY_THE_SCRIPT")

    if __name__ == "__main__":
        os.environ["DROPPED_BY_THE_SCRIPT"] = "set again by the caller"
        with Pool(2) as pool:
            print(sorted(set(pool.map(seen, range(4)))))
"""


def test_the_scripts_changes_to_the_environment_reach_the_workers_as_under_spawn(tmp_path: Path) -> None:
    spawn = run_script(IMPORTED_AS, tmp_path / "spawn", "spawn").check().stdout
    got = run_script(IMPORTED_AS, tmp_path / "lucidity", "lucidity").check().stdout
    assert got == spawn == "[('__mp_main__', None)]\n"


OPEN_FILE = """
    import os
    import sys
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    LOG = open(sys.argv[1], "a")  # open for as long as the process lives

    def record(x):
        LOG.write(f"{x}\\n")
        LOG.flush()
        return x

    if __name__ == "__main__":
        with Pool(2) as pool:
            print(pool.map(record, range(6), chunksize=1))
"""


def test_a_script_that_keeps_a_file_open_is_imported_by_each_worker(tmp_path: Path) -> None:
    # Forked from a template that ran it, a worker would find the file's descriptor closed (a worker keeps none
    # but its own): the template refuses, and each worker opens its own, as under spawn.
    log = tmp_path / "records.log"
    got = run_script(OPEN_FILE, tmp_path / "lucidity", "lucidity", args=[str(log)]).check().stdout
    assert got == "[0, 1, 2, 3, 4, 5]\n"
    assert sorted(log.read_text().split()) == [str(x) for x in range(6)]


THREAD = """
    import threading
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    STOP = threading.Event()
    WATCHER = threading.Thread(target=STOP.wait, daemon=True)
    WATCHER.start()

    def alive(_):
        return WATCHER.is_alive()

    if __name__ == "__main__":
        with Pool(2) as pool:
            print(pool.map(alive, range(4)))
"""


def test_a_script_that_starts_a_thread_is_imported_by_each_worker(tmp_path: Path) -> None:
    # A fork keeps no thread but the one that forked: a worker forked from a template whose script started one
    # would see it dead. The template refuses, and each worker's import starts its own, as under spawn.
    spawn = run_script(THREAD, tmp_path / "spawn", "spawn").check().stdout
    got = run_script(THREAD, tmp_path / "lucidity", "lucidity").check().stdout
    assert got == spawn == "[True, True, True, True]\n"


SLOW_FIRST_IMPORT = """
    import os
    import sys
    import time
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    MARK = sys.argv[1]
    if __name__ != "__main__" and not os.path.exists(MARK):
        open(MARK, "w").close()
        time.sleep(30)  # the first import only: the template's, which gives up on it
    LOADED_IN = os.getpid()

    def where(_):
        return LOADED_IN == os.getpid()

    if __name__ == "__main__":
        with Pool(2) as pool:
            print(pool.map(where, range(4)))
"""


def test_a_script_slower_to_import_than_the_template_waits_is_imported_by_each_worker(tmp_path: Path) -> None:
    got = run_script(SLOW_FIRST_IMPORT, tmp_path / "lucidity", "lucidity", args=[str(tmp_path / "mark")],
                     timeout=60).check().stdout
    assert got == "[True, True, True, True]\n"  # each worker imported it: the template's import was abandoned



BALLAST = """
    import os
    import lucidity

    if __name__ != "__main__":
        BALLAST = b"x" * (80 * 2**20)  # an import's: workers', and a template's that ran the script
    LOADED_IN = os.getpid()

    def where(_):
        return LOADED_IN == os.getpid()

    if __name__ == "__main__":
        with lucidity.Pool(2, memory_limit="128MB") as pool:
            print(pool.map(where, range(4)))
"""


def test_a_script_holding_over_half_the_workers_memory_cap_is_imported_by_each_worker(tmp_path: Path) -> None:
    # A worker is born holding what the template holds, which its cap counts: a template that ran this script
    # would leave each worker 128 MB - 80 MB for itself and its tasks. It refuses, and each worker imports the
    # script (and holds its 80 MB) only if one of its tasks needs it.
    got = run_script(BALLAST, tmp_path / "lucidity", "lucidity", timeout=120).check().stdout
    assert got == "[True, True, True, True]\n"
