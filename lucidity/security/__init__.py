"""Security: the cluster secret, CURVE keys, the ZAP handler, handshake diagnosis, and the one way in.

A cluster with a secret authenticates and encrypts every connection with ZeroMQ CURVE, using keys derived
from the secret; without one, every socket stays on loopback. The package, by job:

    secret.py     the secret: load_secret, write_secret_file (files 0600, never overwritten)
    keys.py       Role, ClusterKeys.derive, secure_server, secure_client, peer_role
    zap.py        Authenticator, the ZAP handler admitting exactly the cluster's keys
    handshake.py  HandshakeWatch: why a connection is refused, instead of a silent reconnect loop

`Guard` (here) is the one way in for daemons, workers and clients alike: it turns CURVE on for a listening
or connecting socket when there is a secret, caps inbound frames before anyone is authenticated, and says
which message kinds a peer's role may send. `check_exposure` refuses to listen beyond loopback without a
secret. Which socket gets which role, and what a daemon does about a dead authenticator, is the daemons'
business; what each handshake event means and what CURVE costs are in docs/security.md.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import zmq

from .. import protocol
from ..addresses import is_loopback, parse
from .handshake import NO_DETAIL_FAILURES, HandshakeWatch
from .keys import ZAP_DOMAIN, ClusterKeys, Role, peer_role, secure_client, secure_server
from .secret import MIN_SECRET_BYTES, SECRET_ENV, SECRET_FILE_ENV, load_secret, write_secret_file
from .zap import Authenticator

__all__ = [
    "Guard", "guard_from_environment", "check_exposure", "Role", "ClusterKeys", "secure_server",
    "secure_client", "peer_role", "Authenticator", "HandshakeWatch", "load_secret", "write_secret_file",
    "MAX_INBOUND_FRAME_BYTES", "MIN_SECRET_BYTES", "SECRET_ENV", "SECRET_FILE_ENV", "ZAP_DOMAIN",
    "NO_DETAIL_FAILURES",
]

logger = logging.getLogger(__name__)

#: Largest frame a listening socket takes (MAXMSGSIZE, set by `Guard.listen`), in bytes: `protocol.encode`
#: slices payloads into frames of `protocol.MAX_FRAME_BYTES`, and CURVE adds 33 bytes to each on the wire
#: (measured; the cap applies to the encrypted frame). The allowance also leaves meta frames some room.
MAX_INBOUND_FRAME_BYTES = protocol.MAX_FRAME_BYTES + 64 * 1024


class Guard:
    """Everything one process needs to secure its sockets, or nothing when the cluster has no secret.

    Without keys (an embedded cluster on ipc:// sockets in a private directory, or a loopback cluster run
    without a secret) every kind is accepted from everyone and only `listen`'s frame cap applies. With keys,
    the process's listening sockets are CURVE servers behind an `Authenticator`, its connecting sockets pin
    the daemon key, and `accepted` narrows the kinds of message taken from a peer to those of its role.
    """

    def __init__(self, context: zmq.Context[Any], keys: Optional[ClusterKeys]) -> None:
        self.keys = keys
        self._authenticator: Optional[Authenticator] = None
        if keys is not None:
            self._authenticator = Authenticator(context, keys)
            self._authenticator.start()

    @property
    def is_secure(self) -> bool:
        return self.keys is not None

    def listen(self, sock: zmq.Socket[Any]) -> None:
        """Call before bind: a CURVE server when secure, and in any case a cap on the size of inbound frames.

        The cap is what bounds memory before authentication. libzmq allocates the size a frame announces as
        soon as its header arrives, during the handshake too, and an unauthenticated connection that
        announced 2 GiB and kept writing for 3 s made a CURVE server hold +1.4 GiB of RSS (2 GiB reserved)
        until HANDSHAKE_IVL dropped it. libzmq checks MAXMSGSIZE per frame, in its decoder, before it
        allocates (measured with libzmq 4.3.5: three frames of 0.9 MiB in one message pass a 1 MiB cap, one
        frame of 1 MiB + 1 does not; with the cap the 2 GiB announcement is refused at once and the
        connection closed, +0 MiB). So the cap does not limit messages, only frames, and `protocol.encode`
        keeps every payload frame within it.

        HANDSHAKE_IVL stays at the transport's 5 s: with the cap, a connection that never authenticates
        holds at most about 1 MiB while it lasts, and an attacker who reconnects at once holds as much with
        a shorter window. A shorter window would cost honest clients instead: a worker's ZAP handler is a
        Python thread, and a task holding the GIL in a C call stalls it (measured: a 3 s ``sum(range(...))``
        made a 1 s window fail twice before the handshake got through; a 5 s window waited it out).
        """
        if self.keys is not None:
            secure_server(sock, self.keys)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_FRAME_BYTES)

    def connect(self, sock: zmq.Socket[Any], role: Role) -> None:
        """Call before connect."""
        if self.keys is not None:
            secure_client(sock, self.keys, role)

    def accepted(self, first_frame: Any, by_role: Mapping[Role, frozenset[Any]], default: frozenset[Any]) -> frozenset[Any]:
        """The kinds of message this peer may send: by its role when secure, else `default`."""
        if self.keys is None:
            return default
        role = peer_role(first_frame) if isinstance(first_frame, zmq.Frame) else None
        return by_role.get(role, frozenset()) if role is not None else frozenset()

    def is_healthy(self) -> bool:
        """False once the authenticator died: then nobody can connect (fail closed) and the process should exit."""
        return self._authenticator is None or self._authenticator.is_alive()

    def close(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()


def guard_from_environment(context: zmq.Context[Any], secret: Optional[bytes] = None) -> Guard:
    """A guard for `secret`, or for the secret in the environment ($LUCIDITY_SECRET, $LUCIDITY_SECRET_FILE)."""
    secret = secret if secret is not None else load_secret()
    return Guard(context, ClusterKeys.derive(secret) if secret is not None else None)


def check_exposure(bind: str, secret: Optional[bytes], insecure: bool, who: str) -> bool:
    """Refuse to listen beyond loopback without a secret, unless the operator insists (--insecure)."""
    if secret is not None or is_loopback(parse(bind, allow_port_zero=True)):
        return True
    if insecure:
        logger.warning("%s: LISTENING ON %s WITHOUT A CLUSTER SECRET (--insecure): anyone who can reach this port "
                       "can run code on this machine", who.upper(), bind)
        return True
    logger.error("%s refuses to listen on %s without a cluster secret: anyone who can reach it could run code "
                 "here. Give --secret-file (or $LUCIDITY_SECRET), bind a loopback address, or pass --insecure.",
                 who, bind)
    return False
