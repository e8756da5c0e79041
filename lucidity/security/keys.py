"""CURVE keys derived from the cluster secret, one keypair per `Role`, and the socket options that use them.

Roles. CLIENT is a client (and a nested client inside a worker); NODE is a node daemon connecting to the
control node; DAEMON is what every listening socket (control, node daemons, workers) presents, and what
every connecting socket pins. All three keypairs come from the one secret, so anyone holding the secret can
take any role: roles label honest peers so that a receiver can refuse, say, a node-only message from a
client. They are not a privilege boundary among holders of the secret.

A connecting socket pins the DAEMON public key (`secure_client`): CURVE's HELLO is encrypted to it, so an
impostor without the DAEMON secret key never completes a handshake and is never sent anything. A listening
socket (`secure_server`) needs the ZAP handler (`lucidity.security.zap`) to check the client's key, and
sets ZAP_ENFORCE_DOMAIN so that without a handler nobody gets in (libzmq's default is to let everyone in).
`peer_role` reads back the role the handler gave a connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import zmq
from zmq.utils import z85

__all__ = ["Role", "ClusterKeys", "secure_server", "secure_client", "peer_role", "ZAP_DOMAIN"]

#: The ZAP domain of every lucidity listening socket; the ZAP handler denies any other domain.
ZAP_DOMAIN = b"lucidity"

# Domain separation for key derivation: `person` names the purpose and version, `salt` the role. Changing
# either changes every key of every cluster, so both are part of the wire format.
_DERIVE_PERSON = b"lucidity.curve.1"
_CURVE_KEY_BYTES = 32


class Role(enum.Enum):
    """Who holds a keypair: a client, a node daemon connecting to control, or a listening daemon."""

    CLIENT = "client"
    NODE = "node"
    DAEMON = "daemon"


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
        import hashlib  # here: it loads OpenSSL, 2 ms of the start-up of every process without a secret

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
        import secrets  # here: it imports hmac and OpenSSL, 3 ms of every process's start-up otherwise

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
