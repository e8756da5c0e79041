"""A user's main script on the embedded cluster: prints that survive, lucidity found where the caller found it,
and a caller killed with SIGKILL that leaves nothing behind (issue 9, points 3 and 7).

Every script runs in a fresh interpreter as a user would run it (`scripts.run_script`: stdout to a file or a
pipe, PYTHONUNBUFFERED unset); the printing script is also run on multiprocessing.Pool under fork and
spawn. What a task or an initializer prints is also written to a ledger file with an unbuffered O_APPEND
write, so that the test knows every line that was printed, including lines the stdout file lost.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import venv
from pathlib import Path
from typing import Iterator

import psutil
import pytest

import lucidity
from lucidity.node.control import ControlDaemon
from helpers import WaitTimeout, wait_until
from scripts import ScriptRun, run_script

#: How long the daemons of a killed caller get to stop and clean up: a node gives its workers STOP_GRACE
#: after SIGTERM and as long again after SIGKILL; the rest is margin for a loaded machine.
CLEANUP_TIMEOUT = 30.0
#: How long a started daemon or script gets to report that it is ready, in seconds.
READY_TIMEOUT = 60.0

# -- point 3: prints survive --------------------------------------------------------------------------------

PRINTER = """
import os
from multiprocessing import Pool  # lucidity: from lucidity import Pool

LEDGER = {ledger!r}


def say(text):
    line = text + " pid=" + str(os.getpid())
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)
    print(line)


def init():
    say("init")


def square(x):
    say("task " + str(x))
    return x * x


if __name__ == "__main__":
{body}
"""

SHAPES = {
    "with": """
    with Pool(2, initializer=init) as p:
        print("result", p.map(square, range(6)))
""",
    "close-join": """
    p = Pool(2, initializer=init)
    print("result", p.map(square, range(6)))
    p.close()
    p.join()
""",
    "terminate": """
    p = Pool(2, initializer=init)
    print("result", p.map(square, range(6)))
    p.terminate()
    p.join()
