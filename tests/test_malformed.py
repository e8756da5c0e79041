"""One malformed message drops itself: it never kills a worker, a daemon or a client's I/O thread, and never
leaves a caller waiting forever (issue 11). Real daemons on 127.0.0.1; the malformed messages come from a
peer the test plays by hand, as an authenticated but buggy or hostile one would send them.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import zmq

import lucidity
from lucidity import messages, protocol
from lucidity.errors import ProtocolError
from lucidity.messages.batches import PLAIN_TASK, RESULT, RESULTS_HEAD, TASKS_HEAD
from lucidity.status import query_status

from conftest import CliCluster, free_port

CLIENT = "00" * 16
ANY = frozenset(protocol.Kind)


@pytest.fixture
def one_worker() -> Iterator[CliCluster]:
    cluster = CliCluster()
    try:
        cluster.start_control()
        cluster.start_node("n", 1)
        cluster.wait_for(1, 1)
        yield cluster
    finally:
        cluster.close()


def send(address: str, frames: list[Any]) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        sock.connect(address)
        sock.send_multipart(frames)
    finally:
        sock.close(linger=2000)
        context.term()


def tasks(change: Callable[[bytes], bytes], **options: Any) -> list[Any]:
    """A TASKS of one task with these options, its binary meta changed by `change` (the layout is
    `lucidity.messages.batches`': the task's entry ends the meta, and the CPU time ends an entry with options)."""
    spec = messages.TaskSpec(1, "d" * 24, messages.TaskMode.CALL, **options)
    return protocol.encode(protocol.Kind.TASKS, change(messages.Tasks(CLIENT, (), (spec,), (1,)).to_meta()), [b"x"])


def with_extras(meta: bytes, extras: bytes) -> bytes:
    return meta[:TASKS_HEAD.size - 4] + struct.pack("<I", len(extras)) + meta[TASKS_HEAD.size:] + extras


MALFORMED_FOR_A_WORKER = {
    "CANCEL holding lists": protocol.encode(protocol.Kind.CANCEL, {"tasks": [[1], [2]]}),
    "CANCEL holding objects": protocol.encode(protocol.Kind.CANCEL, {"tasks": [{"a": 1}]}),
    "CANCEL of a string": protocol.encode(protocol.Kind.CANCEL, {"tasks": "all"}),
    "WITHDRAW of a string": protocol.encode(protocol.Kind.WITHDRAW, {"tasks": "all"}),
    "WITHDRAW holding a float": protocol.encode(protocol.Kind.WITHDRAW, {"tasks": [1.5]}),
    "a task whose layout names no frame": tasks(lambda meta: meta[:-8] + struct.pack("<q", 0)),
    "ship entries that are not objects": tasks(lambda meta: with_extras(meta, b'{"ship": [1, 2]}')),
    "a task id of 2**63": tasks(lambda meta: meta[:-PLAIN_TASK.size] + struct.pack("<Q", 2**63)
                                + meta[8 - PLAIN_TASK.size:]),
    "a mem of 2**64 - 1": tasks(lambda meta: meta[:-24] + struct.pack("<Qdd", 2**64 - 1, 0, 0), memory=1),
    "a mode that is no mode": tasks(lambda meta: meta[:12 - PLAIN_TASK.size] + b"\7" + meta[13 - PLAIN_TASK.size:]),
    "a NaN timeout": tasks(lambda meta: meta[:-16] + struct.pack("<dd", math.nan, 0), timeout=1.0),
    "a batch cut short": tasks(lambda meta: meta[:-1]),
    "a batch in JSON": [bytes((protocol.VERSION, protocol.Kind.TASKS)),
                        b'{"client":"' + CLIENT.encode() + b'","functions":[],"tasks":[{"id":1,"fn":"f","mode":"call",'
                        b'"n":1}]}', b"x"],
    "DROP of a number": protocol.encode(protocol.Kind.DROP, {"client": 5}),
}


@pytest.mark.timeout(90)
def test_malformed_bodies_never_kill_a_worker(one_worker: CliCluster) -> None:
    worker = query_status(one_worker.address)["nodes"][0]["workers"][0]
    for name, frames in MALFORMED_FOR_A_WORKER.items():
        send(worker["address"], frames)
    with lucidity.Pool(address=one_worker.address) as pool:
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
    after = query_status(one_worker.address)["nodes"][0]["workers"]
    assert [w["pid"] for w in after] == [worker["pid"]], "the worker died of a malformed message"


@pytest.mark.timeout(90)
def test_a_join_that_names_no_endpoint_is_refused_and_clients_survive(one_worker: CliCluster) -> None:
    with lucidity.Pool(address=one_worker.address) as pool:
        assert pool.apply(abs, (-1,)) == 1
        for address in ["not an endpoint", "tcp://0.0.0.0:3031", "tcp://127.0.0.1:0;0.0.0.0:1", "tcp://[::]:1"]:
            send(one_worker.address, protocol.encode(
                protocol.Kind.JOIN, {"name": "evil", "address": address, "processes": 1, "instance": "x"}))
        names = [n["name"] for n in query_status(one_worker.address)["nodes"]]
        assert names == ["n"]
        assert pool.map(abs, range(-20, 0)) == list(range(20, 0, -1))  # the client's I/O thread lives on


class EvilNode:
    """A node daemon and its one worker, played by hand: it joins the control node, lists its worker, and
    the worker answers every batch of tasks with result entries whose status is none (9)."""

    def __init__(self, control: str) -> None:
        self.context = zmq.Context()
        self.node_address = f"tcp://127.0.0.1:{free_port()}"
        self.worker_address = f"tcp://127.0.0.1:{free_port()}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(control,), daemon=True)
        self.thread.start()

    def _run(self, control_address: str) -> None:
        control = self.context.socket(zmq.DEALER)
        node = self.context.socket(zmq.ROUTER)
        worker = self.context.socket(zmq.ROUTER)
        node.bind(self.node_address)
        worker.bind(self.worker_address)
        control.connect(control_address)
        poller = zmq.Poller()
        for sock in (control, node, worker):
            poller.register(sock, zmq.POLLIN)
        join = protocol.encode(protocol.Kind.JOIN, {"name": "evil", "address": self.node_address, "processes": 1,
                                                    "instance": "e" * 32})
        try:
            while not self.stopping.is_set():
                control.send_multipart(join)
                for sock, _ in poller.poll(200):
                    frames = sock.recv_multipart()
                    if sock is node:
                        message = protocol.decode(frames[1:], ANY)
                        if message.kind is protocol.Kind.HELLO:
                            node.send_multipart([frames[0], *protocol.encode(protocol.Kind.WORKERS, {
                                "node": "evil", "workers": [{"id": "1", "pid": 1, "address": self.worker_address}]})])
                        elif message.kind is protocol.Kind.HEARTBEAT:
                            node.send_multipart([frames[0], *protocol.encode(protocol.Kind.HEARTBEAT, {})])
                    elif sock is worker:
                        message = protocol.decode(frames[1:], ANY)
                        if message.kind is protocol.Kind.TASKS:
                            ids = [spec.id for spec in messages.Tasks.from_meta(message.meta).tasks]
                            entries = b"".join(RESULT.pack(task_id, 9, 0.0, -1, 1) for task_id in ids)  # status 9
                            worker.send_multipart([frames[0], *protocol.encode(
                                protocol.Kind.RESULTS, RESULTS_HEAD.pack(0, len(ids)) + entries, [b"x"] * len(ids))])
        finally:
            for sock in (control, node, worker):
                sock.close(linger=0)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.context.term()


@pytest.mark.timeout(90)
def test_a_result_without_status_fails_its_task_instead_of_hanging() -> None:
    cluster = CliCluster()
    evil = None
    try:
        cluster.start_control()
        evil = EvilNode(cluster.address)
        deadline = time.monotonic() + 30
        while [n["name"] for n in query_status(cluster.address, timeout=1.0)["nodes"]] != ["evil"]:
            assert time.monotonic() < deadline, "the evil node never joined"
            time.sleep(0.05)
        pool = lucidity.Pool(address=cluster.address)
        try:
            result = pool.apply_async(abs, (-1,))
            with pytest.raises(ProtocolError, match="malformed result"):
                result.get(30)
        finally:
            pool.close()
            pool.join()
    finally:
        if evil is not None:
            evil.close()
        cluster.close()
