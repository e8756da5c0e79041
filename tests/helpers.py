"""What tests share besides fixtures: bounded waits, a rendezvous that holds tasks, the CLI cluster.

- `wait_until` polls a condition that no event announces (a status report, a file, a pid) and fails,
  naming what it waited for, once its deadline passes. A test never sleeps a fixed time hoping that
  something happened.
- `Rendezvous` and the task `hold`: a task reports that it runs, then blocks until the test releases it,
  so that a test knows a task is running instead of guessing (works with the stdlib's pools too).
- `CliCluster`: a control node and node daemons started through the `lucidity` CLI, with any options.
- `connected`: jobs (`@lucidity.job`) run on a given cluster inside a ``with`` block.

Workers import test modules by name, and with them this one: it imports neither pytest nor conftest.
The fixtures built on these (`cli_cluster`, `rendezvous`) are in conftest.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Iterator, Optional, TypeVar

import lucidity
from lucidity.status import query_status

__all__ = ["WAIT", "WaitTimeout", "wait_until", "Rendezvous", "hold", "CliCluster", "free_port", "connected"]

TESTS = os.path.dirname(os.path.abspath(__file__))
#: Bound on a wait for something that is expected to happen, in seconds.
WAIT = 30.0
#: Seconds between two looks at a condition that no event announces.
POLL = 0.02
#: Seconds a held task waits to be released before it gives up; longer than any test should need.
HOLD_TIMEOUT = 60.0
#: Seconds a status query may take; while waiting for a cluster to come up, each query's.
STATUS_TIMEOUT = 5.0
STATUS_POLL_TIMEOUT = 1.0

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition a test waited for did not come in time: a test failure, not an error of the code under test."""


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Call `condition` until it returns something true, and return that; fail once `timeout` seconds pass.

    Args:
        condition: asked at once, then every `POLL` seconds; it should be cheap and must not block for long.
        timeout: the deadline, in seconds from now.
        what: what the test waits for, as the failure names it ("n1 with both workers busy").

    Raises:
        WaitTimeout: the deadline passed; the message names `what` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"waited {timeout} s for {what}; it did not happen (last seen: {value!r})")
        time.sleep(min(POLL, remaining))


class Rendezvous:
    """Where `hold` tasks report that they started, and wait until the test releases them.

    `started` blocks (with a timeout) until tasks really run on workers; `release` lets every task that
    reported return. Closing also refuses tasks that have not connected yet, so nothing stays blocked.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.address: tuple[str, int] = self._listener.getsockname()
        self._held: list[socket.socket] = []

    def started(self, count: int = 1, timeout: float = WAIT) -> list[str]:
        """Wait for `count` more tasks to report; returns their tags in arrival order."""
        tags: list[str] = []
        deadline = time.monotonic() + timeout
        while len(tags) < count:
            self._listener.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                raise WaitTimeout(f"waited {timeout} s for {count} held task(s) to start; "
                                  f"{len(tags)} did ({tags})") from None
            conn.settimeout(WAIT)
            self._held.append(conn)
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(64)
                if not chunk:
                    break
                data += chunk
            tags.append(data.decode().strip())
        return tags

    def release(self) -> None:
        """Let every task that reported return."""
        for conn in self._held:
            conn.close()
        self._held = []

    def close(self) -> None:
        self.release()
        self._listener.close()

    def __enter__(self) -> "Rendezvous":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def hold(address: tuple[str, int], tag: str = "held") -> str:
    """A task: report to the test's `Rendezvous` that it runs, then block until the test releases it."""
    with socket.create_connection(tuple(address), timeout=HOLD_TIMEOUT) as conn:  # type: ignore[arg-type]
        conn.sendall(f"{tag}\n".encode())
        conn.recv(1)  # b"" once the test closes its end
    return tag


@contextlib.contextmanager
def connected(address: str) -> Iterator[None]:
    """Inside the block, jobs run on the cluster at `address`; after it, the default client is released."""
    lucidity.connect(address)
    try:
        yield
    finally:
        lucidity.connect(None)