""",
}
RESULT = "result [0, 1, 4, 9, 16, 25]"


def run_printer(directory: Path, shape: str, flavour: str, stream: str) -> tuple[ScriptRun, list[str]]:
    """Run the printing script; return the run and the lines its tasks and initializers printed (the ledger)."""
    directory = directory / f"{shape}-{stream}-{flavour}"
    directory.mkdir(parents=True)
    ledger = directory / "ledger.txt"
    source = PRINTER.format(ledger=str(ledger), body=textwrap.dedent(SHAPES[shape]).replace("\n", "\n    "))
    run = run_script(source, directory, flavour, stdout=stream).check()
    printed = ledger.read_text().splitlines()
    assert sum(line.startswith("task ") for line in printed) == 6, printed
    assert any(line.startswith("init ") for line in printed), printed
    return run, printed


def kept(run: ScriptRun, printed: list[str]) -> list[str]:
    """The printed lines that reached stdout."""
    lines = set(run.stdout.splitlines())
    return [line for line in printed if line in lines]


@pytest.mark.parametrize("stream", ["file", "pipe"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_task_and_initializer_prints_reach_stdout(tmp_path: Path, shape: str, stream: str) -> None:
    """Every line a task or an initializer prints is in stdout, once, whatever stdout is and however the pool ends.

    The stdlib keeps every line after close and join (its workers get a sentinel, return from their loop and
    flush on the way out), and this test checks that it does. After terminate, which the with-block calls, it
    does not: its idle workers get SIGTERM, whose default action ends them with their buffers unwritten,
    unless a worker happened to take its sentinel first. It loses anywhere from none to all of the lines from
    one run to the next, so the most a comparison can ask is that lucidity keep at least what each stdlib
    run kept. lucidity promises more (issue 9, point 3): its workers flush after every task and stop cleanly,
    so it must keep every line in every shape.
    """
    stdlib_kept = {}
    for flavour in ("fork", "spawn"):
        stdlib, stdlib_printed = run_printer(tmp_path, shape, flavour, stream)
        assert RESULT in stdlib.stdout.splitlines(), stdlib.stdout
        stdlib_kept[flavour] = len(kept(stdlib, stdlib_printed))
        if shape == "close-join":
            assert stdlib_kept[flavour] == len(stdlib_printed), f"the stdlib ({flavour}) lost lines after close, join"
    run, printed = run_printer(tmp_path, shape, "lucidity", stream)
    assert RESULT in run.stdout.splitlines(), run.stdout
    counts = collections.Counter(run.stdout.splitlines())
    lost = [line for line in printed if counts[line] == 0]
    repeated = [line for line in printed if counts[line] > 1]
    assert not lost, f"lucidity lost {len(lost)} of {len(printed)} printed lines (the stdlib kept {stdlib_kept}): " \
                     f"{lost}\n--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}"
    assert not repeated, f"lucidity wrote these lines more than once: {repeated}\n--- stdout\n{run.stdout}"


# -- point 7: lucidity imported from where the caller found it ------------------------------------------------

def interpreter_without_lucidity(directory: Path) -> str:
    """A virtual environment that sees this one's dependencies (pyzmq, dill, psutil, tblib) but not lucidity.

    Its one .pth line puts a directory on sys.path that mirrors this environment's site-packages, by
    symbolic links, without lucidity (installed there, or its editable finder) and without .pth files.
    """
    import zmq

    venv.EnvBuilder(symlinks=True, with_pip=False).create(directory)
    python = str(directory / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=READY_TIMEOUT).stdout.strip()
    site_packages = Path(zmq.__file__).resolve().parent.parent
    mirror = directory / "dependencies"
    mirror.mkdir()
    for entry in site_packages.iterdir():
        name = entry.name.lower()
        if name.startswith(("lucidity", "__editable__")) or name.endswith(".pth"):
            continue
        (mirror / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    Path(purelib, "dependencies.pth").write_text(f"{mirror}\n")
    return python


def test_daemons_and_workers_import_lucidity_from_a_sys_path_entry_set_in_code(tmp_path: Path) -> None:
    python = interpreter_without_lucidity(tmp_path / "env")
    check = "import importlib.util, zmq, dill, psutil, tblib; print(importlib.util.find_spec('lucidity'))"
    found = subprocess.run([python, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=READY_TIMEOUT,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert found.returncode == 0 and found.stdout.strip() == "None", found  # the premise: deps yes, lucidity no
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "lucidity").symlink_to(Path(lucidity.__file__).parent, target_is_directory=True)
    (checkout / "app_helpers.py").write_text("WHERE = 'checkout'\n")
    (tmp_path / "script").mkdir()
    (tmp_path / "script" / "app_helpers.py").write_text("WHERE = 'script directory'\n")
    source = f"""
        import sys
        sys.path.insert(0, {str(checkout)!r})
        from lucidity import Pool


        def where(x):
            import app_helpers, lucidity
            return x * x, lucidity.__file__, app_helpers.WHERE


        if __name__ == "__main__":
            import app_helpers, lucidity
            with Pool(2) as p:
                results = p.map(where, range(8))
            print([r[0] for r in results])
            print(sorted({{r[1:] for r in results}}) == [(lucidity.__file__, app_helpers.WHERE)], flush=True)
            print(lucidity.__file__, app_helpers.WHERE)
    """
    run = run_script(source, tmp_path / "script", "lucidity", executable=python, timeout=READY_TIMEOUT).check()
    lines = run.stdout.splitlines()
    assert lines[:2] == [str([x * x for x in range(8)]), "True"], run.stdout + run.stderr
    assert lines[2] == f"{checkout / 'lucidity' / '__init__.py'} checkout"
    assert "No module named" not in run.stderr, run.stderr


# -- point 7: a caller killed with SIGKILL leaves nothing behind ------------------------------------------------

CALLER = """
import os, signal, time
from lucidity import Pool


def start_then_sleep(marker):
    open(marker, "w").close()
    time.sleep(300)


if __name__ == "__main__":
    p = Pool(2)
    print(p.map(abs, [-1, -2]))
    p.apply_async(start_then_sleep, ({marker!r},))
    print("ready", flush=True)
    signal.pause()
