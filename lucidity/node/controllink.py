"""A node daemon's line to the control node: a JOIN, then a small BEAT as the heartbeat, WELCOME back, LEAVE.

Owns the one DEALER socket a node daemon has towards the control node, the `transport.Dialer` that moves
it to another address of the control node (or resolves its name again) after a silence, and the watch
that turns a refused CURVE handshake into one log line a person can act on. It does not decide when to
heartbeat or what the node's entry says: the daemon (`lucidity.node.daemon`) does, and only its thread uses
this. It decides what each heartbeat carries: the full entry (a JOIN) until the control node has welcomed
it, whenever it changed (the load aside), and at once when the control node asks (WELCOME ``rejoin``: it
restarted, or dropped this node after a silence); otherwise a BEAT with the name, instance and load, so
that an idle node costs the control node a few dozen bytes a second (issue 13).

    daemon --JOIN (NodeEntry: first, changed or asked for)/BEAT (NodeBeat: otherwise)/LEAVE--> control
    control --WELCOME (rejoin: send the JOIN)--> daemon
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
        self._entry: Optional[messages.NodeEntry] = None  # the daemon's latest, for a JOIN the control asks for
        self._joined: Optional[messages.NodeEntry] = None  # the last JOIN sent
        self._listed: Optional[messages.NodeEntry] = None  # what the control node holds, as far as we know

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
        welcome = messages.Welcome.from_meta(protocol.decode(frames, CONTROL_KINDS).meta)
        self._heard = time.monotonic()
        if not welcome.rejoin:
            self._welcomed = self._heard
            self._listed = self._joined  # a JOIN goes before any WELCOME that follows it on this connection
            return
        logger.info("node %s: the control node at %s does not list this node (it restarted, or lost it); "
                    "joining again", self.node, self.address)
        self._listed = None
        if self._entry is not None:
            self._send_join(self._entry)

    def send_join(self, join: messages.NodeEntry) -> None:
        """Send the heartbeat, after moving to another address if the control node went silent: a JOIN with
        `join` if the control node may not hold it (the load aside), else a BEAT with its load."""
        if time.monotonic() - self._heard > CONTROL_SILENCE and self._dialer is not None:
            self._dialer.retry()  # another of its addresses, or its name resolved again: it may have moved
            self._heard = time.monotonic()
            self._listed = None  # perhaps another control node, or one that forgot us: say who we are
        self._entry = join
        listed = self._listed
        if listed is not None and (listed.name, listed.address, listed.processes, listed.instance, listed.host) == (
                join.name, join.address, join.processes, join.instance, join.host):
            self._send(messages.encode(messages.NodeBeat(join.name, join.instance, join.running)))
        else:
            self._send_join(join)

    def _send_join(self, join: messages.NodeEntry) -> None:
        self._joined = join
        self._send(messages.encode(join))

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
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
