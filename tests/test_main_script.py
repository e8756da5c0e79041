"""The caller's main script in workers, as a user meets it: real scripts in fresh interpreters, stdout to a file.

Each test runs one script under lucidity and under the multiprocessing start methods that define the
behaviour (fork: the Linux default before 3.14; spawn: the main script imported as ``__mp_main__``), and
compares what they print. See lucidity/mainscript.py for the design.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import CliCluster
from scripts import run_script

pytestmark = pytest.mark.timeout(240)


def same_output(tmp_path: Path, source: str, flavours: tuple[str, ...] = ("fork", "spawn"),
                args: tuple[str, ...] = ()) -> str:
    """Run the script under lucidity and each stdlib flavour; assert they print the same; return it."""
    expected = {}
    for flavour in flavours:
        expected[flavour] = run_script(source, tmp_path / flavour, flavour, args=args).check().stdout
    got = run_script(source, tmp_path / "lucidity", "lucidity", args=args).check().stdout
    for flavour, text in expected.items():
        assert got == text, f"lucidity printed\n{got}\n{flavour} printed\n{text}"
    return got


INITIALIZER_GLOBAL = """
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def init(value):
        global param1
        param1 = value

    def task(x):
        return param1 + x

    if __name__ == "__main__":
        with Pool(2, initializer=init, initargs=(100,)) as pool:
            print(pool.map(task, range(6)))
"""


def test_globals_an_initializer_sets_are_seen_by_tasks(tmp_path: Path) -> None:
    assert same_output(tmp_path, INITIALIZER_GLOBAL) == "[100, 101, 102, 103, 104, 105]\n"


EXCEPTION_CLASS = """
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    class InvalidInput(ValueError):
        pass

    def check(x):
        if x % 3 == 0:
            raise InvalidInput(f"bad {x}")
        return x

    if __name__ == "__main__":
        with Pool(2) as pool:
            for x in range(1, 7):
                try:
                    print(pool.apply(check, (x,)))
                except InvalidInput as error:
                    print("caught", type(error).__name__, error, type(error) is InvalidInput)
            print(pool.map(check, [1, 2, 4]))
"""


def test_an_exception_class_of_the_script_is_caught_by_except(tmp_path: Path) -> None:
    out = same_output(tmp_path, EXCEPTION_CLASS)
    assert out.count("caught InvalidInput") == 2 and "True" in out


CLASS_IDENTITY = """
    from dataclasses import dataclass
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    @dataclass
    class Point:
        x: int
        y: int

        def norm1(self):
            return abs(self.x) + abs(self.y)

    def shift(p):
        return Point(p.x + 1, p.y - 1)

    if __name__ == "__main__":
        with Pool(2) as pool:
            moved = pool.map(shift, [Point(i, i) for i in range(4)])
        print(moved, all(type(p) is Point for p in moved), [p.norm1() for p in moved])
"""


def test_classes_of_the_script_keep_their_identity_both_ways(tmp_path: Path) -> None:
    assert "True" in same_output(tmp_path, CLASS_IDENTITY)


MONTE_CARLO = """
    from random import random
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def estimate(n):
        first = random()
        inside = sum(1 for _ in range(n) if random() ** 2 + random() ** 2 <= 1)
        return first, 4 * inside / n

    if __name__ == "__main__":
        with Pool(2) as pool:
            draws = pool.map(estimate, [20000] * 6, chunksize=1)
        # Estimates may coincide by chance; first draws of independent streams do not.
        print(len({first for first, _ in draws}), all(abs(e - 3.14159) < 0.1 for _, e in draws))
