"""The cluster secret, the CURVE keys derived from it, the ZAP handler, and handshake diagnosis.

Owns: reading and writing the secret, deriving one CURVE keypair per `Role` from it, the socket options that
turn CURVE on, the ZAP handler (`Authenticator`) that admits exactly the cluster's keys and labels each
connection with its role, `peer_role` to read that label back from a received frame, and `HandshakeWatch`,
which turns a silent reconnect loop into an error message. Deliberately not here: which socket gets which
role, what a daemon does about a dead authenticator, and any message framing. `Guard.listen` caps inbound
frames (MAXMSGSIZE), because a listening socket needs the cap before any peer is authenticated (see there).
It depends on `errors`, `protocol` (for its frame size) and `transport` only.

API (the daemons and the client are written against exactly this)::

    Role                      CLIENT | NODE | DAEMON
    load_secret(secret=None, secret_file=None, environ=os.environ) -> Optional[bytes]
    write_secret_file(path) -> None
    ClusterKeys.derive(secret) -> ClusterKeys
        .public(role) -> bytes        .secret_key(role) -> bytes        .role_of(public_z85) -> Optional[Role]
    secure_server(sock, keys)                 before bind: CURVE server, DAEMON keypair, ZAP domain, enforced
    secure_client(sock, keys, role)           before connect: pins the DAEMON public key, own keypair = role's
    Authenticator(context, keys).start() / .stop() / .is_alive()
    peer_role(frame) -> Optional[Role]        frame received with copy=False on a secure_server socket
    HandshakeWatch(sock).check() -> Optional[str], .succeeded, .fd_socket, .close()

Roles. CLIENT is a client (and a nested client inside a worker); NODE is a node daemon connecting to the
control node; DAEMON is what every listening socket (control, node daemons, workers) presents, and what every
connecting socket pins. All three keypairs come from the one secret, so anyone holding the secret can take
any role: roles label honest peers so that a receiver can refuse, say, a node-only message from a client
(fault matrix row 23). They are not a privilege boundary among holders of the secret.

How the pieces prove who is who:

- A connecting socket pins the DAEMON public key. CURVE's HELLO is encrypted to that key, so a server that
  does not hold the DAEMON secret key cannot even read it: an impostor (row 35) never completes a handshake,
  so it never receives any of the client's messages (none is sent before the handshake) and can send none.
- A listening socket needs ZAP to check the client's key: without a ZAP handler, a CURVE server accepts any
  client that knows its public key. `Authenticator` is that handler for one `zmq.Context` (ZAP is per
  context, on ``inproc://zeromq.zap.01``); it admits the cluster's CLIENT, NODE and DAEMON keys and nothing
  else, and answers each admitted connection with User-Id = the role's value.
- If the ZAP handler is gone, libzmq lets every CURVE client in unless ZAP_ENFORCE_DOMAIN is set (fail
  open). `secure_server` sets it. Measured here with libzmq 4.3.5: with ZAP_ENFORCE_DOMAIN and no handler,
  every handshake fails (server: HANDSHAKE_FAILED_NO_DETAIL, errno EFAULT; client: HANDSHAKE_FAILED_NO_DETAIL,
  EPIPE, then reconnects forever), so a stopped or crashed `Authenticator` locks everyone out instead of
  letting everyone in. A daemon should check `is_alive()` on its timer and treat False as fatal.

What a connecting socket's monitor shows against a `secure_server` daemon (measured, libzmq 4.3.5;
`HandshakeWatch` turns these into text):

- right secret: HANDSHAKE_SUCCEEDED.
- wrong secret (hence a wrong pinned daemon key), an impostor daemon holding another key, or a daemon whose
  ZAP handler is gone: HANDSHAKE_FAILED_NO_DETAIL with value EPIPE, then DISCONNECTED, and libzmq
  reconnects forever with its back-off. The server just closes the connection, so the client cannot tell
  these three apart.
- right daemon key but a keypair the cluster does not know: HANDSHAKE_FAILED_AUTH with value 400 (the ZAP
  status code). libzmq then gives up on that endpoint for good: no reconnect.
- no secret at all (NULL mechanism): HANDSHAKE_FAILED_PROTOCOL with value
  PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH (0x11000002); no reconnect either.

A wrong secret never reaches the `Authenticator` (the HELLO fails to decrypt first), so the daemon sees it
only on a monitor of its own socket, as HANDSHAKE_FAILED_PROTOCOL (PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC).
Because a daemon that dies mid-handshake also produces one NO_DETAIL, `HandshakeWatch` reports NO_DETAIL only
after `NO_DETAIL_FAILURES` in a row on one endpoint (about 0.7 s with transport's 0.1 s doubling back-off);
AUTH and PROTOCOL are definitive and reported at once. Monitor endpoints read tcp://[::ffff:127.0.0.1]:port
when IPv6 is on; the reasons show them as tcp://127.0.0.1:port, like `transport.bind`.

User-Id. `Frame.get("User-Id")` works only on frames received with ``copy=False`` on the listening socket,
returns ``str``, and raises ZMQError(EINVAL) when the connection carries no User-Id (no ZAP handler answered,
e.g. a NULL socket). Every frame of a multipart message carries it, including the routing-id frame a ROUTER
prepends. The connecting side runs no ZAP, so `peer_role` is None there: what proves the daemon on a client
socket is the pinned key, not a label.

Measured on this machine (2 cores shared with other test runs, load average about 2.4; pyzmq 27.3, libzmq
4.3.5, CPython 3.11; DEALER to ROUTER over tcp://127.0.0.1 with `transport.new_socket` options; 7 interleaved
rounds, best and median):

- small-message (16 B) round trip, 2000 per round: plain 31 µs best, 46 µs median; CURVE 32 µs best,
  44 µs median. The CURVE cost per small message is lost in the noise (FAULTS.md: 22 vs 26 µs).
- new connection, handshake and first reply, 100 per round: plain 0.21 ms best, 0.25 ms median; CURVE with
  this `Authenticator` 0.96 ms best, 1.0 ms median (up to 1.7 ms in noisier runs).
- `ClusterKeys.derive`: 0.04 to 0.3 ms.

ZAP costs nothing per message: it runs once per connection.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import os
import secrets
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import zmq
from zmq.utils import z85

from . import protocol
from .errors import AuthenticationError
from .addresses import is_loopback, parse
from .transport import Waker

__all__ = [
    "Role",
    "load_secret",
    "write_secret_file",
    "ClusterKeys",
    "secure_server",
    "secure_client",
    "Authenticator",
    "peer_role",
    "HandshakeWatch",
    "MAX_INBOUND_FRAME_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "ZAP_DOMAIN",
]

logger = logging.getLogger(__name__)

#: Environment variables consulted by `load_secret`, after its explicit arguments.
SECRET_ENV = "LUCIDITY_SECRET"
SECRET_FILE_ENV = "LUCIDITY_SECRET_FILE"
#: Shortest secret accepted, in bytes (after stripping whitespace).
MIN_SECRET_BYTES = 16
#: Largest secret file read, in bytes; anything bigger is not a secret file.
MAX_SECRET_FILE_BYTES = 4096
#: Bytes of randomness in a secret made by `write_secret_file` (43 characters once base64url-encoded).
NEW_SECRET_BYTES = 32
#: The ZAP domain of every lucidity listening socket; the `Authenticator` denies any other domain.
ZAP_DOMAIN = b"lucidity"
#: The endpoint where libzmq looks for the ZAP handler of a context (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: At most one denial is logged per this many seconds; the others are counted and reported with the next.
DENIAL_LOG_INTERVAL = 10.0
#: Bounds on the authenticator thread's start and stop, in seconds.
AUTHENTICATOR_START_TIMEOUT = 10.0
AUTHENTICATOR_STOP_TIMEOUT = 10.0
#: Consecutive HANDSHAKE_FAILED_NO_DETAIL events on one endpoint before `HandshakeWatch` calls it a failure.
NO_DETAIL_FAILURES = 3
#: Largest frame a listening socket takes (MAXMSGSIZE, set by `Guard.listen`), in bytes: `protocol.encode`
#: slices payloads into frames of `protocol.MAX_FRAME_BYTES`, and CURVE adds 33 bytes to each on the wire
#: (measured; the cap applies to the encrypted frame). The allowance also leaves meta frames some room.
MAX_INBOUND_FRAME_BYTES = protocol.MAX_FRAME_BYTES + 64 * 1024

# Domain separation for key derivation: `person` names the purpose and version, `salt` the role. Changing
# either changes every key of every cluster, so both are part of the wire format.
_DERIVE_PERSON = b"lucidity.curve.1"
_CURVE_KEY_BYTES = 32

_ZAP_VERSION = b"1.0"
_WATCHED_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_DISCONNECTED
)


class Role(enum.Enum):
    """Who holds a keypair: a client, a node daemon connecting to control, or a listening daemon."""

    CLIENT = "client"
    NODE = "node"
    DAEMON = "daemon"


# --------------------------------------------------------------------------------------------- the secret


def load_secret(
    secret: Optional[str] = None,
    secret_file: Optional[str] = None,
    environ: Mapping[str, str] = os.environ,
) -> Optional[bytes]:
    """Find the cluster secret: the explicit secret, else the file, else $LUCIDITY_SECRET, else the file
    named by $LUCIDITY_SECRET_FILE.

    Surrounding whitespace is stripped. An environment variable that is set but empty counts as unset (the
    shell idiom ``LUCIDITY_SECRET= cmd``); an explicit empty secret is refused as too short.

    Returns:
        The secret as bytes, or None if no source gave one.
    Raises:
        AuthenticationError: the secret file can be read or written by group or others (its mode has bits
            in 0o077): a secret others can read is not a secret. The message names the file, mode and fix.
        ValueError: the secret is shorter than `MIN_SECRET_BYTES`, or the file is not a regular file or is
            larger than any secret.
        OSError: the secret file cannot be opened (FileNotFoundError names it and where the name came from).
    """
    if secret is not None:
        return _checked(secret.encode("utf-8").strip(), "the secret given")
    if secret_file is not None:
        return _read_secret_file(secret_file, "the secret_file given")
    if environ.get(SECRET_ENV):
        return _checked(environ[SECRET_ENV].encode("utf-8").strip(), f"${SECRET_ENV}")
    if environ.get(SECRET_FILE_ENV):
        return _read_secret_file(environ[SECRET_FILE_ENV], f"${SECRET_FILE_ENV}")
    return None


def write_secret_file(path: str) -> None:
    """Write a new random secret to `path`, a new file that is 0600 from the moment it exists.

    Raises:
        FileExistsError: `path` exists (a symlink included); an existing secret is never overwritten,
            because every daemon and client of that cluster depends on it.
    """
    token = secrets.token_urlsafe(NEW_SECRET_BYTES)
    # O_EXCL creates or fails atomically and refuses symlinks; the mode is applied at creation, so there is
    # no window in which the file is readable by others (zmq.auth.create_certificates writes 0644).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise FileExistsError(
            exc.errno, f"refusing to overwrite the existing secret file {path}; remove it first if you "
            "really mean to replace this cluster's secret", path
        ) from None
    try:
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret_file(path: str, source: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, f"secret file {path} (from {source}) does not exist", path) from None
    try:
        # fstat on the open descriptor: the mode checked is the mode of the file read, symlink or not.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"secret file {path} (from {source}) is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise AuthenticationError(
                f"refusing the secret file {path} (from {source}): its mode is {mode:04o}, so group or "
                f"others can read or change it; run `chmod 600 {path}`, and consider the secret "
                "compromised if others could read it",
                path=path,
                mode=mode,
            )
        data = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"secret file {path} (from {source}) is over {MAX_SECRET_FILE_BYTES} bytes: "
                         "not a secret file")
    return _checked(data.strip(), f"secret file {path} (from {source})")


def _checked(secret: bytes, source: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{source} is {len(secret)} bytes long; a cluster secret needs at least {MIN_SECRET_BYTES}. "
            "Make one with lucidity.security.write_secret_file(path), or "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return secret


# ------------------------------------------------------------------------------------------------ the keys


@dataclass(frozen=True)
class ClusterKeys:
    """The three CURVE keypairs of a cluster, z85-encoded, all derived from its secret.

    Derivation is deterministic, so every machine that has the secret has the same keys and no key files
    are distributed. Secret keys are left out of repr.
    """

    client_public: bytes
    node_public: bytes
    daemon_public: bytes
    client_secret: bytes = field(repr=False)
    node_secret: bytes = field(repr=False)
    daemon_secret: bytes = field(repr=False)

    @classmethod
    def derive(cls, secret: bytes) -> "ClusterKeys":
        """Derive each role's keypair: secret key = blake2b(secret, person, salt=role), 32 bytes.

        Any 32 bytes are a valid Curve25519 secret key (libsodium clamps them), so no rejection sampling is
        needed. The role in the salt keeps the three keypairs independent of one another.
        """
        pairs = {}
        for role in Role:
            raw = hashlib.blake2b(
                secret, digest_size=_CURVE_KEY_BYTES, person=_DERIVE_PERSON, salt=role.value.encode("ascii")
            ).digest()
            secret_z85 = z85.encode(raw)
            pairs[role] = (zmq.curve_public(secret_z85), secret_z85)
        return cls(
            client_public=pairs[Role.CLIENT][0],
            node_public=pairs[Role.NODE][0],
            daemon_public=pairs[Role.DAEMON][0],
            client_secret=pairs[Role.CLIENT][1],
            node_secret=pairs[Role.NODE][1],
            daemon_secret=pairs[Role.DAEMON][1],
        )

    def public(self, role: Role) -> bytes:
        """The role's z85 public key (40 bytes)."""
        return {Role.CLIENT: self.client_public, Role.NODE: self.node_public,
                Role.DAEMON: self.daemon_public}[role]

    def secret_key(self, role: Role) -> bytes:
        """The role's z85 secret key (40 bytes)."""
        return {Role.CLIENT: self.client_secret, Role.NODE: self.node_secret,
                Role.DAEMON: self.daemon_secret}[role]

    def role_of(self, public_key_z85: bytes) -> Optional[Role]:
        """The role whose public key this is, or None for a key not of this cluster."""
        for role in Role:
            if secrets.compare_digest(self.public(role), public_key_z85):
                return role
        return None


