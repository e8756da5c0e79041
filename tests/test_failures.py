"""Failures a user meets on the embedded cluster: crashes, bad input, a killed owner, garbage on the wire."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
import zmq

import lucidity
from lucidity import protocol
from lucidity.status import query_status

from helpers import CliCluster, wait_until
from tasks import identity


def pid_of_worker(_=None):
    return os.getpid()


def exit_hard(code):
    os._exit(code)


def segfault():
    ctypes.string_at(0)


def abort():
    os.abort()


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def raise_base(kind):
    raise kind("raised in the task")


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@pytest.fixture(scope="module")
def cluster():
    with lucidity.LocalCluster(processes=2) as local:
        yield local


@pytest.fixture
def pool(cluster):
    with lucidity.Pool(address=cluster.address) as p:
        yield p


def workers(cluster):
    return sorted(w["pid"] for n in query_status(cluster.address)["nodes"] for w in n["workers"])


def wait_workers(cluster, count, timeout=15.0):
    wait_until(lambda: len(workers(cluster)) == count, timeout, f"the worker count to return to {count}")


@pytest.mark.parametrize("crash, expected_code, expected_signal", [
    ((exit_hard, (3,)), 3, None),
    ((segfault, ()), None, signal.SIGSEGV),
    ((abort, ()), None, signal.SIGABRT),
    ((kill_self, ()), None, signal.SIGKILL),
])
def test_a_crashing_task_fails_alone_and_the_pool_keeps_serving(cluster, pool, crash, expected_code, expected_signal):
    function, args = crash
    slow = [pool.apply_async(sleep_then, (0.3, i)) for i in range(2)]
    with pytest.raises(lucidity.WorkerCrashed) as caught:
        pool.apply(function, args)
    error = caught.value
    assert error.exit_code == expected_code and error.signal == expected_signal
    assert error.node == "local" and str(error.pid) in str(error)
    assert function.__name__ in str(error)
    assert [r.get(timeout=30) for r in slow] == [0, 1]
    assert pool.map(identity, range(100), chunksize=1) == list(range(100))
    wait_workers(cluster, 2)


CRASHES = [(exit_hard, (3,)), (segfault, ()), (abort, ()), (kill_self, ())]


@pytest.mark.timeout(300)
def test_100_crashes_of_every_kind_interleaved_with_100_normal_tasks(cluster, pool):
    results = []
    for i in range(100):
        results.append(("ok", i, pool.apply_async(identity, (i,))))
        function, args = CRASHES[i % len(CRASHES)]
        results.append(("crash", function.__name__, pool.apply_async(function, args)))
    crashed = 0
    for kind, expected, result in results:
        if kind == "ok":
            assert result.get(timeout=120) == expected
        else:
            with pytest.raises(lucidity.WorkerCrashed, match=expected):
                result.get(timeout=120)
            crashed += 1
    assert crashed == 100
    wait_workers(cluster, 2)
    assert pool.map(identity, range(50), chunksize=1) == list(range(50))


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt, BaseException, GeneratorExit])
def test_base_exceptions_are_the_tasks_own(pool, kind):
    before = pool.apply(pid_of_worker)
    with pytest.raises(kind, match="raised in the task"):
        pool.apply(raise_base, (kind,))
    assert pool.map(identity, range(10)) == list(range(10))
    assert before in {pool.apply(pid_of_worker) for _ in range(10)}  # the workers survived


def test_unpicklable_argument_fails_at_submit_and_nothing_is_sent(cluster, pool):
    done_before = sum(n["tasks_done"] for n in query_status(cluster.address)["nodes"])
    generator = (i for i in range(3))
    with socket.socket() as sock:
        # The pickler's own exception (TypeError here, as multiprocessing raises), before anything is sent.
        with pytest.raises(TypeError, match="socket"):
            pool.apply_async(identity, (sock,))
        with pytest.raises(TypeError, match="generator"):
            pool.map(identity, [1, 2, generator, 4])
        with pytest.raises(TypeError, match="generator"):
            pool.apply_async(lambda: generator)
    assert sum(n["tasks_done"] for n in query_status(cluster.address)["nodes"]) == done_before
    assert pool.apply(identity, (5,)) == 5


def test_unloadable_result_fails_that_task_alone(pool):
    from multiprocessing.pool import MaybeEncodingError

    with pytest.raises(MaybeEncodingError):
        pool.apply(iter_generator)
    assert pool.apply(identity, (1,)) == 1


def iter_generator():
    return (i for i in range(3))


OWNER = textwrap.dedent("""
    import os, sys, psutil, lucidity
    pool = lucidity.Pool(2)
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    print(" ".join(map(str, pids)), flush=True)
    pool.apply(os.getpid)
    sys.stdin.read()
