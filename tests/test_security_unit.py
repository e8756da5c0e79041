"""lucidity.security with real sockets over tcp://127.0.0.1: keys, ZAP, fail-closed, impersonation, secrets.

Each test gets a fresh zmq.Context (the `net` fixture), and every wait is bounded by a poll timeout.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import Any, Iterator, Optional

import pytest
import zmq

from lucidity import transport
from lucidity.errors import AuthenticationError
from lucidity.security import (
    MIN_SECRET_BYTES,
    Authenticator,
    ClusterKeys,
    HandshakeWatch,
    Role,
    load_secret,
    peer_role,
    secure_client,
    secure_server,
    write_secret_file,
    ZAP_DOMAIN,
)

SECRET = b"the-right-cluster-secret-0123456789"
WRONG_SECRET = b"some-other-cluster-secret-987654321"
#: Bound on a refused client's HandshakeWatch reporting a reason, in seconds (row 24: "bounded time").
REPORT_WITHIN = 5.0
#: How long a server is watched for a message that must never arrive, in seconds.
SILENCE = 1.0
#: Bound on one message exchange that must succeed, in seconds.
EXCHANGE_WITHIN = 5.0

pytestmark = pytest.mark.timeout(60)


class Net:
    """A fresh context and everything opened in it, closed in the right order at teardown."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []
        self.watches: list[HandshakeWatch] = []
        self.authenticators: list[Authenticator] = []

    def socket(self, kind: int) -> zmq.Socket[Any]:
        sock = transport.new_socket(self.context, kind)
        self.sockets.append(sock)
        return sock

    def authenticator(self, keys: ClusterKeys) -> Authenticator:
        auth = Authenticator(self.context, keys)
        self.authenticators.append(auth)
        auth.start()
        return auth

    def server(self, keys: ClusterKeys, kind: int = zmq.ROUTER) -> tuple[zmq.Socket[Any], str]:
        sock = self.socket(kind)
        secure_server(sock, keys)
        return sock, transport.bind(sock, "tcp://127.0.0.1:0")

    def client(self, address: str, keys: Optional[ClusterKeys], role: Role = Role.CLIENT,
               keypair: Optional[tuple[bytes, bytes]] = None) -> tuple[zmq.Socket[Any], HandshakeWatch]:
        """A DEALER connected to `address`: CURVE with `keys` (own keypair overridden by `keypair`), or NULL."""
        sock = self.socket(zmq.DEALER)
        if keys is not None:
            secure_client(sock, keys, role)
        if keypair is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, keypair[1])
        watch = HandshakeWatch(sock)  # before connect, so that no event is missed
        self.watches.append(watch)
        sock.connect(address)
        return sock, watch

    def close(self) -> None:
        for watch in self.watches:
            watch.close()
        for auth in self.authenticators:
            auth.stop()
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def keys() -> ClusterKeys:
    return ClusterKeys.derive(SECRET)


def ms(seconds: float) -> int:
    """A poll timeout: the one place seconds become milliseconds."""
    return int(seconds * 1000)


def wait_for_reason(watch: HandshakeWatch, within: float = REPORT_WITHIN) -> Optional[str]:
    """Poll the watch's monitor until it reports a reason or `within` seconds pass."""
    deadline = time.monotonic() + within
    poller = zmq.Poller()
    poller.register(watch.fd_socket, zmq.POLLIN)
    while True:
        reason = watch.check()
        remaining = deadline - time.monotonic()
        if reason is not None or remaining <= 0:
            return reason
        poller.poll(ms(remaining))


def exchange(server: zmq.Socket[Any], client: zmq.Socket[Any]) -> list[zmq.Frame]:
    """Client sends, server receives (copy=False) and replies, client receives; returns the server's frames."""
    client.send(b"ping")
    assert server.poll(ms(EXCHANGE_WITHIN)), "the server received nothing"
    frames = server.recv_multipart(copy=False)
    server.send_multipart([frames[0], b"pong"])
    assert client.poll(ms(EXCHANGE_WITHIN)), "the client received no reply"
    assert client.recv() == b"pong"
    return frames


# ------------------------------------------------------------------------------------------------ keys


def test_derivation_is_deterministic_and_separates_roles(keys: ClusterKeys) -> None:
    again = ClusterKeys.derive(SECRET)
    assert again == keys
    other = ClusterKeys.derive(WRONG_SECRET)
    publics = {keys.public(role) for role in Role}
    assert len(publics) == 3, "each role needs its own keypair"
    assert len({keys.secret_key(role) for role in Role}) == 3
    assert publics.isdisjoint({other.public(role) for role in Role})
    for role in Role:
        assert len(keys.public(role)) == 40 and len(keys.secret_key(role)) == 40
        assert zmq.curve_public(keys.secret_key(role)) == keys.public(role)
        assert keys.role_of(keys.public(role)) is role
        assert other.role_of(keys.public(role)) is None
    assert keys.role_of(zmq.curve_keypair()[0]) is None
    assert keys.secret_key(Role.DAEMON).decode() not in repr(keys), "repr must not show secret keys"


