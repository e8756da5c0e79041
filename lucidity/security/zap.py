"""The ZAP handler: admits exactly the cluster's keys, and labels each connection with its role.

A CURVE server alone admits any client that knows its public key. `Authenticator` is the ZAP handler of
one `zmq.Context` (ZAP is per context, on ``inproc://zeromq.zap.01``): it admits the cluster's CLIENT, NODE
and DAEMON public keys and nothing else, and answers each admitted connection with User-Id = the role's
value, which `keys.peer_role` reads back. It runs on its own thread; a daemon checks `is_alive()` on every
turn of its loop and exits if it died (sockets with ZAP_ENFORCE_DOMAIN then refuse everyone: fail closed).
Denials are logged at most once per `DENIAL_LOG_INTERVAL`, with a count of the others.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Optional

import zmq
from zmq.utils import z85

from ..transport import Waker
from .keys import _CURVE_KEY_BYTES, ZAP_DOMAIN, ClusterKeys

__all__ = ["Authenticator"]

logger = logging.getLogger("lucidity.security")

#: The endpoint where libzmq looks for the ZAP handler of a context (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: At most one denial is logged per this many seconds; the others are counted and reported with the next.
DENIAL_LOG_INTERVAL = 10.0
#: Bounds on the authenticator thread's start and stop, in seconds.
AUTHENTICATOR_START_TIMEOUT = 10.0
AUTHENTICATOR_STOP_TIMEOUT = 10.0

_ZAP_VERSION = b"1.0"


class Authenticator:
    """ZAP handler for one zmq.Context: admits exactly the cluster's CLIENT, NODE and DAEMON public keys and
    sets each connection's User-Id to the role's value, so that a receiver can check the sender's role per
    message with `peer_role`.

    It runs its own thread, which creates, uses and closes the ZAP socket; `stop` reaches it through a
    `Waker`. Only CURVE requests in the ``lucidity`` domain are admitted; anything else in this context that
    asks ZAP (another domain, NULL or PLAIN with a ZAP domain set) is denied. Denials are logged, at most one
    line per `DENIAL_LOG_INTERVAL`. Clients with a wrong secret are not among them: their handshake fails
    before ZAP is asked (see the module docstring).

    Differs from zmq.auth.ThreadAuthenticator: no asyncio loop, no IP allow-lists, keys from memory, and a
    start that raises if another ZAP handler already holds this context's endpoint.
    """

    def __init__(self, context: zmq.Context[Any], keys: ClusterKeys) -> None:
        self._context = context
        self._keys = keys
        self._thread: Optional[threading.Thread] = None
        self._waker: Optional[Waker] = None
        self._started = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._denied_since_log = 0
        self._last_denial_log = float("-inf")

    def start(self) -> None:
        """Bind the context's ZAP endpoint in a new thread and return once it serves.

        Raises:
            RuntimeError: already started, or the thread did not come up within the bound.
            zmq.ZMQError: the endpoint is taken (EADDRINUSE: another ZAP handler runs in this context).
        """
        if self._thread is not None:
            raise RuntimeError("this Authenticator was already started; make a new one to restart")
        self._waker = Waker()
        self._thread = threading.Thread(target=self._run, args=(self._waker,), name="lucidity-zap", daemon=True)
        self._thread.start()
        if not self._started.wait(AUTHENTICATOR_START_TIMEOUT):
            raise RuntimeError(f"the ZAP thread did not start within {AUTHENTICATOR_START_TIMEOUT} s")
        if self._start_error is not None:
            self._thread.join(AUTHENTICATOR_STOP_TIMEOUT)
            self._waker.close()
            raise self._start_error

    def stop(self) -> None:
        """Stop the thread and unbind the endpoint; from then on `secure_server` sockets refuse everyone.

        Idempotent. Bounded by `AUTHENTICATOR_STOP_TIMEOUT`.
        """
        thread, waker = self._thread, self._waker
        if thread is None or waker is None:
            return
        waker.wake()
        thread.join(AUTHENTICATOR_STOP_TIMEOUT)
        if thread.is_alive():
            logger.error("the ZAP thread did not stop within %s s (pid %d)", AUTHENTICATOR_STOP_TIMEOUT, os.getpid())
            return  # leave the waker open: the thread may still poll its fd
        waker.close()
        self._waker = None

    def is_alive(self) -> bool:
        """True while the ZAP thread serves. False after `stop`, or if it died (then everyone is refused)."""
        return self._thread is not None and self._thread.is_alive() and self._start_error is None

    def _run(self, waker: Waker) -> None:
        try:
            zap = self._context.socket(zmq.REP)
        except zmq.ZMQError as exc:
            self._start_error = exc
            self._started.set()
            return
        try:
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            zap.close()
            self._start_error = zmq.ZMQError(
                exc.errno, f"cannot bind the ZAP endpoint {ZAP_ENDPOINT} ({exc.strerror}); is another "
                "ZAP handler running in this context?"
            )
            self._started.set()
            return
        self._started.set()
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(waker.read_fd, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if waker.read_fd in ready:
                    return
                if zap in ready:
                    request = zap.recv_multipart()
                    zap.send_multipart(self._reply(request))
        except zmq.ContextTerminated:
            pass  # the context was terminated under us; closing the socket is all that is left
        except Exception:
            logger.exception("the ZAP thread failed; every CURVE handshake in this process is now refused "
                             "(pid %d)", os.getpid())
        finally:
            zap.close(linger=0)

    def _reply(self, request: list[bytes]) -> list[bytes]:
        """Decide one ZAP request (RFC 27) and build the reply."""
        request_id = request[1] if len(request) > 1 else b""
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            self._log_denial("malformed ZAP request", "?", None)
            return [_ZAP_VERSION, request_id, b"400", b"malformed request", b"", b""]
        _version, _, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        peer = address.decode("ascii", "replace").replace("::ffff:", "")
        if domain != ZAP_DOMAIN:
            reason = f"unknown ZAP domain {domain!r}"
        elif mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != _CURVE_KEY_BYTES:
            reason = f"mechanism {mechanism.decode('ascii', 'replace')} is not CURVE"
        else:
            public_z85 = z85.encode(credentials[0])
            role = self._keys.role_of(public_z85)
            if role is not None:
                return [_ZAP_VERSION, request_id, b"200", b"OK", role.value.encode("ascii"), b""]
            self._log_denial("key not of this cluster", peer, public_z85)
            return [_ZAP_VERSION, request_id, b"400", b"unknown key", b"", b""]
        self._log_denial(reason, peer, None)
        return [_ZAP_VERSION, request_id, b"400", reason.encode("ascii", "replace"), b"", b""]

    def _log_denial(self, reason: str, peer: str, public_z85: Optional[bytes]) -> None:
        """Log a denial, at most once per `DENIAL_LOG_INTERVAL`; only the ZAP thread calls this."""
        self._denied_since_log += 1
        now = time.monotonic()
        if now - self._last_denial_log < DENIAL_LOG_INTERVAL:
            return
        key = public_z85.decode("ascii") if public_z85 is not None else "-"
        logger.warning(
            "denied a connection from %s: %s (client key %s); %d denied since the last such line (pid %d). "
            "A peer with a wrong cluster secret is refused before this check and is not counted here.",
            peer, reason, key, self._denied_since_log, os.getpid(),
        )
        self._denied_since_log = 0
        self._last_denial_log = now