""")


def test_sigkilled_owner_leaves_no_process_behind():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = owner.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 4  # the node daemon (the control node too), its worker template, two workers
        owner.kill()
        owner.wait(10)
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=15)
        assert not alive, f"still running after the owner was killed: {alive}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)


def test_garbage_at_every_daemon_port_is_dropped(cli_cluster: CliCluster):
    report = query_status(cli_cluster.address)
    addresses = [cli_cluster.address] + [n["address"] for n in report["nodes"]]
    rng = random.Random(7)
    with lucidity.Pool(address=cli_cluster.address) as pool:
        # Real work runs all along, interleaved with the garbage.
        work = pool.map_async(identity, range(3000), chunksize=1)
        _send_garbage(addresses, rng)
        assert work.get(timeout=120) == list(range(3000))
    # Every daemon is alive and real work is correct.
    for proc in cli_cluster.processes.values():
        assert proc.poll() is None
    with lucidity.Pool(address=cli_cluster.address) as pool:
        assert pool.map(identity, range(200), chunksize=3) == list(range(200))
    assert len(query_status(cli_cluster.address)["nodes"]) == 2


def _send_garbage(addresses, rng):
    """10,000 pieces of garbage per daemon port: raw bytes over TCP, and well-framed nonsense."""
    # Raw bytes over TCP: not even a ZMTP greeting.
    for address in addresses:
        host, port = address[len("tcp://"):].rsplit(":", 1)
        for _ in range(500):
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(rng.randbytes(rng.randint(1, 4096)))
    # Well-framed ZeroMQ messages with bad envelopes.
    context = zmq.Context()
    bad_messages = [
        [b"x"], [b"", b""], [bytes((99, 3)), b"{}"], [bytes((protocol.VERSION, 250)), b"{}"],
        [bytes((protocol.VERSION, protocol.Kind.JOIN)), b"not json"],
        [bytes((protocol.VERSION, protocol.Kind.JOIN)), b"[1,2]"],
        [bytes((protocol.VERSION, protocol.Kind.JOIN)), b'{"name": 3}'],
        [bytes((protocol.VERSION, protocol.Kind.RESULTS)), b'{"results": []}'],
        [bytes((protocol.VERSION, protocol.Kind.ABANDON)), b'{"client": "zz-not-hex"}'],
        [rng.randbytes(2), rng.randbytes(100), rng.randbytes(10)],
    ]
    try:
        for address in addresses:
            sock = context.socket(zmq.DEALER)
            sock.connect(address)
            for _ in range(950):
                for message in bad_messages:
                    sock.send_multipart(message)
            sock.close(linger=5000)
    finally:
        context.term()


def environment_seen():
    import sys

    return os.getcwd(), os.environ.get("LUCIDITY_TEST_VARIABLE"), list(sys.path)


def test_embedded_workers_inherit_cwd_sys_path_and_environment(tmp_path, monkeypatch):
    extra = tmp_path / "on-the-path"
    extra.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUCIDITY_TEST_VARIABLE", "inherited")
    monkeypatch.syspath_prepend(str(extra))
    with lucidity.Pool(1) as pool:
        cwd, variable, path = pool.apply(environment_seen)
    assert cwd == str(tmp_path)
    assert variable == "inherited"
    assert str(extra) in path


def test_a_cluster_of_another_protocol_version_is_named_at_once():
    """A client meeting a control node of another release fails with the reason, not a bare timeout."""
    context = zmq.Context()
    fake = context.socket(zmq.ROUTER)
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer_with_version_99():
        while not stop.is_set():
            if fake.poll(50):
                identity, *_ = fake.recv_multipart()
                fake.send_multipart([identity, bytes((99, protocol.Kind.NODES)), b'{"nodes": [], "instance": "x"}'])

    thread = threading.Thread(target=answer_with_version_99, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(lucidity.ClusterUnavailable, match="protocol version 99"):
            lucidity.Pool(address=f"tcp://127.0.0.1:{port}", connect_timeout=20)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        thread.join(5)
        fake.close(0)
        context.term()


def test_a_worker_that_cannot_read_a_batch_says_so(cluster, pool):
    """A batch a worker refuses is answered with the reason (the client then fails the tasks it sent with
    it), instead of being dropped while the sender waits for results that never come."""
    import uuid

    from lucidity import messages

    node = query_status(cluster.address)["nodes"][0]
    context = zmq.Context()
    try:
        daemon = context.socket(zmq.DEALER)
        daemon.connect(node["address"])
        daemon.send_multipart(protocol.encode(protocol.Kind.HELLO, {"client": uuid.uuid4().hex}))
        assert daemon.poll(10_000)
        workers = protocol.decode(daemon.recv_multipart(), frozenset({protocol.Kind.WORKERS})).meta["workers"]
        worker = context.socket(zmq.DEALER)
        worker.connect(workers[0]["address"])
        batch = messages.Tasks(uuid.uuid4().hex, (), (messages.TaskSpec(1, "0" * 24, messages.TaskMode.CALL),),
                               ([0, 10**9],))
        worker.send_multipart(messages.encode(batch, [b"x"]))
        assert worker.poll(10_000)
        reply = protocol.decode(worker.recv_multipart(), frozenset({protocol.Kind.REFUSED}))
        assert "outside its frame" in reply.meta["reason"]
        for sock in (daemon, worker):
            sock.close(0)
    finally:
        context.term()
    assert pool.apply(identity, (2,)) == 2
