"""What both daemons do the same way: start, guard, listen, drain messages, and close within bounds.

The control daemon (`lucidity.node.control`) and the node daemon (`lucidity.node.daemon`) differ in what
they serve, not in how they run. Both:

- stop on SIGTERM or SIGINT, which reach their poll loop through a `transport.Waker` (no sleeps);
- raise their open-file limit, so that a flood of connections leaves descriptors to work with;
- refuse to listen beyond loopback without a cluster secret (`security.check_exposure`);
- put a `security.Guard` on their listening socket, cap its messages, and exit rather than serve
  unguarded if the guard dies (`LUCIDITY_TEST_HOOKS=1`: SIGUSR2 kills it, for the tests that show this);
- treat an address they cannot listen on as the operator's to fix (exit status 2);
- drop a message that fails, one at a time, and log at most one line a second about it: one message can
  drop itself but never the daemon;
- close their sockets and context within a bounded linger, whatever ended them.

- serve Prometheus metrics and a health check over HTTP when given ``--metrics`` (`lucidity.node.metrics`),
  with the same rule for addresses beyond loopback, answered by their loop (`_answer_scrapes`).

A daemon's life is a `Lifecycle`: STARTING until it listens, SERVING, STOPPING once asked to stop, STOPPED.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from typing import Any, Callable, Optional

import zmq

from .. import protocol, security, transport
from .._version import __version__
from ..errors import ProtocolError
from . import metrics as metrics_module
from .processes import raise_open_file_limit

logger = logging.getLogger(__name__)

__all__ = ["Lifecycle", "Daemon", "MAX_MESSAGE", "DROP_LOG_INTERVAL"]

#: Largest message a daemon takes (all of theirs are small), in bytes.
MAX_MESSAGE = 1024 * 1024
#: At most one "dropped a message" log line per this many seconds.
DROP_LOG_INTERVAL = 1.0

#: What a routed message's first frame (the routing identity) says about its sender: a role and its kinds.
Accepted = dict[security.Role, frozenset[protocol.Kind]]


class Lifecycle(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Daemon:
    """The skeleton of a daemon with one listening ROUTER socket.

    Args:
        who: how logs name it ("control", "node n1").
        bind: the address to listen on, as ZeroMQ takes it.
        secret: the cluster secret, or None (loopback only, unless `insecure`).
        parent_fd: a pipe's read end whose closing means the owner is gone (embedded clusters).
        ready_fd: a pipe to which the daemon writes its address once ready (embedded clusters).
        metrics: ``HOST:PORT`` to serve ``/metrics`` and ``/health`` at, or None.

    Raises:
        ValueError: `metrics` is not ``HOST:PORT``.
    """

    #: What the daemon is, in metrics and logs: "control" or "node".
    KIND = "daemon"

    def __init__(self, who: str, bind: str, *, secret: Optional[bytes], insecure: bool,
                 parent_fd: Optional[int], ready_fd: Optional[int], metrics: Optional[str] = None) -> None:
        self.who = who
        self._metrics_endpoint = None if metrics is None else metrics_module.parse_metrics_address(metrics)
        self._exporter: Optional[metrics_module.Exporter] = None
        self._started_at = time.time()
        self._bind_address = bind
        self._secret = secret
        self._insecure = insecure
        self._parent_fd = parent_fd
        self._ready_fd = ready_fd
        self.state = Lifecycle.STARTING
        self._last_drop_log = -DROP_LOG_INTERVAL
        self._waker = transport.Waker()
        self._context = transport.new_context()
        self._router = transport.new_socket(self._context, zmq.ROUTER)
        self._guard: Optional[security.Guard] = None

    @property
    def stopping(self) -> bool:
        return self.state is not Lifecycle.STARTING and self.state is not Lifecycle.SERVING

    def stop(self) -> None:
        """Ask the loop to end (from a signal handler too: the waker wakes the loop)."""
        if not self.stopping:
            self.state = Lifecycle.STOPPING
        self._waker.wake()

    # -- starting ----------------------------------------------------------------------------------------

    def _open(self) -> Optional[int]:
        """Signals, descriptors, the exposure rule, the guard, and the bind. Returns None when listening (the
        bound address is in ``self._bound``), or the exit status to end with (the daemon is closed)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: self.stop())
        signal.set_wakeup_fd(self._waker.write_fd, warn_on_full_buffer=False)
        raise_open_file_limit()
        if not security.check_exposure(self._bind_address, self._secret, self._insecure, self.who) or (
                self._metrics_endpoint is not None and
                not metrics_module.may_expose(self._metrics_endpoint, self._secret, self._insecure, self.who)):
            self._close()
            return 2
        keys = security.ClusterKeys.derive(self._secret) if self._secret else None
        self._guard = security.Guard(self._context, keys)
        self._guard.listen(self._router)
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        if os.environ.get("LUCIDITY_TEST_HOOKS"):
            guard = self._guard
            signal.signal(signal.SIGUSR2, lambda signum, frame: guard.close())
        try:
            self._bound = transport.bind(self._router, self._bind_address)
        except zmq.ZMQError as exc:
            logger.error("%s cannot bind %s: %s", self.who, self._bind_address, exc)
            self._close()
            return 2  # a port in use, an address not on this machine: the operator's to fix, as a usage error
        if self._metrics_endpoint is not None:
            self._exporter = metrics_module.Exporter(self._metrics_endpoint, self.who, self._waker.wake,
                                                     lambda: self.stopping)
            try:
                self._exporter.start()
            except OSError as exc:
                logger.error("%s cannot serve metrics at %s:%d: %s", self.who, self._metrics_endpoint.host,
                             self._metrics_endpoint.port, exc)
                self._close()
                return 2
        self.state = Lifecycle.SERVING
        return None

    # -- metrics -----------------------------------------------------------------------------------------

    def _answer_scrapes(self) -> None:
        """Answer waiting /metrics and /health requests (called by the loop after each poll)."""
        if self._exporter is not None:
            self._exporter.answer(self._metric_families, self._health)

    def _metric_families(self) -> list[metrics_module.Family]:
        """What both daemons export; each adds its own."""
        return [
            metrics_module.Family("lucidity_daemon_info", "gauge", "The daemon's kind and lucidity version (always 1)",
                                  (metrics_module.Sample("", (("daemon", self.KIND), ("version", __version__)), 1),)),
            metrics_module.gauge("lucidity_daemon_start_time_seconds", "When the daemon started, in Unix time",
                                 self._started_at),
        ]

    def _health(self) -> metrics_module.Health:
        return not self.stopping, {"daemon": self.KIND, "state": self.state.value}

    def _announce(self, address: str) -> None:
        """Tell the owner of an embedded cluster where we are, once."""
        if self._ready_fd is not None:
            os.write(self._ready_fd, f"{address}\n".encode())
            os.close(self._ready_fd)
            self._ready_fd = None

    def _guard_failed(self) -> bool:
        if self._guard is not None and self._guard.is_healthy():
            return False
        logger.error("%s: the authenticator died; exiting rather than serving unguarded", self.who)
        return True

    # -- messages ----------------------------------------------------------------------------------------

    def _drain_router(self, handle: Callable[[bytes, list[Any], frozenset[protocol.Kind]], None],
                      by_role: Accepted, accepted: frozenset[protocol.Kind],
                      router: Optional[zmq.Socket[Any]] = None) -> None:
        """Hand every waiting message of the listening socket (or of `router`, another ROUTER socket behind
        the same guard) to ``handle(identity, frames, kinds)``."""
        assert self._guard is not None
        guard = self._guard

        def routed(frames: list[Any]) -> None:
            if len(frames) < 3:
                raise ProtocolError(f"message has {len(frames) - 1} frame(s) after the routing identity")
            handle(frames[0].bytes, frames[1:], guard.accepted(frames[0], by_role, accepted))

        self._drain(self._router if router is None else router, routed)

    def _drain(self, sock: zmq.Socket[Any], handle: Callable[[list[Any]], None]) -> None:
        """Hand every waiting message of `sock` to `handle`; a message that fails drops itself."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handle(frames)
            except ProtocolError as exc:  # the envelope (`protocol.decode`) or the body (`lucidity.messages`)
                self._log_drop(exc)
            except Exception as exc:  # a bug of ours, logged as one: one message drops itself, never the daemon
                if self._may_log():
                    logger.exception("%s dropped a message it could not handle: %s", self.who, exc)

    def _log_drop(self, exc: Exception) -> None:
        if self._may_log():
            logger.warning("%s dropped a malformed message: %s", self.who, exc)

    def _may_log(self) -> bool:
        now = time.monotonic()
        if now - self._last_drop_log < DROP_LOG_INTERVAL:
            return False
        self._last_drop_log = now
        return True

    def _send(self, identity: bytes, frames: list[Any]) -> None:
        try:
            self._router.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("%s could not reach a peer: %s", self.who, exc)

    # -- closing -----------------------------------------------------------------------------------------

    def _close(self, *others: zmq.Socket[Any], linger: float = 0.0) -> None:
        """Close the guard, the listening socket, `others` (with `linger` seconds to send what they hold),
        the context and the waker. Idempotent."""
        if self.state is Lifecycle.STOPPED:
            return
        if self._exporter is not None:
            self._exporter.close()
        if self._guard is not None:
            self._guard.close()
        self._router.close(linger=0)
        for sock in others:
            sock.close(linger=int(linger * 1000))
        self._context.term()
        signal.set_wakeup_fd(-1)  # before closing the pipe the signal machinery writes to
        self._waker.close()
        self.state = Lifecycle.STOPPED
