"""LocalCluster, the embedded default cluster, and address resolution.

``Pool()`` with no address starts a `LocalCluster` on this machine, reached over ipc:// sockets in a
directory only this user can open (the filesystem does the authentication, at no cost per message). A
`LocalCluster` is a control daemon and node daemons; the one that ``Pool()``, ``Executor()`` and the
default cluster of jobs start is a single node daemon that is the control node too (``hosted_control``):
one interpreter and its imports fewer, a third of the CPU such a start costs (issue 13: ``Pool()`` to its
first result under 100 ms). The daemons are separate processes in their own sessions:

- they inherit this process's working directory, environment and ``sys.path`` (through
  ``LUCIDITY_SYS_PATH``), so module-level functions of the caller's project import on the workers;
- they import the lucidity this process imported: when it was found through a ``sys.path`` entry that a
  fresh interpreter would not have (``sys.path.insert(0, checkout)``), that entry leads their PYTHONPATH;
- they hold the read end of a pipe whose write end only this process holds; when this process exits for
  any reason, SIGKILL included, the pipe closes and the daemons stop, taking their workers with them;
- the control daemon (or the node daemon hosting the control node) is told the private directory and
  removes it when it exits, so that a caller killed with SIGKILL leaves no sockets behind (nothing
  recreates the directory, so removing it while node daemons are still stopping is harmless: their
  sockets there are already bound, or fail to bind);
- `LocalCluster.close` (also run by a finalizer at interpreter exit) stops them with the bounded,
  escalating shutdown of `lucidity.node.processes`, then removes the directory if it is still there, and
  the private directories of node daemons that were killed before they could remove their own.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import shutil
import site
import sys
import sysconfig
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from . import addresses, mainscript
from .errors import ClusterUnavailable
from .node.limits import MIN_WORKER_MEMORY
from .sizes import format_size, parse_size
from .node.processes import STOP_GRACE, Child, stop_children
from .transport import NODE_DIRECTORY_PREFIX, private_directory, remove_stale_directories

if TYPE_CHECKING:
    from .client import Client

logger = logging.getLogger(__name__)

__all__ = ["LocalCluster", "resolve_address", "resolve_secret", "current_node", "connect", "default_client",
           "open_client"]

#: How long a LocalCluster may take to start, in seconds.
START_TIMEOUT = 60.0
#: The prefix of a LocalCluster's private directory (its sockets; a hosted control node's slots too).
_DIRECTORY_PREFIX = "lucidity-"
#: Environment variable naming a running cluster's control address.
ADDRESS_VARIABLE = "LUCIDITY_ADDRESS"


def resolve_address(address: Optional[str]) -> Optional[str]:
    """The cluster to use: the explicit address, else $LUCIDITY_ADDRESS, else None (start an embedded one).

    Raises:
        ValueError: the address is none of the forms `lucidity.addresses.parse` accepts.
    """
    if address:
        addresses.parse(address)
        return address
    variable = os.environ.get(ADDRESS_VARIABLE)
    if variable:
        addresses.parse(variable, what=f"${ADDRESS_VARIABLE}")
    return variable or None


def resolve_secret(secret: Union[str, bytes, None], embedded: bool) -> Optional[bytes]:
    """The cluster secret a client should use.

    An embedded cluster is protected by its private ipc:// directory and uses a secret only when given one;
    a running cluster's secret comes from `secret`, else $LUCIDITY_SECRET or $LUCIDITY_SECRET_FILE.
    """
    from .security import load_secret

    if isinstance(secret, bytes):
        secret = secret.decode()
    if embedded:
        return load_secret(secret, environ={}) if secret is not None else None
    return load_secret(secret)


def current_node() -> Optional[str]:
    """The name of the node running the current task, or None outside a task."""
    return os.environ.get("LUCIDITY_NODE")


class LocalCluster:
    """A control node and `nodes` node daemons on this machine, stopped on close or at exit.

    Args:
        nodes: number of node daemons.
        processes: worker processes per node (default: the CPU count).
        log_level: the daemons' log level (their logs go to this process's stderr).
        memory_limit: memory cap of every worker, in bytes or as "200MB" (`lucidity node --memory-limit`).
        secret: a cluster secret for its daemons (not needed: its sockets are in a directory only this user
            can open). Clients of it must then use the same secret.
        hosted_control: the node daemon is the control node too, instead of a control daemon of its own:
            what ``Pool()`` starts, one process and a third of the start's CPU fewer. Only with one node; ``pids``
            then holds that daemon alone, and stopping it stops the control node with it.

    Use as a context manager, or call `close`. ``address`` is the control node's address, to pass to
    ``Pool(address=...)`` or ``lucidity status``; ``pids`` are the daemons' process ids, the control
    daemon's first.
    """

    def __init__(self, nodes: int = 1, processes: Optional[int] = None, *, log_level: str = "WARNING",
                 start_timeout: float = START_TIMEOUT, memory_limit: Union[int, str, None] = None,
                 secret: Union[str, bytes, None] = None, hosted_control: bool = False) -> None:
        if nodes < 1:
            raise ValueError("a LocalCluster needs at least one node")
        if hosted_control and nodes != 1:
            raise ValueError("a node daemon can host the control node of a LocalCluster of one node only")
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        self.nodes = nodes
        self.processes = processes or os.cpu_count() or 1
        self.memory_limit = parse_size(memory_limit)
        if self.memory_limit is not None and self.memory_limit < MIN_WORKER_MEMORY:
            raise ValueError(f"a memory limit of {format_size(self.memory_limit)} is too small to start a worker; "
                             f"a worker needs at least {format_size(MIN_WORKER_MEMORY)}")
        self._runtime = private_directory(_DIRECTORY_PREFIX, remove_stale=False)  # removed below, once started
        self.address = f"ipc://{self._runtime}/control"
        parent_read, self._parent_write = os.pipe()
        env = dict(os.environ, LUCIDITY_SYS_PATH=os.pathsep.join(p for p in sys.path if p))
        root = _import_root()
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        for variable in (ADDRESS_VARIABLE, "LUCIDITY_SECRET", "LUCIDITY_SECRET_FILE"):
            env.pop(variable, None)
        self.secret = resolve_secret(secret, embedded=True)
        if self.secret is not None:
            env["LUCIDITY_SECRET"] = self.secret.decode()
        base = [sys.executable, "-m", "lucidity", "--log-level", log_level]
        preload = _preload_main(self._runtime)
        children: list[Child] = []
        ready: dict[int, Child] = {}
        self._finalizer = weakref.finalize(self, _stop, children, self._runtime, self._parent_write)
        try:
            runtime = ["--runtime-dir", self._runtime]
            commands = [] if hosted_control else [[*base, "control", "--bind", self.address, *runtime]]
            for index in range(1, nodes + 1):
                name = "local" if nodes == 1 else f"local-{index}"
                commands.append([*base, "node", self.address, "--bind", f"ipc://{self._runtime}/node-{index}",
                                 "--processes", str(self.processes), "--name", name,
                                 "--no-forward-output"]  # workers print to our own fds already (docs/pool.md)
                                + (["--memory-limit", str(self.memory_limit)] if self.memory_limit else [])
                                + (["--serve-control", *runtime] if hosted_control else [])
                                + (["--preload-main", preload] if preload else []))
            for command in commands:
                ready_read, ready_write = os.pipe()
                command += ["--parent-fd", str(parent_read), "--ready-fd", str(ready_write)]
                try:
                    child = Child.start(command, pass_fds=(parent_read, ready_write), env=env)
                finally:
                    os.close(ready_write)
                children.append(child)
                ready[ready_read] = child
            # While the daemons start (they import for tens of milliseconds, a core of two is free): the
            # directories of killed callers are looked for now, not on the way to the first result (issue 13).
            remove_stale_directories(_DIRECTORY_PREFIX, os.path.dirname(self._runtime))
            _load_pickler()
            _wait_ready(ready, start_timeout)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(parent_read)
        self.pids = [c.pid for c in children]

    def close(self) -> None:
        """Stop every daemon and worker of this cluster and remove its sockets; safe to call twice."""
        self._finalizer()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._finalizer.alive else "closed"
        return f"<LocalCluster {self.address} nodes={self.nodes} processes={self.processes} {state}>"


def _preload_main(directory: str) -> Optional[str]:
    """The caller's main script in a file of `directory` for the node daemons to run once in their worker
    templates (`lucidity.node.preload`), so that workers start holding it and what it imports; None if
    workers get no script (`lucidity.mainscript.preload_record`)."""
    record = mainscript.preload_record(mainscript.describe())
    if record is None:
        return None
    path = os.path.join(directory, "main.json")
    with open(path, "wb") as file:
        file.write(record)
    return path


def _import_root() -> Optional[str]:
    """The sys.path entry lucidity was imported through, if a fresh interpreter would not search it.

    A caller that found lucidity through an entry set in code (``sys.path.insert(0, checkout)``, lucidity not
    installed) must hand that entry to its daemons, or they die with "No module named lucidity"; their
    workers inherit it from them. An installed lucidity (site-packages, an editable install's finder) is
    found by a fresh interpreter already, and putting site-packages on PYTHONPATH would move it ahead of the
    standard library, so it is left alone. The workers still resolve the caller's own modules in the
    caller's order: they put the caller's whole ``sys.path`` first (``LUCIDITY_SYS_PATH``).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the directory holding lucidity/
    if root not in {os.path.abspath(entry or os.curdir) for entry in sys.path if isinstance(entry, str)}:
        return None  # found by a finder, not a path entry: an editable install, which the daemons have too
    searched = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    try:
        searched += [*site.getsitepackages(), site.getusersitepackages()]
    except AttributeError:  # site without these functions (old virtualenvs)
        pass
    if os.path.realpath(root) in {os.path.realpath(path) for path in searched}:
        return None
    return root


def _load_pickler() -> None:
    """Serialize a function once, while the daemons start: the first serialization imports dill (5-8 ms),
    which the first task would otherwise pay after they are ready, on the way to its result (issue 13). On
    a machine of two cores, one is free meanwhile: an embedded cluster's node daemon imports on the other."""
    from .serialization import dumps_function

    dumps_function(current_node)


def _wait_ready(ready: dict[int, Child], timeout: float) -> None:
    """Wait for every daemon to report ready on its pipe; fail fast if one exits first."""
    deadline = time.monotonic() + timeout
    try:
        while ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterUnavailable(f"the local cluster did not start within {timeout:.0f} s")
            poller = select.poll()
            for fd in ready:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(remaining * 1000):
                data = os.read(fd, 4096)
                child = ready.pop(fd)
                os.close(fd)
                if not data.endswith(b"\n"):
                    child.reap()
                    raise ClusterUnavailable(
                        f"a daemon of the local cluster (pid {child.pid}) exited during start-up "
                        f"with status {child.returncode}; its log is above")
    finally:
        for fd in ready:
            os.close(fd)


def _stop(children: list[Child], runtime: str, parent_write: int) -> None:
    try:
        os.close(parent_write)
    except OSError:
        pass
    # Nodes stop their workers within STOP_GRACE of our SIGTERM; give them that, and a margin.
    stop_children(children, 2 * STOP_GRACE + 1.0)
    shutil.rmtree(runtime, ignore_errors=True)
    # A node daemon removes its own directory as it exits, except when it was killed (SIGKILL, the OOM
    # killer); once reaped it is provably gone, so its directory goes now rather than at the next start.
    remove_stale_directories(NODE_DIRECTORY_PREFIX, creators=[child.pid for child in children])


def open_client(address: Optional[str], processes: Optional[int], *, memory_limit: Optional[int],
                secret: Union[str, bytes, None], ship: Sequence[str],
                connect_timeout: float) -> tuple["Client", Optional[LocalCluster]]:
    """The client a face (Pool, Executor) works through, and the embedded cluster it owns if it started one.

    With an address (or $LUCIDITY_ADDRESS), `processes` caps how many of the face's tasks run at once; without,
    an embedded cluster of `processes` workers is started, whose workers carry `memory_limit` as their hard
    limit (which no task can raise).
    """
    from .client import Client

    cluster = None
    resolved = resolve_address(address)
    if resolved is None:
        cluster = LocalCluster(processes=processes, memory_limit=memory_limit, secret=secret, hosted_control=True)
        resolved = cluster.address
    try:
        client = Client(resolved, max_running=processes if cluster is None else None, connect_timeout=connect_timeout,
                        ship=ship, secret=resolve_secret(secret, embedded=cluster is not None))
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    return client, cluster


class _DefaultCluster:
    """The cluster jobs use unless told otherwise: set by `connect`, else embedded on first use."""

    def __init__(self, address: Optional[str], ship: Sequence[str], secret: Union[str, bytes, None] = None) -> None:
        self.address = address
        self.ship = tuple(ship)
        self.secret = secret
        self.client: Optional["Client"] = None
        self.local: Optional[LocalCluster] = None

    def get_client(self) -> "Client":
        if self.client is None:
            from .client import Client

            address = resolve_address(self.address)
            if address is None:
                self.local = LocalCluster(secret=self.secret, hosted_control=True)
                address = self.local.address
            self.client = Client(address, ship=self.ship,
                                 secret=resolve_secret(self.secret, embedded=self.local is not None))
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.shutdown(cancel=True)
        if self.local is not None:
            self.local.close()


# The one piece of module-level mutable state: the default cluster, guarded by its lock.
_default_lock = threading.Lock()
_default: Optional[_DefaultCluster] = None


def connect(address: Optional[str] = None, secret: Union[str, bytes, None] = None, ship: Sequence[str] = ()) -> None:
    """Set the default cluster that jobs run on (`lucidity.job`); replaces (and closes) the previous one.

    Args:
        address: the control node's address; None means $LUCIDITY_ADDRESS, else an embedded cluster.
        secret: the cluster secret (default: $LUCIDITY_SECRET or $LUCIDITY_SECRET_FILE for a running cluster).
        ship: names of packages to send to the nodes up front (code shipping).

    Inside a task, jobs reach the cluster running the task without any call to connect.

    Raises:
        ValueError: `address` is not an address (see `lucidity.addresses`).
    """
    global _default
    if address is not None:
        addresses.parse(address)
    with _default_lock:
        previous, _default = _default, _DefaultCluster(address, ship, secret)
    if previous is not None:
        previous.close()


def default_client() -> "Client":
    """The client of the default cluster, connecting (or starting an embedded cluster) on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = _DefaultCluster(None, ())
        return _default.get_client()


def _close_default() -> None:
    global _default
    with _default_lock:
        previous, _default = _default, None
    if previous is not None:
        previous.close()


atexit.register(_close_default)
