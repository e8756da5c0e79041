"""Starting and stopping child processes with bounded, escalating shutdown.

Each child runs in its own process group (its own session), so that stopping it also stops whatever it
started. Exits are watched through pidfds (Linux 5.3+), which a poller can wait on like a socket: no
sleep-and-check loop is needed to notice a death or to wait for one.

Stopping is: SIGTERM to the group, wait up to a grace period, SIGKILL to the group, reap. Every step is
bounded, and nothing returns before every child is reaped.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import time
from typing import IO, Iterable, Optional, Protocol

from .limits import children_of

logger = logging.getLogger(__name__)

__all__ = ["Child", "stop_children", "stop_adopted", "raise_open_file_limit"]

#: How long children get to exit after SIGTERM before SIGKILL, in seconds.
STOP_GRACE = 2.0


class Process(Protocol):
    """What `Child` needs of a process: a Popen, or a worker adopted from a template (`node.template`)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> Optional[int]: ...
    @property
    def stdin(self) -> Optional[IO[bytes]]: ...
    @property
    def stdout(self) -> Optional[IO[bytes]]: ...
    @property
    def stderr(self) -> Optional[IO[bytes]]: ...
    def poll(self) -> Optional[int]: ...
    def wait(self) -> int: ...


class Child:
    """A child process in its own process group, with a pidfd to poll for its exit."""

    def __init__(self, popen: Process) -> None:
        self.popen = popen
        self.pid = popen.pid
        try:
            self.pidfd: Optional[int] = os.pidfd_open(popen.pid)
        except OSError:
            # Out of descriptors (or pidfds unsupported): a child we cannot watch must not live on unseen.
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            for stream in (popen.stderr, popen.stdout, popen.stdin):
                if stream is not None:
                    stream.close()
            raise

    @classmethod
    def start(cls, argv: list[str], *, pass_fds: Iterable[int] = (), env: Optional[dict[str, str]] = None,
              cwd: Optional[str] = None, capture_stderr: bool = False) -> "Child":
        popen = subprocess.Popen(argv, pass_fds=tuple(pass_fds), env=env, cwd=cwd, start_new_session=True,
                                 stdin=subprocess.DEVNULL, stderr=subprocess.PIPE if capture_stderr else None)
        return cls(popen)

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.returncode

    def reap(self) -> Optional[int]:
        """Collect the exit status if the child has exited; close the pidfd once it has."""
        code = self.popen.poll()
        if code is not None and self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return code

    def signal_group(self, signum: int) -> None:
        """Send a signal to the child's whole process group (the child and what it started)."""
        if self.popen.returncode is not None:
            return
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass


def wait_exits(children: list[Child], timeout: float) -> list[Child]:
    """Wait until every child has exited or the timeout passes; return those still running."""
    deadline = time.monotonic() + timeout
    waiting = [c for c in children if c.reap() is None]
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poller = select.poll()
        for child in waiting:
            if child.pidfd is not None:
                poller.register(child.pidfd, select.POLLIN)
        poller.poll(remaining * 1000)
        waiting = [c for c in waiting if c.reap() is None]
    return waiting


def stop_children(children: list[Child], grace: float = STOP_GRACE, *, already_asked: bool = False) -> None:
    """Stop children: SIGTERM their groups, wait `grace`, SIGKILL what is left, reap everything.

    Also kills stragglers left in each child's process group after the child itself exited.
    """
    if not already_asked:
        for child in children:
            child.signal_group(signal.SIGTERM)
    left = wait_exits(children, grace)
    for child in left:
        logger.warning("process %d did not exit within %.1f s of SIGTERM; sending SIGKILL", child.pid, grace)
        child.signal_group(signal.SIGKILL)
    left = wait_exits(left, grace)
    for child in left:
        logger.error("process %d survived SIGKILL for %.1f s", child.pid, grace)
    for child in children:
        _kill_group_leftovers(child.pid)


def _kill_group_leftovers(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the soft limit now.

    Daemons hold a descriptor per connection: at the usual soft limit of 1,024, a flood of connections
    (no secret needed to open one) would leave none to start a worker. Children inherit the new limit.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def stop_adopted(keep: Iterable[int], who: str) -> None:
    """SIGKILL and reap this process's children other than `keep`: what a dead worker's tasks left behind,
    reparented here because the daemon is a subreaper (`limits.become_subreaper`)."""
    keep = set(keep)
    for pid in children_of(os.getpid()):
        if pid in keep:
            continue
        logger.info("%s stops process %d, left behind by a worker that died", who, pid)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # SIGKILL cannot be ignored; the wait is short
        except (ProcessLookupError, ChildProcessError):
            pass
