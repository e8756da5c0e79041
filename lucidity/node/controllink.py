"""A node daemon's line to the control node: JOIN as the heartbeat, WELCOME back, LEAVE at the end.

Owns the one DEALER socket a node daemon has towards the control node, the `transport.Dialer` that moves
it to another address of the control node (or resolves its name again) after a silence, and the watch
that turns a refused CURVE handshake into one log line a person can act on. It does not decide when to
join or what to say in a JOIN: the daemon (`lucidity.node.daemon`) does, and only its thread uses this.

    daemon --JOIN (NodeEntry, every heartbeat)/LEAVE--> control --WELCOME--> daemon
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import zmq

from .. import addresses, messages, protocol, security, transport
from ..security import Role

logger = logging.getLogger(__name__)

__all__ = ["ControlLink", "CONTROL_SILENCE"]

#: Silence from the control node after which the node dials its other addresses (or resolves its name again).
CONTROL_SILENCE = 3.0
#: At most one "cannot join" line per this many seconds.
HANDSHAKE_LOG_INTERVAL = 10.0

CONTROL_KINDS = frozenset({protocol.Kind.WELCOME})


class ControlLink:
    """The socket to the control node at `endpoint`, for the node called `node` (log lines name it)."""

    def __init__(self, context: zmq.Context[Any], endpoint: addresses.Endpoint, node: str) -> None:
        self.endpoint = endpoint
        self.address = endpoint.zmq
        self.node = node
        self.socket = transport.new_socket(context, zmq.DEALER)
        self.watch: Optional[security.HandshakeWatch] = None
        self._dialer: Optional[transport.Dialer] = None
        self._heard = time.monotonic()  # reset after each redial: the next address gets its own grace
        self._welcomed: Optional[float] = None  # the last WELCOME, for `is_joined`
        self._last_handshake_log = -HANDSHAKE_LOG_INTERVAL

    def connect(self, guard: security.Guard) -> None:
        guard.connect(self.socket, Role.NODE)
        if self.endpoint.scheme == "tcp":
            self.watch = security.HandshakeWatch(self.socket)
        self._dialer = transport.Dialer(self.socket, self.address)

    @property
    def is_joined(self) -> bool:
        """The control node answered a JOIN within the last `CONTROL_SILENCE` seconds."""
        return self._welcomed is not None and time.monotonic() - self._welcomed <= CONTROL_SILENCE

    def on_message(self, frames: list[bytes]) -> None:
        """A message from the control node; a WELCOME is the only kind accepted (ProtocolError otherwise)."""
        messages.Welcome.from_meta(protocol.decode(frames, CONTROL_KINDS).meta)
        self._heard = self._welcomed = time.monotonic()

    def send_join(self, join: messages.NodeEntry) -> None:
        """Send a JOIN (the heartbeat), after moving to another address if the control node went silent."""
        if time.monotonic() - self._heard > CONTROL_SILENCE and self._dialer is not None:
            self._dialer.retry()  # another of its addresses, or its name resolved again: it may have moved
            self._heard = time.monotonic()
        try:
            self.socket.send_multipart(messages.encode(join), zmq.NOBLOCK)
        except zmq.Again:
            pass  # control unreachable right now; the next heartbeat tries again

    def leave(self) -> None:
        try:
            self.socket.send_multipart(messages.encode(messages.Leave(self.node)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def check_handshake(self) -> None:
        """Say why the control node refuses us (a wrong secret is otherwise a silent reconnect loop)."""
        watch = self.watch
        if watch is None:
            return
        reason = watch.check()
        if watch.succeeded:
            watch.close()
            self.watch = None
        elif reason is not None:
            now = time.monotonic()
            if now - self._last_handshake_log >= HANDSHAKE_LOG_INTERVAL:
                self._last_handshake_log = now
                logger.error("node %s cannot join %s: %s", self.node, self.address, reason)

    def close_watch(self) -> None:
        """Stop watching the handshake (the socket itself is closed with the daemon's others)."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None
