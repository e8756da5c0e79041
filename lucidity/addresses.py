"""Addresses: the forms people write, what a daemon binds, what it tells others, and every record of a name.

People write an address in many ways (``tcp://10.0.0.2:3030``, ``10.0.0.2:3030``, ``[fd00::2]:3030``, a bare
``control.internal``, the original project's ``http://10.0.0.2:3030/``); ZeroMQ takes one. `parse` accepts
them all, refuses anything else with one line (a ValueError; the CLI prints it and exits 2), and gives an
`Endpoint` whose `zmq` form is what sockets see. Nothing else in lucidity picks addresses apart.

Two questions about where a peer is are answered here as well, without I/O beyond name resolution:

- which addresses a name stands for (`resolve`: every A and AAAA record, so a client tries each, and a
  name asked again later finds a control node that moved, as a restarted pod or a fly machine does);
- what a daemon bound to a wildcard (``[::]``, ``0.0.0.0``, ``*``) should tell others (`advertised_host`):
  the address of its interface that routes to the control node, as dask's ``--contact-address`` and ray's
  ``--node-ip-address`` decide, unless the operator says (``--advertise``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import NamedTuple, Optional

__all__ = ["Endpoint", "parse", "bind_endpoint", "resolve", "advertised_host", "is_loopback", "parse_port_range",
           "CONTROL_PORT", "FORMS"]

#: The control node's port when an address names only a host.
CONTROL_PORT = 3030
#: What `parse` accepts, for error messages.
FORMS = "tcp://HOST:PORT, HOST:PORT, [IPv6]:PORT, HOST, http://HOST:PORT/, or ipc://PATH"
WILDCARDS = frozenset({"*", "0.0.0.0", "::"})
# A DNS name (underscores too: fly's _api.internal), an IPv4 or IPv6 literal (with a zone), or a wildcard.
_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")


class Endpoint(NamedTuple):
    """One parsed address: ``tcp`` with a host and port, or ``ipc``/``inproc`` with a path.

    A NamedTuple rather than a dataclass: workers parse their bind address, and dataclasses would cost
    each worker start the import of `inspect`.
    """

    scheme: str
    host: str = ""  # without brackets; "*" for the wildcard
    port: int = 0
    path: str = ""

    @property
    def zmq(self) -> str:
        """The form ZeroMQ takes: tcp://HOST:PORT, tcp://[V6]:PORT or ipc://PATH."""
        if self.scheme != "tcp":
            return f"{self.scheme}://{self.path}"
        return f"tcp://{_bracketed(self.host)}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.scheme == "tcp" and self.host in WILDCARDS

    @property
    def is_literal(self) -> bool:
        """An IP address or wildcard, nothing to resolve."""
        return self.scheme != "tcp" or self.host in WILDCARDS or _ip(self.host) is not None

    def with_host(self, host: str) -> "Endpoint":
        return self._replace(host=host)

    def __str__(self) -> str:
        return self.zmq


