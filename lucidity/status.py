"""The status client: ask a cluster's control node for its nodes, then each node for its workers.

Used by `lucidity status`, by tests, and by anything that wants to look at a cluster; it imports no face
and no daemon. A daemon that does not answer within the timeout is reported, not waited for.
"""

from __future__ import annotations

from typing import Any, Optional

import zmq

from . import addresses, messages, protocol, transport
from .errors import ClusterUnavailable, ProtocolError

__all__ = ["query_status", "format_status", "STATUS_TIMEOUT"]

#: How long `lucidity status` waits for each daemon's answer, in seconds.
STATUS_TIMEOUT = 5.0


def _request(context: zmq.Context[Any], address: str, timeout: float, secret: Optional[bytes]) -> dict[str, Any]:
    sock = transport.new_socket(context, zmq.DEALER)
    if secret is not None:
        from .security import ClusterKeys, Role, secure_client

        secure_client(sock, ClusterKeys.derive(secret), Role.CLIENT)
    try:
        sock.connect(address)
        sock.send_multipart(messages.encode(messages.Status()))
        if not sock.poll(int(timeout * 1000)):
            raise ClusterUnavailable(f"no answer from {address} within {timeout:g} s")
        try:
            message = protocol.decode(sock.recv_multipart(), frozenset({protocol.Kind.STATUS_REPLY}))
            reply = messages.status_reply(message.meta)
            # The report as checked: whatever format_status reads is there and of its type.
            return reply.to_meta()
        except ProtocolError as exc:
            raise ClusterUnavailable(f"{address} answered with a malformed status: {exc}") from exc
    finally:
        sock.close(linger=0)


def _request_any(context: zmq.Context[Any], address: str, timeout: float, secret: Optional[bytes]) -> dict[str, Any]:
    """`_request` to each address a name stands for, until one answers (ValueError: not an address)."""
    endpoint = addresses.parse(address)
    try:
        candidates = addresses.resolve(endpoint)
    except OSError as exc:
        raise ClusterUnavailable(f"cannot resolve {endpoint.host}: {exc}") from None
    for candidate in candidates[:-1]:
        try:
            return _request(context, candidate.zmq, timeout, secret)
        except ClusterUnavailable:
            continue
    return _request(context, candidates[-1].zmq, timeout, secret)


def query_status(address: str, timeout: float = STATUS_TIMEOUT, secret: Optional[bytes] = None) -> dict[str, Any]:
    """Ask the control node for its nodes, then each node for its workers and task counts.

    Raises:
        ValueError: `address` is not an address.
        ClusterUnavailable: the control node did not answer.
    """
    context = transport.new_context()
    try:
        report = _request_any(context, address, timeout, secret)
        nodes = []
        for entry in report.get("nodes", []):
            try:
                nodes.append(_request_any(context, entry["address"], timeout, secret))
            except (ClusterUnavailable, ValueError) as exc:
                nodes.append({"name": entry.get("name"), "address": entry.get("address"), "error": str(exc),
                              "workers": []})
        report["nodes"] = nodes
        return report
    finally:
        context.term()


def format_status(report: dict[str, Any]) -> str:
    """The status report as a table for people."""
    nodes = report.get("nodes", [])
    lines = [f"cluster {report.get('address')}: {len(nodes)} node(s)"]
    for node in nodes:
        if "error" in node:
            lines.append(f"node {node['name']}  {node['address']}  UNREACHABLE: {node['error']}")
            continue
        lines.append(f"node {node['name']}  {node['address']}  workers {len(node['workers'])}  "
                     f"running {node['running']}  tasks done {node['tasks_done']}  "
                     f"crashed {node['tasks_crashed']}  clients {node['clients']}")
        for worker in node["workers"]:
            task = f"  task {worker['task']}" if worker.get("task") is not None else ""
            cap = f"cap {worker['cap'] / 2**20:.0f} MiB  " if worker.get("cap") else ""
            lines.append(f"  worker {worker['pid']:>7}  {worker['state']:<8}  RSS {worker['rss'] / 2**20:7.1f} MiB  "
                         f"peak {worker.get('peak', 0) / 2**20:7.1f} MiB  {cap}tasks done {worker['tasks_done']}{task}")
    return "\n".join(lines)
