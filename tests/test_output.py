"""What tasks print, at the caller (issue 14, item 2): real CLI nodes, a caller run as its own process so that
its real stderr (fd 2) is what is read.

Checked: lines written every way a task can write them (print to stdout and stderr, os.write on the fds, a
subprocess) reach the caller's stderr prefixed with the worker's pid and node, in order; many lines in
order; lines a task's thread writes after its result was sent; ``forward_output=False`` on each face and
``lucidity node --no-forward-output`` keep them at the node; the embedded cluster keeps multiprocessing's
behaviour (workers write to the caller's own stdout, unprefixed); a job inside a task gets its line to the
outer caller exactly once. The bodies of OUTPUT and PROGRESS refuse malformed fields.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from helpers import TESTS, CliCluster, wait_until
from lucidity import messages
from lucidity.errors import ProtocolError
from lucidity.protocol import Kind, Message

WAIT = 60.0

TASKS = '''
import os, subprocess, sys, threading, time
import lucidity

def chatty(x):
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    os.write(1, f"fd1 {x}\\n".encode())
    subprocess.run(["echo", f"child {x}"], check=True)
    return x, os.getpid()

def interleaved(x):
    # Unbuffered writers (python -u, C code) send a line's start and its end apart; another stream's line
    # comes between them.
    os.write(2, f"half {x}".encode())
    time.sleep(0.2)
    os.write(1, f"whole {x}\\n".encode())
    time.sleep(0.2)
    os.write(2, b" done\\n")
    os.write(2, b"no newline at the end")
    return x

def many(n):
    for i in range(n):
        print(f"line {i}")
    return n

def late(x):
    def later():
        time.sleep(0.2)
        print(f"late {x}", flush=True)
    threading.Thread(target=later).start()
    return x

@lucidity.job
def inner(x):
    print(f"inner {x}")
    return x

def outer(x):
    return inner.remote(x)
'''


def run_caller(tmp_path: Any, body: str, address: str = "") -> subprocess.CompletedProcess[str]:
    """Run `body` (with the task functions above defined) as a script; its stdout and stderr, separately."""
    (tmp_path / "outputtasks.py").write_text(TASKS)
    script = tmp_path / "caller.py"
    script.write_text("import sys, time\nimport lucidity\nfrom outputtasks import *\n"
                      f"ADDRESS = {address!r}\n"
                      "if __name__ == '__main__':\n" + textwrap.indent(textwrap.dedent(body), "    "))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), TESTS]))
    env.pop("LUCIDITY_ADDRESS", None)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=WAIT, env=env,
                          cwd=tmp_path)


@pytest.fixture
def one_worker(tmp_path: Any) -> Any:
    """A control node and one node "n1" of one worker, whose workers import the task module from tmp_path."""
    with CliCluster() as cluster:
        cluster.env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), cluster.env["PYTHONPATH"]])
        cluster.log_dir = str(tmp_path)
        cluster.start_control()
        cluster.start_node("n1", 1)
        cluster.wait_for(1, workers_per_node=1)
        yield cluster


def prefixed(stderr: str) -> list[tuple[int, str, str]]:
    """The forwarded lines of a caller's stderr: (pid, node, text)."""
    return [(int(m[1]), m[2], m[3]) for m in re.finditer(r"^\(pid=(\d+), node=([^)]+)\) (.*)$", stderr, re.M)]


def test_every_way_a_task_writes_reaches_the_callers_stderr_prefixed(tmp_path: Any, one_worker: CliCluster) -> None:
    done = run_caller(tmp_path, """
        with lucidity.Pool(address=ADDRESS) as pool:
            results = pool.map(chatty, range(3), chunksize=1)
            print("pids", sorted({pid for _, pid in results}))
    """, one_worker.address)
    assert done.returncode == 0, done.stderr
    [pid] = eval(done.stdout.split("pids", 1)[1])
    lines = prefixed(done.stderr)
    assert {(p, node) for p, node, _ in lines} == {(pid, "n1")}
    texts = [text for _, _, text in lines]
    for x in range(3):  # each stream in the order written; every line once
        mine = [t for t in texts if t.endswith(f" {x}")]
        assert sorted(mine) == sorted([f"out {x}", f"err {x}", f"fd1 {x}", f"child {x}"])
        assert mine.index(f"out {x}") < mine.index(f"fd1 {x}") < mine.index(f"child {x}")
    assert [t for t in texts if t.startswith("out")] == ["out 0", "out 1", "out 2"]
    assert "out 0" not in done.stdout  # the caller's stdout stays its own


def test_a_line_written_in_pieces_stays_whole_between_another_streams_lines(tmp_path: Any,
                                                                            one_worker: CliCluster) -> None:
    done = run_caller(tmp_path, """
        with lucidity.Pool(address=ADDRESS) as pool:
            print(pool.map(interleaved, [1, 2]))
    """, one_worker.address)
    assert done.returncode == 0, done.stderr
    assert [text for _, _, text in prefixed(done.stderr)] == [
        "whole 1", "half 1 done", "no newline at the end", "whole 2", "half 2 done", "no newline at the end"]