"""


def test_tasks_draw_independent_random_numbers(tmp_path: Path) -> None:
    assert same_output(tmp_path, MONTE_CARLO) == "6 True\n"


UNGUARDED = """
    # No __main__ guard: this runs under fork (and ran under lucidity before it imported scripts), and must not
    # run again in a worker, where it would start a pool of its own.
    from random import random, randint
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    param1 = None
    SCALE = 1000

    class Rejected(Exception):
        pass

    def init(value):
        global param1
        param1 = value

    def task(x):
        if x == 3:
            raise Rejected("three")
        return param1 + x * SCALE

    def draw(_):
        return random(), randint(0, 10 ** 9)

    def doubled():
        return param1 * 2

    pool = Pool(2, initializer=init, initargs=(7,))
    print(pool.map(task, [1, 2]))
    try:
        pool.apply(task, (3,))
    except Rejected as error:
        print("caught", repr(error))
    print(len(set(pool.map(draw, range(8), chunksize=1))))
    print(pool.apply(doubled))  # lucidity: print(pool.apply(lambda: param1 * 2))
    pool.close()
    pool.join()
    print("done")
"""


def test_a_script_without_the_guard_runs_as_under_fork_and_its_top_level_code_runs_once(tmp_path: Path) -> None:
    out = same_output(tmp_path, UNGUARDED, flavours=("fork",))
    assert out == "[1007, 2007]\ncaught Rejected('three')\n8\n14\ndone\n"


POOL_AT_TOP_LEVEL = """
    import os
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def square(x):
        return x * x

    pool = Pool(2)  # top-level code starts the pool, although the script has a guard below

    if __name__ == "__main__":
        print(pool.map(square, range(5)))
        pool.close()
        pool.join()
"""


def test_a_pool_started_by_top_level_code_is_not_started_again_in_workers(tmp_path: Path) -> None:
    assert same_output(tmp_path, POOL_AT_TOP_LEVEL, flavours=("fork",)) == "[0, 1, 4, 9, 16]\n"


MAIN_BLOCK_NAMES = """
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def scaled(x):
        return x * factor

    if __name__ == "__main__":
        factor = 3  # bound only here: fork workers see it, an import of the script does not
        with Pool(2) as pool:
            print(pool.map(scaled, range(4)))
"""


def test_names_bound_only_in_the_main_block_travel_as_under_fork(tmp_path: Path) -> None:
    # Spawn raises NameError here; lucidity sends the value, as fork's workers would have it.
    assert same_output(tmp_path, MAIN_BLOCK_NAMES, flavours=("fork",)) == "[0, 3, 6, 9]\n"
    spawn = run_script(MAIN_BLOCK_NAMES, tmp_path / "spawn", "spawn")
    assert spawn.returncode != 0 and "NameError" in spawn.stderr


MODULE_DATA_IMPORTED = """
    import os
    import sys
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    TABLE = list(range(200_000))  # computed again by an import on the workers' side, never sent
    LOADED_IN = os.getpid()

    def lookup(i):
        return TABLE[i], LOADED_IN != int(os.environ["CALLER"]), __name__

    if __name__ == "__main__":
        os.environ["CALLER"] = str(os.getpid())
        with Pool(2) as pool:
            print(pool.map(lookup, [5, 199_999]))
        if "lucidity" in sys.modules:
            from lucidity import mainscript, serialization
            print("function bytes", len(serialization.dumps_function(lookup, mainscript.describe().defined)) < 500)
"""


def test_module_level_data_is_made_by_the_import_not_copied(tmp_path: Path) -> None:
    spawn = run_script(MODULE_DATA_IMPORTED, tmp_path / "spawn", "spawn").check().stdout
    got = run_script(MODULE_DATA_IMPORTED, tmp_path / "lucidity", "lucidity").check().stdout
    assert spawn == "[(5, True, '__mp_main__'), (199999, True, '__mp_main__')]\n"
    assert got == spawn + "function bytes True\n"


TOP_LEVEL_FAILS_IN_WORKER = """
    import os
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    if os.environ.setdefault("SCRIPT_OWNER", str(os.getpid())) != str(os.getpid()):
        raise RuntimeError("this script's top-level code runs only in its own process")

    def square(x):
        return x * x

    if __name__ == "__main__":
        with Pool(1) as pool:
            try:
                pool.apply(square, (3,))
            except RuntimeError as error:
                print("failed:", error)
                print("notes:", " ".join(getattr(error, "__notes__", [])))