def secure_server(sock: zmq.Socket[Any], keys: ClusterKeys) -> None:
    """Make a listening socket a CURVE server with the DAEMON keypair that only ZAP-admitted keys can reach.

    Call before bind. ZAP_ENFORCE_DOMAIN makes the socket fail closed: without a running `Authenticator` in
    its context, every handshake fails. MAXMSGSIZE is left to the caller.
    """
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.daemon_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.daemon_secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def secure_client(sock: zmq.Socket[Any], keys: ClusterKeys, role: Role) -> None:
    """Make a connecting socket a CURVE client with `role`'s keypair that only talks to a DAEMON key holder.

    Call before connect. Pinning the DAEMON public key is what stops an impostor daemon: without the secret
    it cannot complete the handshake.
    """
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.daemon_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public(role))
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret_key(role))


def peer_role(frame: zmq.Frame) -> Optional[Role]:
    """The role the `Authenticator` gave the sender of `frame`, or None if it has none we know.

    `frame` must come from ``recv_multipart(copy=False)`` (or ``recv(copy=False)``) on a `secure_server`
    socket; copied messages carry no metadata. None on a connecting socket and on any socket without ZAP.
    """
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:  # EINVAL: the connection has no User-Id property
        return None
    if isinstance(user_id, bytes):
        user_id = user_id.decode("ascii", "replace")
    try:
        return Role(user_id)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------- the ZAP handler


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


# ------------------------------------------------------------------------------------- handshake diagnosis


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


# -------------------------------------------------------------------------------------- one process's guard


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