def test_many_lines_arrive_whole_and_in_order(tmp_path: Any, one_worker: CliCluster) -> None:
    done = run_caller(tmp_path, """
        with lucidity.Pool(address=ADDRESS) as pool:
            print(pool.apply(many, (20000,)))
    """, one_worker.address)
    assert done.returncode == 0, done.stderr
    assert [text for _, _, text in prefixed(done.stderr)] == [f"line {i}" for i in range(20000)]


def test_lines_written_after_the_result_still_arrive(tmp_path: Any, one_worker: CliCluster) -> None:
    # The caller keeps running until the late line came (its stderr is watched through a tee), then exits.
    done = run_caller(tmp_path, """
        import io
        seen = io.StringIO()
        class Tee:
            def write(self, text):
                seen.write(text)
                return sys.__stderr__.write(text)
            def flush(self):
                sys.__stderr__.flush()
        sys.stderr = Tee()
        with lucidity.Pool(address=ADDRESS) as pool:
            print("result", pool.apply(late, (7,)), flush=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "late 7" not in seen.getvalue():
                time.sleep(0.05)
    """, one_worker.address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "result 7"
    assert [text for _, _, text in prefixed(done.stderr)] == ["late 7"]


@pytest.mark.parametrize("face", ["Pool", "Executor", "job"])
def test_forward_output_false_keeps_the_lines_at_the_node(tmp_path: Any, one_worker: CliCluster, face: str) -> None:
    run = {
        "Pool": "with lucidity.Pool(address=ADDRESS, forward_output=False) as pool:\n    pool.map(chatty, [1])",
        "Executor": "with lucidity.Executor(address=ADDRESS, forward_output=False) as ex:\n"
                    "    ex.submit(chatty, 1).result()",
        "job": "lucidity.connect(ADDRESS)\n"
               "lucidity.job(forward_output=False)(chatty).remote(1)",
    }[face]
    # The same task forwarded afterwards shows that lines do arrive where they are wanted, and through the
    # same worker: the first task's OUTPUT preceded its result, so it would have been printed by now.
    done = run_caller(tmp_path, run + "\nwith lucidity.Pool(address=ADDRESS) as pool:\n    pool.map(chatty, [2])\n",
                      one_worker.address)
    assert done.returncode == 0, done.stderr
    texts = [text for _, _, text in prefixed(done.stderr)]
    assert sorted(texts) == ["child 2", "err 2", "fd1 2", "out 2"]
    log = (tmp_path / "n1.log").read_text()
    assert "err 1" in log  # the node's log keeps what a task wrote to stderr


def test_a_node_started_with_no_forward_output_keeps_its_tasks_lines(tmp_path: Any) -> None:
    with CliCluster() as cluster:
        cluster.env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), cluster.env["PYTHONPATH"]])
        cluster.log_dir = str(tmp_path)
        cluster.start_control()
        cluster.start_node("n1", 1, "--no-forward-output")
        cluster.wait_for(1, workers_per_node=1)
        done = run_caller(tmp_path, """
            with lucidity.Pool(address=ADDRESS) as pool:
                pool.map(chatty, [5])
        """, cluster.address)
        assert done.returncode == 0, done.stderr
        assert prefixed(done.stderr) == []
        wait_until(lambda: "err 5" in (tmp_path / "n1.log").read_text(), WAIT, "the line in the node's log")


def test_the_embedded_cluster_prints_as_multiprocessing_does(tmp_path: Any) -> None:
    done = run_caller(tmp_path, """
        with lucidity.Pool(1) as pool:
            pool.map(chatty, range(2), chunksize=1)
        print("after")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["out 0", "fd1 0", "child 0", "out 1", "fd1 1", "child 1", "after", ""]
    assert prefixed(done.stderr) == []
    assert "err 0" in done.stderr


def test_a_job_run_by_a_task_reaches_the_outer_caller_once(tmp_path: Any, one_worker: CliCluster) -> None:
    one_worker.start_node("n2", 1)
    one_worker.wait_for(2, workers_per_node=1)
    done = run_caller(tmp_path, """
        with lucidity.Pool(address=ADDRESS) as pool:
            print(pool.apply(outer, (3,)))
    """, one_worker.address)
    assert done.returncode == 0, done.stderr
    inner_lines = [line for line in done.stderr.splitlines() if "inner 3" in line]
    assert len(inner_lines) == 1, done.stderr
    assert re.fullmatch(r"\(pid=\d+, node=n\d\) (\(pid=\d+, node=n\d\) )?inner 3", inner_lines[0])


@pytest.mark.parametrize("kind, meta, payload", [
    (Kind.OUTPUT, {"task": -1}, [b"x"]),
    (Kind.OUTPUT, {"task": 1, "end": "yes"}, [b"x"]),
    (Kind.PROGRESS, {"task": 1, "items": "3", "done": 0, "total": 0}, []),
    (Kind.PROGRESS, {"task": 1, "items": 3, "done": float("nan"), "total": 1}, []),
    (Kind.PROGRESS, {"task": 1, "items": 3, "done": 1, "total": -1}, []),
])
def test_malformed_reports_are_refused(kind: Kind, meta: dict[str, Any], payload: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        messages.parse(Message(kind, meta, payload))