def parse(text: str, *, default_port: Optional[int] = CONTROL_PORT, what: str = "address",
          allow_port_zero: bool = False) -> Endpoint:
    """An address in any of the `FORMS`, or ValueError with one line saying what is wrong.

    ``default_port`` is the port of a bare host (None: a port is required). ``allow_port_zero`` is for
    binds, where port 0 means "any free port".
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, not {type(text).__name__}")
    original = text
    text = text.strip()
    if text.startswith(("ipc://", "inproc://")):
        scheme, path = text.split("://", 1)
        if not path or any(c in path for c in "\0;"):
            raise ValueError(f"{what} {original!r} has no usable path")
        return Endpoint(scheme, path=path)
    if text.startswith("http://"):
        text = text[len("http://"):].rstrip("/")
    elif text.startswith("tcp://"):
        text = text[len("tcp://"):]
    elif "://" in text:
        raise ValueError(f"{what} {original!r}: unknown scheme {text.split('://', 1)[0]!r}; expected {FORMS}")
    host, port_text = _split_host_port(text, original, what)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{what} {original!r} has no port; expected {FORMS}")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"{what} {original!r}: the port {port_text!r} is not a number")
        port = int(port_text)
        if not (1 if not allow_port_zero else 0) <= port <= 65535:
            lowest = 0 if allow_port_zero else 1
            raise ValueError(f"{what} {original!r}: port {port} is out of range ({lowest}-65535)")
    if host != "*" and _ip(host) is None and not _NAME.match(host):
        raise ValueError(f"{what} {original!r}: {host!r} is not a host name or IP address; expected {FORMS}")
    return Endpoint("tcp", host.rstrip(".") if _ip(host) is None else str(_ip(host)), port)


def _split_host_port(text: str, original: str, what: str) -> tuple[str, Optional[str]]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{what} {original!r}: no closing ']' after the IPv6 address")
        host, rest = text[1:close], text[close + 1:]
        if _ip(host) is None or _ip(host).version != 6:  # type: ignore[union-attr]
            raise ValueError(f"{what} {original!r}: {host!r} in brackets is not an IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{what} {original!r}: expected ':PORT' after the IPv6 address")
        return host, rest[1:]
    if text.count(":") > 1:  # a bare IPv6 address: no port can be told apart from it
        if _ip(text) is None:
            raise ValueError(f"{what} {original!r} is not an address; expected {FORMS}")
        return text, None
    if ":" in text:
        host, port = text.split(":", 1)
        return host, port
    if not text:
        raise ValueError(f"{what} is empty; expected {FORMS}")
    return text, None


def _ip(host: str) -> Optional["ipaddress.IPv4Address | ipaddress.IPv6Address"]:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def resolve(endpoint: Endpoint) -> list[Endpoint]:
    """Every address `endpoint` stands for: itself for a literal, else one per A/AAAA record, in the
    resolver's order. Raises OSError when the name does not resolve."""
    if endpoint.is_literal:
        return [endpoint]
    records = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    found: list[Endpoint] = []
    for _family, _type, _proto, _name, sockaddr in records:
        candidate = endpoint.with_host(str(_ip(str(sockaddr[0]).split("%")[0]) or sockaddr[0]))
        if candidate not in found:
            found.append(candidate)
    return found


def bind_endpoint(text: str, *, default_port: int, what: str = "--bind") -> Endpoint:
    """An address to listen on: a name (``localhost``, fly's ``fly-local-6pn``) becomes its first address,
    since ZeroMQ binds to addresses and interfaces, not names. Raises ValueError."""
    endpoint = parse(text, default_port=default_port, what=what, allow_port_zero=True)
    if endpoint.is_literal:
        return endpoint
    try:
        return resolve(endpoint)[0]
    except (OSError, IndexError) as exc:
        raise ValueError(f"{what} {text!r}: cannot resolve {endpoint.host!r}: {exc}") from None


def is_loopback(endpoint: Endpoint) -> bool:
    """Only this machine can reach it: ipc/inproc, 127.0.0.0/8, ::1, or a name all of whose records are
    loopback. Wildcards and names that do not resolve are not."""
    if endpoint.scheme != "tcp":
        return True
    if endpoint.is_wildcard:
        return False
    try:
        records = resolve(endpoint)
    except OSError:
        return False
    return all(_ip(r.host) is not None and _ip(r.host).is_loopback for r in records)  # type: ignore[union-attr]


def advertised_host(bound: Endpoint, control: Optional[Endpoint], advertise: Optional[str] = None) -> str:
    """The host others should use to reach a daemon bound at `bound`.

    ``advertise`` wins (``$VAR`` in it is taken from the environment: fly's machine command has no shell).
    A daemon bound to one address tells that one. A wildcard bind tells the address of the interface
    that routes to the control node (found by the kernel's routing table; no packet is sent), and loopback
    when the control node is on this machine only.
    """
    if advertise:
        host = os.path.expandvars(advertise).strip()
        if "$" in host:
            raise ValueError(f"--advertise {advertise!r}: an environment variable in it is not set")
        parsed = parse(host, what="--advertise")
        return parsed.host
    if not bound.is_wildcard:
        return bound.host
    if control is None or control.scheme != "tcp":
        return "127.0.0.1"
    try:
        targets = resolve(control)
    except OSError:
        targets = []
    for target in targets:
        address = _ip(target.host)
        if address is None:
            continue
        if address.version == 6 and bound.host == "0.0.0.0":
            continue  # an IPv4-only bind cannot be reached over IPv6
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((str(address), target.port or CONTROL_PORT))
            except OSError:
                continue
            local = str(probe.getsockname()[0]).split("%")[0]
        return local
    return "127.0.0.1" if control is None or is_loopback(control) else socket.gethostname()


def parse_port_range(text: str) -> tuple[int, int]:
    """``LO-HI`` (inclusive) or one port, or ValueError."""
    low, sep, high = text.strip().partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise ValueError(f"port range {text!r}: expected LO-HI, e.g. 40000-40099")
    first, last = int(low), int(high) if sep else int(low)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"port range {text!r}: expected 1 <= LO <= HI <= 65535")
    return first, last