def free_port() -> int:
    """A free port outside the ephemeral range, so that no daemon's bind to port 0 can take it meanwhile."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        low, high = (int(p) for p in ports.read().split())
    rng = random.Random()
    while True:
        port = rng.randrange(10000, low) if low > 11000 else rng.randrange(high + 1, 65535)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def stop_process(proc: "subprocess.Popen[Any]", sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal a process started in its own session and reap it; its exit status. If it outlasts `timeout`,
    SIGKILL its process group, reap it, and raise subprocess.TimeoutExpired."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
        raise


class CliCluster:
    """A control node and node daemons started through the `lucidity` CLI, as an operator would.

    Options go through to the CLI as they are: ``start_control("--node-timeout", "2")``,
    ``start_node("n1", 2, "--heartbeat-interval", "0.5")``. Each daemon runs in a session of its own, and
    `close` (or leaving a ``with`` block) stops the nodes, then the control node, each with the CLI's own
    bounded shutdown.
    """

    def __init__(self) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
        self.env.pop("LUCIDITY_ADDRESS", None)
        self.cwd: Optional[str] = None  # the daemons' working directory (default: this process's)
        self.log_dir: Optional[str] = None  # if set, each daemon's stderr goes to LOG_DIR/KEY.log (default: ours)

    def _start(self, key: str, *args: str) -> subprocess.Popen[bytes]:
        """Run ``lucidity ARGS`` as the daemon called `key` (other test files call this one directly)."""
        log = None if self.log_dir is None else open(os.path.join(self.log_dir, f"{key}.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", *args], env=self.env,
                                cwd=self.cwd, start_new_session=True, stderr=log)
        if log is not None:
            log.close()  # the daemon has its own copy
        self.processes[key] = proc
        return proc

    def start_control(self, *options: str) -> subprocess.Popen[bytes]:
        """Start (or, after `stop`, restart) the control node on this cluster's address."""
        return self._start("control", "control", "--bind", self.address, *options)

    def start_node(self, name: str, processes: int = 2, *options: str) -> subprocess.Popen[bytes]:
        return self._start(name, "node", self.address, "--processes", str(processes), "--name", name, *options)

    def status(self, timeout: float = STATUS_TIMEOUT, secret: Optional[bytes] = None) -> dict[str, Any]:
        """`lucidity status` as a dict; raises ClusterUnavailable if the control node does not answer."""
        return query_status(self.address, timeout=timeout, secret=secret)

    def node(self, name: str) -> dict[str, Any]:
        """The status of one node, as that node reports it now."""
        found = [n for n in self.status()["nodes"] if n["name"] == name]
        if not found:
            raise LookupError(f"no node {name!r} in the cluster's status")
        return found[0]

    def wait_for(self, nodes: int, workers_per_node: Optional[int] = None, timeout: float = WAIT,
                 secret: Optional[bytes] = None) -> dict[str, Any]:
        """Wait until `lucidity status` shows `nodes` nodes with their workers ready; returns the report."""
        last: dict[str, Any] = {}

        def ready() -> Optional[dict[str, Any]]:
            nonlocal last
            try:
                last = self.status(STATUS_POLL_TIMEOUT, secret)
            except Exception as exc:  # not up yet, or restarting: ask again
                last = {"error": repr(exc)}
                return None
            good = [n for n in last["nodes"] if "error" not in n
                    and (workers_per_node is None or len(n["workers"]) == workers_per_node)]
            return last if len(good) == nodes and len(last["nodes"]) == nodes else None

        try:
            return wait_until(ready, timeout, f"{nodes} node(s) with {workers_per_node or 'any'} worker(s) each")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}; last status {last}") from None

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the daemon `key` and reap it; its exit status. SIGKILLs its group if it outlasts `timeout`."""
        return stop_process(self.processes.pop(key), sig, timeout)

    def close(self) -> None:
        for key in [k for k in self.processes if k != "control"] + [k for k in self.processes if k == "control"]:
            try:
                self.stop(key)
            except Exception:
                pass

    def __enter__(self) -> "CliCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
