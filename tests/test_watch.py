"""The live view (`lucidity top`, `lucidity status --watch`) as a person sees it, and the pure parts under it.

The terminal tests run the real CLI in a real terminal: a tmux server on a private socket, 160 x 50, whose
one pane runs a shell. They type into it with send-keys and read the screen with capture-pane, against a
real CLI cluster; teardown kills the tmux server and waits until every process of it is gone.

With LUCIDITY_DOCS_IMAGES=1, the busy screen is also written to docs/images/watch.txt.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from typing import Callable, Iterator

import psutil
import pytest

import lucidity
from lucidity.watch import RateMeter, bar, failures_by_kind, render

from helpers import WAIT, CliCluster, Rendezvous, hold, wait_until
from tasks import pid_of, sleep_for

TMUX = shutil.which("tmux") or "/usr/bin/tmux"
COLUMNS, ROWS = 160, 50
DOCS_IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images")
#: A worker's memory bar and its numbers, as the view draws them with a 512 MiB cap.
MEMORY_BAR = re.compile(r"\[#*-*\] \d+\.\d/512\.0")
BUSY_WORKER = re.compile(r"(?m)^ +\d+  busy +\d+  \[")
HEADER = re.compile(r"(\d+) worker\(s\), (\d+) busy  (\d+\.\d) tasks/s")

needs_tmux = pytest.mark.skipif(not os.path.exists(TMUX), reason="tmux is not installed (CI installs it)")


class Terminal:
    """A 160 x 50 terminal (a tmux pane on a private server) running a shell, read as a person would."""

    def __init__(self) -> None:
        self.socket = f"lucidity-test-{uuid.uuid4().hex[:12]}"
        # The server, and so the shell, inherit this environment (the test session's marker included), as
        # os.environ has it: readline, once loaded, exports COLUMNS=80 and LINES=24 into the process's C
        # environment, and the view (shutil.get_terminal_size) would believe them over the terminal.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self._run("-f", "/dev/null", "new-session", "-d", "-x", str(COLUMNS), "-y", str(ROWS), "sh", env=env)
        self.server_pid = int(self._run("display-message", "-p", "#{pid}").strip())
        self.shell_pid = int(self._run("display-message", "-p", "#{pane_pid}").strip())

    def _run(self, *args: str, env: "dict[str, str] | None" = None) -> str:
        return subprocess.run([TMUX, "-L", self.socket, *args], check=True, capture_output=True, text=True,
                              timeout=WAIT, env=env).stdout

    def type(self, text: str) -> None:
        """Type `text` and press Enter."""
        self._run("send-keys", "-l", text)
        self._run("send-keys", "Enter")

    def press(self, key: str) -> None:
        self._run("send-keys", key)

    def screen(self) -> str:
        return self._run("capture-pane", "-p")

    def wait_for(self, pattern: "str | Callable[[str], bool]", what: str) -> str:
        """Wait until the screen matches `pattern` (a regular expression, or a test of the screen's text);
        returns that screen."""
        def matches(screen: str) -> bool:
            return bool(re.search(pattern, screen)) if isinstance(pattern, str) else pattern(screen)

        try:
            return wait_until(lambda: (lambda s: s if matches(s) else "")(self.screen()), WAIT, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- the screen ---\n{self.screen()}") from None

    def close(self) -> None:
        """Kill the tmux server and wait until it, the shell and everything the shell started are gone."""
        processes = []
        for pid in (self.server_pid, self.shell_pid):
            try:
                process = psutil.Process(pid)
                processes += [process] + process.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=WAIT)
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:  # they ignored the hangup: they are not ours to keep
            process.kill()
        psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


def top_command(address: str) -> str:
    return f"{sys.executable} -m lucidity top {address}; echo view-exited-$?"


def header(screen: str) -> tuple[int, int, float]:
    found = HEADER.search(screen)
    if found is None:
        raise AssertionError(f"no header line on the screen:\n{screen}")
    return int(found.group(1)), int(found.group(2)), float(found.group(3))


# -- in a terminal -------------------------------------------------------------------------------------------

@needs_tmux
@pytest.mark.timeout(180)
def test_top_shows_nodes_workers_memory_and_counts_that_move_with_the_work(terminal: Terminal,
                                                                           rendezvous: Rendezvous) -> None:
    with CliCluster() as cluster:
        cluster.start_control()
        for name in ("n1", "n2"):
            cluster.start_node(name, 2, "--memory-limit", "512MiB")
        report = cluster.wait_for(2, workers_per_node=2)
        pids = [w["pid"] for n in report["nodes"] for w in n["workers"]]
        terminal.type("echo before-the-view")
        terminal.wait_for(r"(?m)^before-the-view$", "the shell's output")
        terminal.type(top_command(cluster.address))
        screen = terminal.wait_for(r"NODE n1 .*\n(.*\n)*NODE n2 ", "both nodes on the view")
        assert "before-the-view" not in screen  # the view has a screen of its own
        screen = terminal.wait_for(lambda s: all(f" {pid} " in s for pid in pids), "all four workers")
        assert len(MEMORY_BAR.findall(screen)) == 4, screen
        assert header(screen)[:2] == (4, 0)
        with lucidity.Pool(address=cluster.address) as pool:
            wait_until(lambda: len(set(pool.map(pid_of, range(40), chunksize=1))) == 4, WAIT, "all four workers")
            held = []
            for index in range(4):  # one at a time: each goes to an idle worker
                held.append(pool.apply_async(hold, (rendezvous.address, f"held-{index}")))
                rendezvous.started()
            busy = terminal.wait_for(r"4 worker\(s\), 4 busy  0\.0 tasks/s", "four busy workers, none finishing")
            assert len(BUSY_WORKER.findall(busy)) == 4, busy  # each worker's own line says so, with its task
            if os.environ.get("LUCIDITY_DOCS_IMAGES"):
                os.makedirs(DOCS_IMAGES, exist_ok=True)
                with open(os.path.join(DOCS_IMAGES, "watch.txt"), "w") as capture:
                    capture.write("\n".join(line.rstrip() for line in busy.rstrip().splitlines()) + "\n")
            rendezvous.release()
            assert sorted(r.get(WAIT) for r in held) == [f"held-{i}" for i in range(4)]
            work = pool.map_async(sleep_for, [0.01] * 1200, chunksize=1)
            moving = terminal.wait_for(r"busy  [1-9]\d*\.\d tasks/s", "tasks per second above zero")
            assert header(moving)[2] > 0
            work.get(WAIT)
        terminal.wait_for(r"4 worker\(s\), 0 busy  0\.0 tasks/s", "the view at rest again")
        terminal.press("q")
        screen = terminal.wait_for(r"view-exited-0", "the view to end on q")
        assert "before-the-view" in screen and "NODE n1" not in screen  # the shell's screen is back


@needs_tmux
def test_ctrl_c_and_sigterm_end_the_view_and_give_the_terminal_back(terminal: Terminal, tmp_path: str) -> None:
    with CliCluster() as cluster:
        cluster.start_control()
        cluster.start_node("n1", 1)
        cluster.wait_for(1, workers_per_node=1)
        terminal.type(f"{sys.executable} -m lucidity status --watch {cluster.address}; echo view-exited-$?")
        terminal.wait_for(r"NODE n1 ", "the node on the view")
        terminal.press("C-c")
        screen = terminal.wait_for(r"view-exited-0", "the view to end on Ctrl-C")
        assert "Traceback" not in screen and "NODE n1" not in screen
        pidfile = os.path.join(str(tmp_path), "view.pid")
        terminal.type(f"sh -c 'echo $$ > {pidfile}; exec {sys.executable} -m lucidity top {cluster.address}'; "
                      "echo term-exited-$?")
        terminal.wait_for(r"NODE n1 ", "the node on the view")
        with open(pidfile) as view_pid:
            os.kill(int(view_pid.read()), signal.SIGTERM)
        terminal.wait_for(r"term-exited-0", "the view to end on SIGTERM")
    # The terminal echoes what is typed again (the view's key mode is undone), and the view of a cluster that
    # is gone says so instead of failing.
    terminal.type(f"{sys.executable} -m lucidity top {cluster.address}; echo gone-exited-$?")
    terminal.wait_for(r"control node unreachable: no answer from", "the unreachable control node, said")
    terminal.press("q")
    screen = terminal.wait_for(r"gone-exited-0", "the view to end on q")
    assert f"lucidity top {cluster.address}; echo gone-exited-$?" in screen


def test_top_refuses_to_draw_into_a_pipe() -> None:
    done = subprocess.run([sys.executable, "-m", "lucidity", "top", "tcp://127.0.0.1:9"], capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 2 and "needs a terminal" in done.stderr and done.stdout == ""


# -- the pure parts --------------------------------------------------------------------------------------------

def node(name: str, done: int, instance: str = "a", **fields: object) -> dict[str, object]:
    return {"name": name, "address": f"tcp://127.0.0.1:{len(name)}", "instance": instance, "tasks_done": done,
            "tasks_crashed": 0, "clients": 1, "workers": [], **fields}


def test_rate_meter_counts_growth_per_second_and_restarts_with_a_new_instance() -> None:
    meter = RateMeter()
    assert meter.update({"nodes": [node("n1", 10)]}, 100.0) == {"n1": 0.0}  # first sight: no rate yet
    assert meter.update({"nodes": [node("n1", 40)]}, 102.0) == {"n1": 15.0}
    assert meter.update({"nodes": [node("n1", 3, instance="b")]}, 103.0) == {"n1": 0.0}  # restarted
    assert meter.update({"nodes": [node("n1", 5, instance="b")]}, 104.0) == {"n1": 2.0}
    assert meter.update({"nodes": [{"name": "n1", "address": "x", "error": "gone", "workers": []}]}, 105.0) == {}


def test_failures_by_kind_use_counts_by_outcome_when_a_node_reports_them() -> None:
    assert failures_by_kind(node("n1", 0)) == {}
    assert failures_by_kind(node("n1", 0, tasks_crashed=3)) == {"failed": 3}
    assert failures_by_kind(node("n1", 0, tasks_crashed=3,
                                 tasks_by_outcome={"ok": 9, "crashed": 2, "memory": 1, "timeout": 0})) == {
        "crashed": 2, "memory": 1}


def test_bar_fills_with_the_share_of_the_cap() -> None:
    assert bar(0, 100, 10) == "[----------]"
    assert bar(50, 100, 10) == "[#####-----]"
    assert bar(250, 100, 10) == "[##########]"
    assert bar(50, None, 10) == "[  no cap  ]"


def test_render_fits_the_terminal_and_says_what_it_cut() -> None:
    worker = {"pid": 4242, "state": "busy", "task": 7, "rss": 64 * 2**20, "peak": 80 * 2**20, "cap": 256 * 2**20,
              "tasks_done": 3}
    report = {"address": "tcp://127.0.0.1:3030", "watchers": 2,
              "nodes": [node("n1", 5, workers=[worker] * 3), {"name": "n2", "address": "tcp://h:1",
                                                              "error": "no answer", "workers": []}]}
    lines = render(report, {"n1": 2.5}, 200, 50)
    text = "\n".join(lines)
    assert "3 worker(s), 3 busy  2.5 tasks/s  clients 2" in lines[0]
    assert "[#####---------------] 64.0/256.0" in text and "NODE n2  tcp://h:1  UNREACHABLE: no answer" in text
    narrow = render(report, {}, 40, 6)
    assert len(narrow) == 6 and all(len(line) <= 40 for line in narrow) and narrow[-1].startswith("... ")
