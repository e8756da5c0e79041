"""A lucidity cluster started from the CLI, as an operator would: one control daemon and node daemons.

Used by the lucidity-cli peer: ``python -m lucidity control --bind tcp://127.0.0.1:PORT`` and two
``python -m lucidity node tcp://127.0.0.1:PORT --processes 1``, each in its own session, logging to a file
(shown if something goes wrong). `stop` sends SIGTERM to the nodes, then to the control daemon, waits, and
kills a process group that outlives its grace period; the orchestrator calls it in a ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Optional

#: Seconds to wait for the nodes and their workers to show up in `lucidity status`.
READY_TIMEOUT = 60.0
#: Seconds between status polls while waiting.
POLL_INTERVAL = 0.1
#: Seconds a daemon gets after SIGTERM before its process group is killed.
STOP_GRACE = 15.0
#: Lines of the daemons' log shown when they fail.
LOG_TAIL_LINES = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CliCluster:
    """`nodes` node daemons of `processes` workers each, and their control daemon, on 127.0.0.1.

    Args:
        nodes, processes: the cluster's shape.
        pythonpath: prepended to the daemons' PYTHONPATH, so that workers import the benchmark's tasks
            by name, as they would a deployed project's (rather than having the client ship them).
    """

    def __init__(self, nodes: int, processes: int, pythonpath: str) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.nodes = nodes
        self.processes = processes
        self._env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pythonpath,
                                                                               os.environ.get("PYTHONPATH")])))
        self._env.pop("LUCIDITY_ADDRESS", None)
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(prefix="lucidity-bench-cluster-", suffix=".log")
        self._control: Optional[subprocess.Popen[bytes]] = None
        self._nodes: list[subprocess.Popen[bytes]] = []
        #: Seconds `start` waits for every node and worker; hundreds of daemons on 2 cores need more.
        self.ready_timeout = READY_TIMEOUT

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", *args], env=self._env,
                                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, start_new_session=True)

    def start(self) -> None:
        """Start the daemons and wait until every node reports its workers; stops them all on failure."""
        try:
            self._control = self._start("control", "--bind", self.address)
            for index in range(1, self.nodes + 1):
                self._nodes.append(self._start("node", self.address, "--processes", str(self.processes),
                                               "--name", f"n{index}"))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def node_pids(self) -> list[int]:
        return [node.pid for node in self._nodes]

    def _wait_ready(self) -> None:
        from lucidity.status import query_status

        deadline = time.monotonic() + self.ready_timeout
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for proc in [self._control, *self._nodes]:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"a daemon of the CLI cluster (pid {proc.pid}) exited with status "
                                       f"{proc.returncode} while starting; log:\n{self.log_tail()}")
            try:
                report = query_status(self.address, timeout=1.0)
            except Exception:  # not up yet: the control daemon may not be listening
                time.sleep(POLL_INTERVAL)
                continue
            ready = [node for node in report.get("nodes", [])
                     if "error" not in node and len(node["workers"]) == self.processes]
            if len(ready) == self.nodes == len(report["nodes"]):
                return
            time.sleep(POLL_INTERVAL)
        raise TimeoutError(f"the CLI cluster did not reach {self.nodes} nodes x {self.processes} workers within "
                           f"{self.ready_timeout:.0f} s; last status {report}; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the nodes, then the control daemon; kill the process group of any that does not exit."""
        for proc in self._nodes:
            _terminate(proc)
        for proc in self._nodes:
            _reap(proc)
        if self._control is not None:
            _terminate(self._control)
            _reap(self._control)
        self._nodes, self._control = [], None

    def log_tail(self) -> str:
        self._log.flush()
        with open(self._log.name, "rb") as log:
            lines = log.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> "CliCluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _terminate(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def _reap(proc: "subprocess.Popen[bytes]") -> None:
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        # The daemon leads its own session, so this kills it and anything it started in it; a node's workers
        # lead sessions of their own and exit when they see their node daemon die.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