"""


def test_a_script_that_fails_to_import_in_a_worker_fails_the_task_and_says_why(tmp_path: Path) -> None:
    out = run_script(TOP_LEVEL_FAILS_IN_WORKER, tmp_path, "lucidity").check().stdout
    assert "failed: this script's top-level code runs only in its own process" in out
    assert "imported the main script" in out and "__mp_main__" in out


WORKER_IDENTITY = """
    import sys
    from multiprocessing import Pool, current_process  # lucidity: from lucidity import Pool; from multiprocessing import current_process

    def who(_):
        process = current_process()
        return tuple(sys.argv[1:]), process.name.rsplit("-", 1)[0], len(process._identity), process._identity[0] >= 1

    if __name__ == "__main__":
        with Pool(2) as pool:
            print(sorted(set(pool.map(who, range(8)))))
"""


def test_workers_see_the_callers_argv_and_are_named_as_pool_workers(tmp_path: Path) -> None:
    fork = run_script(WORKER_IDENTITY, tmp_path / "fork", "fork", args=("--alpha", "2")).check().stdout
    spawn = run_script(WORKER_IDENTITY, tmp_path / "spawn", "spawn", args=("--alpha", "2")).check().stdout
    got = run_script(WORKER_IDENTITY, tmp_path / "lucidity", "lucidity", args=("--alpha", "2")).check().stdout
    assert got == fork == "[(('--alpha', '2'), 'ForkPoolWorker', 1, True)]\n"
    assert spawn == got.replace("ForkPoolWorker", "SpawnPoolWorker")


RUN_AS_MODULE = {
    "app/__init__.py": "",
    "app/helpers.py": "def double(x):\n    return 2 * x\n",
    "app/main.py": textwrap.dedent("""
        from multiprocessing import Pool  # lucidity: from lucidity import Pool
        from .helpers import double

        class Tagged(Exception):
            pass

        def work(x):
            if x < 0:
                raise Tagged(x)
            return double(x), __name__

        if __name__ == "__main__":
            with Pool(2) as pool:
                print(pool.map(work, range(3)))
                try:
                    pool.apply(work, (-1,))
                except Tagged as error:
                    print("caught", error)
    """),
}


@pytest.mark.parametrize("flavour", ["spawn", "lucidity"])
def test_a_script_run_with_python_m_is_imported_by_its_module_name(tmp_path: Path, flavour: str) -> None:
    from scripts import lucidity_form

    for name, text in RUN_AS_MODULE.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if flavour == "spawn" and name.endswith("main.py"):
            text = "import multiprocessing; multiprocessing.set_start_method('spawn', force=True)\n" + text
        path.write_text(lucidity_form(text) if flavour == "lucidity" else text)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LUCIDITY_ADDRESS")}
    done = subprocess.run([sys.executable, "-m", "app.main"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[(0, '__mp_main__'), (2, '__mp_main__'), (4, '__mp_main__')]\ncaught -1\n"


def test_code_typed_into_the_interpreter_travels_by_value(tmp_path: Path) -> None:
    program = textwrap.dedent("""
        from lucidity import Pool
        offset = 10
        class Shout(Exception):
            pass
        def add(x):
            return x + offset
        def fail(_):
            raise Shout("loud")
        with Pool(2) as pool:
            print(pool.map(add, range(3)), pool.map(lambda x: add(x) * 2, range(2)))
            try:
                pool.apply(fail, (1,))
            except Shout as error:
                print("caught", error)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LUCIDITY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[10, 11, 12] [20, 22]\ncaught loud\n"


NUMPY_GLOBAL_STATE = """
    import numpy as np
    from numpy.random import rand
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def draws(_):
        return float(rand()), float(np.random.random())

    if __name__ == "__main__":
        with Pool(2) as pool:
            values = pool.map(draws, range(6), chunksize=1)
        print(len({v for pair in values for v in pair}))
"""


