"""A node daemon killed with SIGKILL leaves its private directory behind; the next one, or the cluster
that reaped it, removes it, and never a directory whose creator is alive (issue 11, item 5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from lucidity.status import query_status
from lucidity.transport import CREATOR_FILE, NODE_DIRECTORY_PREFIX, private_directory, remove_stale_directories

from conftest import CliCluster
from scripts import run_script

#: Bound on every wait for a process or a directory, in seconds.
WAIT = 20.0


@pytest.fixture
def tmpdir_of_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $TMPDIR for this test and the processes it starts, so no other run's directory is touched.

    Short and under /tmp (not pytest's tmp_path, made first so that it is not made in here): ipc:// socket
    paths in it must stay under 108 bytes.
    """
    path = Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def creator_of(directory: Path) -> list[str]:
    """The pid, start time and scope `private_directory` recorded."""
    return (directory / CREATOR_FILE).read_text().split()


def directories_of(tmp: Path, pid: int) -> list[Path]:
    return sorted(d for d in tmp.glob(f"{NODE_DIRECTORY_PREFIX}*") if creator_of(d)[0] == str(pid))


def wait_for_nodes(address: str, names: set[str]) -> None:
    """Wait until the control node lists every node of `names` with its workers."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            report = query_status(address, timeout=1.0)
        except Exception:
            report = {"nodes": []}
        ready = {n["name"] for n in report["nodes"] if "error" not in n and n.get("workers")}
        if names <= ready:
            return
        time.sleep(0.05)
    raise TimeoutError(f"nodes {sorted(names)} did not all join within {WAIT} s")


def test_the_next_daemon_removes_a_killed_daemons_directory_and_no_live_ones(tmpdir_of_test: Path) -> None:
    cluster = CliCluster()
    cluster.env["TMPDIR"] = str(tmpdir_of_test)
    try:
        cluster.start_control()
        alive = cluster.start_node("alive", 1)
        doomed = cluster.start_node("doomed", 1)
        wait_for_nodes(cluster.address, {"alive", "doomed"})
        [alive_dir] = directories_of(tmpdir_of_test, alive.pid)
        [doomed_dir] = directories_of(tmpdir_of_test, doomed.pid)
        alive_inode = alive_dir.stat().st_ino
        workers = psutil.Process(doomed.pid).children()
        assert workers

        cluster.stop("doomed", signal.SIGKILL)  # also reaps it
        _, still = psutil.wait_procs(workers, timeout=WAIT)
        assert not still, f"workers {[p.pid for p in still]} outlived their SIGKILLed daemon"
        assert doomed_dir.is_dir()  # what the kill leaves: the directory and its slots file

        following = cluster.start_node("following", 1)
        wait_for_nodes(cluster.address, {"alive", "following"})
        assert not doomed_dir.exists()
        assert alive_dir.is_dir() and alive_dir.stat().st_ino == alive_inode and (alive_dir / "slots").exists()
        assert len(directories_of(tmpdir_of_test, following.pid)) == 1
    finally:
        cluster.close()
    assert [p.name for p in tmpdir_of_test.iterdir()] == []  # the daemons stopped cleanly removed their own


def test_an_embedded_cluster_whose_node_daemon_was_killed_leaves_nothing(tmpdir_of_test: Path,
                                                                          tmp_path: Path) -> None:
    source = """
        import json, os
        import psutil
        from lucidity.transport import CREATOR_FILE
        from multiprocessing import Pool  # lucidity: from lucidity import Pool

        if __name__ == "__main__":
            tmp = os.environ["TMPDIR"]
            with Pool(1) as pool:
                pool.apply(os.getpid, ())
                [node] = [p for p in psutil.Process().children() if "node" in p.cmdline()]
                workers = node.children()
                before = {name: open(os.path.join(tmp, name, CREATOR_FILE)).read().split()[0]
                          for name in os.listdir(tmp)}
                node.kill()
                _, still = psutil.wait_procs(workers, timeout=20)
                after_kill = sorted(os.listdir(tmp))
            print(json.dumps({"node": node.pid, "workers": len(workers), "workers_alive": len(still),
                              "before": before, "after_kill": after_kill, "after_close": sorted(os.listdir(tmp))}))
    """
    run = run_script(source, tmp_path, "lucidity", env={"TMPDIR": str(tmpdir_of_test)}).check()
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    # The node daemon, the control node too, keeps its files in the cluster's directory (made by the caller).
    assert len(seen["before"]) == 1 and seen["workers"] == 2 and seen["workers_alive"] == 0  # worker and template
    assert seen["after_kill"] == sorted(seen["before"])  # the killed daemon could not remove it
    assert seen["after_close"] == []
    assert list(tmpdir_of_test.iterdir()) == []


def make_directory(prefix: str) -> tuple[subprocess.Popen[str], str]:
    """A process that makes a private directory, prints it and waits for a line on stdin before exiting."""
    code = ("import sys; from lucidity.transport import private_directory; "
            f"print(private_directory({prefix!r}), flush=True); sys.stdin.readline()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def finish(proc: subprocess.Popen[str]) -> None:
    proc.communicate("\n", timeout=WAIT)


def fabricate(tmp: Path, prefix: str, creator: str) -> Path:
    """A directory named as `private_directory` names them, claiming `creator`."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    (directory / CREATOR_FILE).write_text(creator + "\n")
    return directory


def test_only_directories_of_gone_creators_of_this_prefix_are_removed(tmpdir_of_test: Path) -> None:
    prefix = "lucidity-test-"
    live, live_dir = make_directory(prefix)
    exited, exited_dir = make_directory(prefix)
    longer, longer_dir = make_directory(prefix + "x-")  # another prefix that starts with this one
    finish(exited)
    finish(longer)
    try:
        mine = Path(private_directory(prefix))  # the call that cleans
        assert mine.is_dir() and Path(live_dir).is_dir() and Path(longer_dir).is_dir()
        assert not Path(exited_dir).exists()

        pid, start, scope = creator_of(mine)
        assert (pid, len(scope)) == (str(os.getpid()), 16)
        recycled = fabricate(tmpdir_of_test, prefix, f"{pid} {int(start) + 1} {scope}")  # our pid, another start
        elsewhere = fabricate(tmpdir_of_test, prefix, f"{exited.pid} {start} {'0' * 16}")  # another pid namespace
        unreadable = fabricate(tmpdir_of_test, prefix, "half-written")
        no_creator = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir_of_test))  # being made, or an older lucidity
        not_a_directory = tmpdir_of_test / (prefix + "abcd1234")
        not_a_directory.write_text("")
        # Limited to creators the caller reaped: the others are left for later.
        assert remove_stale_directories(prefix, creators=[live.pid]) == []
        assert remove_stale_directories(prefix) == [str(recycled)]
        for kept in (mine, Path(live_dir), elsewhere, unreadable, no_creator, not_a_directory):
            assert kept.exists()
    finally:
        finish(live)