"""


def wait_for_line(proc: "subprocess.Popen[bytes]", wanted: bytes, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while wanted + b"\n" not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no {wanted!r} within {timeout} s; stdout so far {seen!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"the script exited ({proc.wait()}) before {wanted!r}; stdout {seen!r}")
            seen += chunk


@pytest.fixture
def caller(tmp_path: Path) -> Iterator[tuple["subprocess.Popen[bytes]", Path]]:
    """A script with an embedded Pool and a task running, waiting to be killed; killed and reaped in any case."""
    marker = tmp_path / "task-started"
    script = tmp_path / "caller.py"
    script.write_text(CALLER.format(marker=str(marker)))
    environment = {k: v for k, v in os.environ.items() if k not in ("LUCIDITY_ADDRESS", "PYTHONUNBUFFERED")}
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr,
                                stdin=subprocess.DEVNULL, env=environment, start_new_session=True)
    try:
        yield proc, marker
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(READY_TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_sigkilled_caller_leaves_no_socket_directory_and_no_process(caller: tuple["subprocess.Popen[bytes]", Path],
                                                                      tmp_path: Path) -> None:
    proc, marker = caller
    wait_for_line(proc, b"ready", READY_TIMEOUT)
    wait_until(marker.exists, READY_TIMEOUT, "the task to start")
    descendants = psutil.Process(proc.pid).children(recursive=True)
    controls = [p.cmdline() for p in descendants if "--serve-control" in p.cmdline()]  # the node daemon
    assert len(controls) == 1, [p.cmdline() for p in descendants]
    runtime = controls[0][controls[0].index("--runtime-dir") + 1]
    assert os.path.isdir(runtime)
    # The node daemon (the control node too), its worker template, the template's child that ran this script
    # and forks the workers (lucidity/node/preload.py), two workers.
    assert len(descendants) == 5, [p.cmdline() for p in descendants]

    proc.kill()
    proc.wait(READY_TIMEOUT)
    _, alive = psutil.wait_procs(descendants, timeout=CLEANUP_TIMEOUT)
    for survivor in alive:
        survivor.kill()
    assert not alive, f"still running {CLEANUP_TIMEOUT} s after the caller was killed: {alive}"
    try:
        wait_until(lambda: not os.path.exists(runtime), CLEANUP_TIMEOUT, f"{runtime} to be removed")
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}; it holds {os.listdir(runtime)}; log:\n{(tmp_path / 'stderr.txt').read_text()}")


def test_a_closed_local_cluster_removes_its_directory() -> None:
    with lucidity.LocalCluster(processes=1) as cluster:
        runtime = os.path.dirname(cluster.address[len("ipc://"):])
        assert os.path.isdir(runtime)
        with lucidity.Pool(address=cluster.address) as pool:
            assert pool.map(abs, [-1, -2]) == [1, 2]
    assert not os.path.exists(runtime)


def test_an_operators_control_node_removes_nothing(tmp_path: Path) -> None:
    """A control node started from the command line, on an ipc:// address of the operator's, leaves the directory."""
    directory = tmp_path / "sockets"
    directory.mkdir()
    (directory / "keep.txt").write_text("the operator's\n")
    socket = directory / "control"
    proc = subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", "control", "--bind",
                             f"ipc://{socket}"], start_new_session=True)
    try:
        wait_until(socket.exists, READY_TIMEOUT, "the control node to bind its socket")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(READY_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(READY_TIMEOUT)
    assert (directory / "keep.txt").read_text() == "the operator's\n"


def test_the_runtime_directory_must_hold_the_control_socket(tmp_path: Path) -> None:
    """Only the directory of the control node's own ipc:// socket can be handed over for removal."""
    with pytest.raises(ValueError, match="not the directory"):
        ControlDaemon("tcp://127.0.0.1:0", runtime_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not the directory"):
        ControlDaemon(f"ipc://{tmp_path}/sub/control", runtime_dir=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "lucidity", "control", "--bind", "tcp://127.0.0.1:0",
                             "--runtime-dir", str(tmp_path)], capture_output=True, text=True, timeout=READY_TIMEOUT)
    assert result.returncode == 2 and "not the directory" in result.stderr, result
    assert tmp_path.is_dir()
