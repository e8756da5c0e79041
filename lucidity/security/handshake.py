"""Handshake diagnosis: a connecting socket's monitor events turned into a reason a person can act on.

A client or node holding a wrong secret would otherwise reconnect in silence forever. `HandshakeWatch`
watches one connecting socket's monitor: HANDSHAKE_FAILED_AUTH and HANDSHAKE_FAILED_PROTOCOL are definitive
and reported at once; HANDSHAKE_FAILED_NO_DETAIL (a wrong secret, an impostor, a daemon whose ZAP handler is
gone: the server just closes) only after `NO_DETAIL_FAILURES` in a row on one endpoint, since a daemon that
dies mid-handshake also produces one. What each event means, measured: docs/security.md.
"""

from __future__ import annotations

import errno
import struct
from typing import Any, Optional

import zmq

from .secret import SECRET_ENV, SECRET_FILE_ENV

__all__ = ["HandshakeWatch", "NO_DETAIL_FAILURES"]

#: Consecutive HANDSHAKE_FAILED_NO_DETAIL events on one endpoint before `HandshakeWatch` calls it a failure.
NO_DETAIL_FAILURES = 3

_WATCHED_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_DISCONNECTED
)


class HandshakeWatch:
    """Turns the endless silent reconnect loop of a client with a wrong or missing secret into an error.

    Watches one connecting socket through a monitor socket. Create it before `connect`, or the first events
    are lost. Owned by the socket's owning thread; register `fd_socket` in that thread's poller and call
    `check` when it is readable (or on any timer).
    """

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._sock = sock
        self._monitor: zmq.Socket[Any] = sock.get_monitor_socket(_WATCHED_EVENTS)
        self._no_detail_in_a_row: dict[str, int] = {}
        self._reasons: dict[str, str] = {}
        self._succeeded = False

    @property
    def fd_socket(self) -> zmq.Socket[Any]:
        """The monitor socket (a PAIR); readable when events wait to be checked."""
        return self._monitor

    @property
    def succeeded(self) -> bool:
        """True once any handshake on the socket has succeeded."""
        return self._succeeded

    def check(self) -> Optional[str]:
        """Drain waiting events without blocking; return why handshakes fail, or None if nothing says so.

        A reason stays until a handshake to the same endpoint succeeds. With several endpoints failing, the
        first to fail is reported.
        """
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, value = struct.unpack("=HI", frames[0])
            self._on_event(event, value, _readable_endpoint(frames[1].decode("utf-8", "replace")))
        return next(iter(self._reasons.values()), None)

    def close(self) -> None:
        """Stop monitoring and close the monitor socket. Idempotent; call before closing the watched socket."""
        if self._monitor.closed:
            return
        if not self._sock.closed:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
        self._monitor.close(linger=0)

    def _on_event(self, event: int, value: int, endpoint: str) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._succeeded = True
            self._no_detail_in_a_row.pop(endpoint, None)
            self._reasons.pop(endpoint, None)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._reasons.setdefault(endpoint, (
                f"the daemon at {endpoint} rejected this client's key (ZAP status {value}): it knows the "
                "daemon's public key but not the cluster secret; set the same secret as the cluster "
                f"(${SECRET_ENV} or ${SECRET_FILE_ENV})"
            ))
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._reasons.setdefault(endpoint, _protocol_reason(endpoint, value))
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            count = self._no_detail_in_a_row.get(endpoint, 0) + 1
            self._no_detail_in_a_row[endpoint] = count
            if count >= NO_DETAIL_FAILURES:
                self._reasons.setdefault(endpoint, (
                    f"the daemon at {endpoint} closed the connection during the CURVE handshake {count} times "
                    f"in a row ({errno.errorcode.get(value, value)}): this client's cluster secret differs from the daemon's "
                    "(wrong secret), the address is not a daemon of this cluster, or the daemon's "
                    "authenticator is not running"
                ))
        # DISCONNECTED is watched so that the monitor sees a connection's end, but it decides nothing: an
        # authenticated peer that leaves is the liveness code's business, not a security failure.


def _readable_endpoint(endpoint: str) -> str:
    """The endpoint as the user wrote it: with IPv6 enabled, libzmq reports tcp://[::ffff:127.0.0.1]:port."""
    return endpoint.replace("[::ffff:", "").replace("]:", ":") if "[::ffff:" in endpoint else endpoint


def _protocol_reason(endpoint: str, code: int) -> str:
    if code == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return (f"the daemon at {endpoint} and this client use different security mechanisms: one side has "
                f"a cluster secret (CURVE) and the other has none; set the cluster's secret "
                f"(${SECRET_ENV} or ${SECRET_FILE_ENV}) on both")
    if code == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return (f"the CURVE handshake with {endpoint} failed cryptographically: the two sides hold "
                "different cluster secrets")
    return f"the handshake with {endpoint} failed with ZMTP/ZAP protocol error 0x{code:08x}"