# ------------------------------------------------------------------------------------ the right client


@pytest.mark.parametrize("role", [Role.CLIENT, Role.NODE])
def test_right_client_exchanges_and_server_sees_its_role(net: Net, keys: ClusterKeys, role: Role) -> None:
    net.authenticator(keys)
    server, address = net.server(keys)
    client, watch = net.client(address, keys, role)
    frames = exchange(server, client)
    assert frames[1].bytes == b"ping"
    assert peer_role(frames[1]) is role
    assert peer_role(frames[0]) is role  # the routing-id frame ROUTER prepends carries the metadata too
    assert wait_for_reason(watch, within=0.2) is None
    assert watch.succeeded


def test_peer_role_is_none_without_zap(net: Net) -> None:
    server = net.socket(zmq.ROUTER)
    address = transport.bind(server, "tcp://127.0.0.1:0")
    client = net.socket(zmq.DEALER)
    client.connect(address)
    frames = exchange(server, client)
    assert peer_role(frames[1]) is None


# --------------------------------------------------------------------------------- refused clients (row 24)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong_secret", "closed the connection during the CURVE handshake"),
        ("no_secret_null", "different security mechanisms"),
        ("unknown_client_key", "rejected this client's key"),
    ],
)
def test_client_without_the_secret_is_refused(net: Net, keys: ClusterKeys, case: str, expected: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    net.authenticator(keys)
    server, address = net.server(keys)
    caplog.set_level(logging.WARNING, logger="lucidity.security")
    if case == "wrong_secret":
        bad, watch = net.client(address, ClusterKeys.derive(WRONG_SECRET))
    elif case == "no_secret_null":
        bad, watch = net.client(address, None)
    else:  # the daemon's public key pinned correctly, but a keypair the cluster does not know
        bad, watch = net.client(address, keys, keypair=zmq.curve_keypair())
    bad.send(b"payload that must never arrive")
    reason = wait_for_reason(watch)
    assert reason is not None, f"no handshake failure reported within {REPORT_WITHIN} s"
    assert expected in reason and address in reason
    assert not watch.succeeded
    assert not server.poll(ms(SILENCE)), "the daemon received a message from a client without the secret"
    if case == "unknown_client_key":
        assert any("denied a connection" in r.getMessage() for r in caplog.records)
    # The daemon keeps serving the right client.
    good, _ = net.client(address, keys)
    frames = exchange(server, good)
    assert frames[1].bytes == b"ping" and peer_role(frames[1]) is Role.CLIENT


def test_denials_are_rate_limited(net: Net, keys: ClusterKeys, caplog: pytest.LogCaptureFixture) -> None:
    net.authenticator(keys)
    server, address = net.server(keys)
    caplog.set_level(logging.WARNING, logger="lucidity.security")
    watches = [net.client(address, keys, keypair=zmq.curve_keypair())[1] for _ in range(5)]
    for watch in watches:
        assert wait_for_reason(watch) is not None
    denials = [r for r in caplog.records if "denied a connection" in r.getMessage()]
    assert len(denials) == 1, "five denials within the interval must log one line"


# ----------------------------------------------------------------------------- ZAP handler gone (row 25)


def test_stopped_authenticator_fails_closed(net: Net, keys: ClusterKeys) -> None:
    """libzmq with ZAP_ENFORCE_DOMAIN and no ZAP handler fails every handshake instead of admitting anyone."""
    auth = net.authenticator(keys)
    server, address = net.server(keys)
    assert auth.is_alive()
    exchange(server, net.client(address, keys)[0])
    auth.stop()
    assert not auth.is_alive()
    late, watch = net.client(address, keys)
    late.send(b"must not arrive")
    reason = wait_for_reason(watch)
    assert reason is not None and "authenticator is not running" in reason
    assert not server.poll(ms(SILENCE))
    # A new authenticator in the same context takes the freed endpoint, and the right client gets in again.
    net.authenticator(keys)
    frames = exchange(server, net.client(address, keys)[0])
    assert peer_role(frames[1]) is Role.CLIENT


def test_second_authenticator_in_one_context_is_refused(net: Net, keys: ClusterKeys) -> None:
    net.authenticator(keys)
    with pytest.raises(zmq.ZMQError, match="another ZAP handler"):
        net.authenticator(keys)


def test_secure_server_options(net: Net, keys: ClusterKeys) -> None:
    server, _ = net.server(keys)
    assert server.getsockopt(zmq.CURVE_SERVER) == 1
    assert server.getsockopt(zmq.ZAP_ENFORCE_DOMAIN) == 1
    assert server.getsockopt(zmq.ZAP_DOMAIN) == ZAP_DOMAIN
    assert server.getsockopt(zmq.MAXMSGSIZE) == -1, "MAXMSGSIZE is the caller's to set"


# -------------------------------------------------------------------------------- impersonation (row 35)


def test_impostor_daemon_cannot_talk_to_a_client(net: Net, keys: ClusterKeys) -> None:
    """A server with another key, and no ZAP at all (the most permissive impostor), gets nothing through."""
    impostor = net.socket(zmq.DEALER)
    impostor.setsockopt(zmq.CURVE_SERVER, 1)
    impostor.setsockopt(zmq.CURVE_PUBLICKEY, keys.public(Role.DAEMON))  # claims the right public key...
    impostor.setsockopt(zmq.CURVE_SECRETKEY, ClusterKeys.derive(WRONG_SECRET).secret_key(Role.DAEMON))
    address = transport.bind(impostor, "tcp://127.0.0.1:0")
    client, watch = net.client(address, keys)
    client.send(b"task the impostor must not read")
    reason = wait_for_reason(watch)
    assert reason is not None and address in reason
    assert not watch.succeeded
    assert not impostor.poll(ms(SILENCE)), "the impostor received the client's message"
    with pytest.raises(zmq.Again):  # no authenticated connection, so nowhere to send a forged result
        impostor.send(b"forged result", zmq.NOBLOCK)
    assert not client.poll(ms(SILENCE)), "the client received a message from the impostor"


# ------------------------------------------------------------------------------------------------ secrets


def test_load_secret_precedence(tmp_path: Any) -> None:
    files = {}
    for name in ("arg", "env"):
        path = tmp_path / f"{name}.secret"
        write_secret_file(str(path))
        files[name] = str(path)
    arg_file_secret = open(files["arg"], "rb").read().strip()
    env_file_secret = open(files["env"], "rb").read().strip()
    explicit, from_env = "  explicit-secret-0123456789  ", "environment-secret-0123456789"
    environ = {"LUCIDITY_SECRET": from_env, "LUCIDITY_SECRET_FILE": files["env"]}

    assert load_secret(explicit, files["arg"], environ) == b"explicit-secret-0123456789"
    assert load_secret(None, files["arg"], environ) == arg_file_secret
    assert load_secret(None, None, environ) == from_env.encode()
    assert load_secret(None, None, {"LUCIDITY_SECRET_FILE": files["env"]}) == env_file_secret
    assert load_secret(None, None, {"LUCIDITY_SECRET": "", "LUCIDITY_SECRET_FILE": files["env"]}) == env_file_secret
    assert load_secret(None, None, {}) is None
    assert len(arg_file_secret) >= MIN_SECRET_BYTES and arg_file_secret != env_file_secret


def test_group_or_world_readable_secret_file_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "loose.secret"
    path.write_text("a-secret-long-enough-0123456789\n")
    os.chmod(path, 0o644)
    with pytest.raises(AuthenticationError) as info:
        load_secret(secret_file=str(path), environ={})
    text = str(info.value)
    assert str(path) in text and "0644" in text and "chmod 600" in text
    assert info.value.mode == 0o644  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationError):  # the same through the environment
        load_secret(environ={"LUCIDITY_SECRET_FILE": str(path)})
    os.chmod(path, 0o600)
    assert load_secret(secret_file=str(path), environ={}) == b"a-secret-long-enough-0123456789"


def test_write_secret_file_is_private_from_creation_and_never_overwrites(tmp_path: Any) -> None:
    path = str(tmp_path / "cluster.secret")
    write_secret_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = open(path, "rb").read()
    assert len(first.strip()) >= MIN_SECRET_BYTES
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_secret_file(path)
    assert open(path, "rb").read() == first
    other = str(tmp_path / "other.secret")
    write_secret_file(other)
    assert open(other, "rb").read() != first


def test_short_secrets_are_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        load_secret("too-short", environ={})
    with pytest.raises(ValueError, match="at least 16"):
        load_secret("", environ={})
    with pytest.raises(ValueError, match="at least 16"):
        load_secret(environ={"LUCIDITY_SECRET": "  fifteen-bytes  "})
    path = tmp_path / "short.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"short\n")
    os.close(fd)
    with pytest.raises(ValueError, match="at least 16"):
        load_secret(secret_file=str(path), environ={})
    assert load_secret("exactly-16-bytes", environ={}) == b"exactly-16-bytes"