def test_numpys_global_random_state_is_the_workers_own(tmp_path: Path) -> None:
    # Under fork, workers inherit one numpy state and can repeat each other's draws; spawn and lucidity do not.
    assert same_output(tmp_path, NUMPY_GLOBAL_STATE, flavours=("spawn",)) == "12\n"


UNPICKLABLE_ITEM = """
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    class A:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    def square(x):
        return x * x

    if __name__ == "__main__":
        with Pool(2) as pool:
            try:
                pool.map(square, [A()] * 10)
            except RuntimeError as error:  # CPython's test_map_unpicklable expects the pickler's own exception
                print(type(error).__name__, error)
            print(pool.map(square, range(3)))
"""


def test_an_item_that_cannot_be_pickled_raises_the_picklers_exception(tmp_path: Path) -> None:
    assert same_output(tmp_path, UNPICKLABLE_ITEM) == "RuntimeError cannot pickle\n[0, 1, 4]\n"


UNCAUGHT = """
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def explode(x):
        raise ValueError(f"boom {x}")  # the remote line

    if __name__ == "__main__":
        with Pool(1) as pool:
            pool.map(explode, [1])
"""


@pytest.mark.parametrize("flavour", ["fork", "lucidity"])
def test_a_tasks_traceback_shows_the_remote_frames_once(tmp_path: Path, flavour: str) -> None:
    run = run_script(UNCAUGHT, tmp_path, flavour)
    assert run.returncode == 1
    assert run.stderr.count("# the remote line") == 1, run.stderr
    assert "RemoteTraceback" in run.stderr and run.stderr.rstrip().endswith("ValueError: boom 1")


SHARED_WORKER = """
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    def init(value):
        global tag
        tag = value

    def read(_):
        return tag

    if __name__ == "__main__":
        first = Pool(1, initializer=init, initargs=("first",))
        print(first.apply(read, (0,)))
        others = [Pool(1, initializer=init, initargs=(f"other {i}",)) for i in range(20)]
        print(sorted(set(pool.apply(read, (0,)) for pool in others)) == sorted(f"other {i}" for i in range(20)))
        twin = Pool(1, initializer=init, initargs=("first",))  # the same initializer as `first`: its own run
        print(twin.apply(read, (0,)), first.apply(read, (0,)))
        for pool in [first, twin, *others]:
            pool.close()
            pool.join()
"""


def test_pools_sharing_one_worker_each_have_their_namespace_and_initializer(tmp_path: Path) -> None:
    # One worker serves 22 pools, more than it keeps namespaces for: a forgotten one is sent again, and its
    # initializer runs again there, so that every pool sees what its own initializer set.
    with CliCluster() as cluster:
        cluster.start_control()
        cluster.start_node("solo", 1)
        cluster.wait_for(1, workers_per_node=1)
        fork = run_script(SHARED_WORKER, tmp_path / "fork", "fork").check().stdout
        got = run_script(SHARED_WORKER, tmp_path / "lucidity", "lucidity",
                         env={"LUCIDITY_ADDRESS": cluster.address}).check().stdout
    assert got == fork == "first\nTrue\nfirst first\n"


NESTED_JOBS = """
    import math

    from lucidity import job

    @job
    def square(a):
        return a * a

    @job
    def pythagorean(a, b):
        # Jobs of the script started by a task: the worker knows the script as __mp_main__.
        a2 = square.remote_async(a)
        b2 = square.remote_async(b)
        return math.sqrt(a2.await_get() + b2.await_get())

    if __name__ == "__main__":
        print(pythagorean.remote_fanout([(3, 4), (5, 12), (8, 15)]))
"""


def test_jobs_of_the_script_started_by_its_tasks_run(tmp_path: Path) -> None:
    """A nested job of the main script went by reference to __mp_main__, which the worker running it had not
    loaded: AttributeError (found by the docs examples of docs/jobs.md)."""
    run = run_script(NESTED_JOBS, tmp_path, "lucidity").check()
    assert run.stdout == "[5.0, 13.0, 17.0]\n"
