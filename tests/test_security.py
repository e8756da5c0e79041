"""Security against real daemons: who may run code, and what a wrong or missing secret gets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

import lucidity
from lucidity import security

from helpers import CliCluster
from tasks import identity

SECRET = "correct horse battery staple, a cluster secret"
WRONG = "not the secret of this cluster, though long enough"


def write_marker(path):
    with open(path, "w") as marker:
        marker.write("ran")
    return os.getpid()


@pytest.fixture
def secret_cluster(tmp_path):
    """A control node and a node of two workers that require the cluster secret, on 127.0.0.1."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    with CliCluster() as cluster:
        cluster.env["LUCIDITY_TEST_HOOKS"] = "1"
        cluster.start_control("--secret-file", str(secret_file))
        cluster.start_node("n1", 2, "--secret-file", str(secret_file))
        cluster.wait_for(1, workers_per_node=2, secret=SECRET.encode())
        yield cluster


def test_the_right_secret_runs_tasks(secret_cluster):
    with lucidity.Pool(address=secret_cluster.address, secret=SECRET) as pool:
        assert pool.map(identity, range(20)) == list(range(20))


def test_the_secret_from_the_environment(secret_cluster, monkeypatch):
    monkeypatch.setenv("LUCIDITY_SECRET", SECRET)
    with lucidity.Pool(address=secret_cluster.address) as pool:
        assert pool.apply(identity, (7,)) == 7


@pytest.mark.parametrize("secret", [WRONG, None], ids=["wrong-secret", "no-secret"])
def test_a_client_without_the_secret_is_refused_and_nothing_runs(secret_cluster, tmp_path, monkeypatch, secret):
    monkeypatch.delenv("LUCIDITY_SECRET", raising=False)
    marker = tmp_path / "marker"
    started = time.monotonic()
    with pytest.raises(lucidity.AuthenticationError) as caught:
        with lucidity.Pool(address=secret_cluster.address, secret=secret, connect_timeout=20) as pool:
            pool.apply(write_marker, (str(marker),))
    assert time.monotonic() - started < 10
    assert "secret" in str(caught.value)
    assert not marker.exists()
    # The daemons keep serving the client that holds the secret.
    with lucidity.Pool(address=secret_cluster.address, secret=SECRET) as pool:
        pool.apply(write_marker, (str(marker),))
    assert marker.exists()


def test_a_stopped_authenticator_fails_closed_and_the_daemon_exits(secret_cluster, tmp_path):
    control = secret_cluster.processes["control"]
    control.send_signal(signal.SIGUSR2)
    assert control.wait(15) == 1  # a daemon without its authenticator stops rather than serve unguarded
    secret_cluster.processes.pop("control")
    node = secret_cluster.processes["n1"]
    node.send_signal(signal.SIGUSR2)
    assert node.wait(15) == 1
    secret_cluster.processes.pop("n1")


def test_the_authenticator_refuses_bad_keys_even_while_stopping(tmp_path):
    """With ZAP_ENFORCE_DOMAIN, a socket whose authenticator is gone lets nobody in (fail closed)."""
    keys = security.ClusterKeys.derive(SECRET.encode())
    context = zmq.Context()
    try:
        guard = security.Guard(context, keys)
        server = context.socket(zmq.ROUTER)
        guard.listen(server)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        guard.close()  # the authenticator is gone
        client = context.socket(zmq.DEALER)
        security.secure_client(client, keys, security.Role.CLIENT)
        watch = security.HandshakeWatch(client)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hello")
        assert not server.poll(2000)
        watch.close()
        client.close(0)
        server.close(0)
    finally:
        context.term()


def test_an_impostor_control_node_cannot_reach_the_client(tmp_path):
    """A daemon that does not hold the secret's key never completes a handshake: nothing it sends is read."""
    impostor_keys = security.ClusterKeys.derive(WRONG.encode())
    context = zmq.Context()
    impostor = context.socket(zmq.ROUTER)
    security.secure_server(impostor, impostor_keys)
    port = impostor.bind_to_random_port("tcp://127.0.0.1")
    guard = security.Guard(context, impostor_keys)
    try:
        started = time.monotonic()
        with pytest.raises(lucidity.AuthenticationError):
            lucidity.Pool(address=f"tcp://127.0.0.1:{port}", secret=SECRET, connect_timeout=20)
        assert time.monotonic() - started < 10
        assert not impostor.poll(200)  # the client's WATCH never reached it
    finally:
        guard.close()
        impostor.close(0)
        context.term()


def test_no_listening_beyond_loopback_without_a_secret():
    # RFC 5737's documentation network belongs to no machine: even a broken check could not bind it, so no
    # test listens beyond loopback here (tests/test_hosts.py checks the refusal on a test host's address).
    done = subprocess.run([sys.executable, "-m", "lucidity", "control", "--bind", "tcp://192.0.2.1:3999"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "without a cluster secret" in done.stderr and "--insecure" in done.stderr


def test_a_readable_secret_file_is_refused(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "lucidity", "control", "--bind", "tcp://127.0.0.1:0",
                           "--secret-file", str(secret_file)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "chmod 600" in done.stderr or "0644" in done.stderr


def test_lucidity_secret_writes_a_private_file(tmp_path):
    path = tmp_path / "new-secret"
    subprocess.run([sys.executable, "-m", "lucidity", "secret", str(path)], check=True, timeout=30,
                   capture_output=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert security.load_secret(secret_file=str(path))


def test_garbage_and_wrong_mechanisms_at_a_secure_port(secret_cluster):
    import socket as sockets

    host, port = secret_cluster.address[len("tcp://"):].rsplit(":", 1)
    for payload in [b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 44, os.urandom(2048), b""]:
        with sockets.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(payload)
    context = zmq.Context()
    try:
        plain = context.socket(zmq.DEALER)  # the NULL mechanism against a CURVE daemon
        plain.connect(secret_cluster.address)
        plain.send_multipart([bytes((1, 10)), b"{}"])
        assert not plain.poll(1000)
        plain.close(0)
    finally:
        context.term()
    assert secret_cluster.processes["control"].poll() is None
    with lucidity.Pool(address=secret_cluster.address, secret=SECRET) as pool:
        assert pool.apply(identity, (3,)) == 3


def test_what_counts_as_loopback():
    from lucidity.addresses import is_loopback, parse

    for address in ["ipc:///tmp/x", "inproc://x", "tcp://127.0.0.1:1", "tcp://127.1.2.3:1", "tcp://[::1]:1",
                    "tcp://localhost:1", "127.0.0.1", "[::1]:3030"]:
        assert is_loopback(parse(address)), address
    for address in ["tcp://0.0.0.0:1", "tcp://*:1", "tcp://10.0.0.1:1", "tcp://[::]:1", "tcp://[fd00::1]:1",
                    "tcp://no-such-host.invalid:1"]:
        assert not is_loopback(parse(address)), address
    # libzmq's source;destination form would bind the destination: it is not an address at all.
    for address in ["tcp://127.0.0.1:0;0.0.0.0:3032", "ws://127.0.0.1:1", "udp://127.0.0.1:1"]:
        with pytest.raises(ValueError):
            parse(address)
