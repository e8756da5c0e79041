"""Prometheus metrics and a health check over HTTP, for both daemons (``--metrics HOST:PORT``).

Owns two things, kept apart:

- the text exposition format (version 0.0.4): `Family` and `Sample`, the `gauge`, `counter` and
  `histogram` builders, and `render` (HELP and TYPE lines, escaped label values, ``_bucket`` samples
  with cumulative ``le`` labels, ``_sum`` and ``_count``). Pure, so its tests need no socket.
- the `Exporter`: the standard library's ThreadingHTTPServer on a daemon thread, serving ``/metrics``
  and ``/health``. It does not read the daemon's state itself: the daemon's state belongs to the daemon's
  one thread, so a request is queued, the daemon's `transport.Waker` wakes its loop, and the loop answers
  (`Exporter.answer`) between two polls. A daemon whose loop is stuck therefore answers neither, which is
  what a health probe should see; one that is stopping answers 503 at once, without its loop.

What each daemon exports is decided elsewhere: `lucidity.node.nodemetrics` for a node daemon, the
control daemon's `_metric_families`. docs/monitoring.md lists every metric.

    Prometheus --GET /metrics--> HTTP thread --queue + wake--> daemon loop --families--> HTTP thread --text-->
"""

from __future__ import annotations

import collections
import json
import logging
import math
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Optional, Sequence

from .. import addresses

if TYPE_CHECKING:
    import http.server

logger = logging.getLogger(__name__)

__all__ = ["Sample", "Family", "gauge", "counter", "histogram", "render", "Exporter", "parse_metrics_address",
           "may_expose", "CONTENT_TYPE", "ANSWER_TIMEOUT"]

#: What Prometheus expects of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How long a request waits for the daemon's loop to answer, in seconds. The loop turns at least once a
#: second; a loop that does not answer in this long is stuck, and a probe should see it fail.
ANSWER_TIMEOUT = 3.0
#: Bound on joining the HTTP thread when the daemon closes, in seconds (serve_forever polls every 0.5 s).
CLOSE_TIMEOUT = 2.0

Labels = tuple[tuple[str, str], ...]
#: What a daemon says about its health: whether it serves, and a small JSON object saying why.
Health = tuple[bool, Mapping[str, Any]]


class Sample(NamedTuple):
    """One line of a family: ``name + suffix`` with labels and a value."""

    suffix: str
    labels: Labels
    value: float


@dataclass(frozen=True)
class Family:
    """A metric family: its name (counters end in ``_total``), type, help text and samples."""

    name: str
    kind: str  # "gauge", "counter" or "histogram"
    help: str
    samples: tuple[Sample, ...]


def _labels(label: Optional[str], values: Mapping[str, float] | float) -> tuple[Sample, ...]:
    if isinstance(values, (int, float)):
        return (Sample("", (), float(values)),)
    if label is None:
        raise ValueError("a family with several values needs a label name")
    return tuple(Sample("", ((label, key),), float(value)) for key, value in values.items())


def gauge(name: str, help: str, values: Mapping[str, float] | float, label: Optional[str] = None) -> Family:
    """A gauge: one value, or one sample per value of `label` (``{"idle": 3, "busy": 1}``)."""
    return Family(name, "gauge", help, _labels(label, values))


def counter(name: str, help: str, values: Mapping[str, float] | float, label: Optional[str] = None) -> Family:
    """A counter (its name ends in ``_total``): one value, or one sample per value of `label`."""
    if not name.endswith("_total"):
        raise ValueError(f"counter {name} must end in _total")
    return Family(name, "counter", help, _labels(label, values))


def histogram(name: str, help: str, bounds: Sequence[float], counts: Sequence[int], total: float) -> Family:
    """A histogram from the count in each bucket (not cumulative; one more than `bounds`, the last +Inf)."""
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"histogram {name}: {len(counts)} counts for {len(bounds)} bounds and +Inf")
    samples = []
    running = 0
    for bound, count in zip([*bounds, math.inf], counts):
        running += count
        samples.append(Sample("_bucket", (("le", _number(bound)),), running))
    samples += [Sample("_sum", (), total), Sample("_count", (), running)]
    return Family(name, "histogram", help, tuple(samples))


def render(families: Sequence[Family]) -> str:
    """The text exposition of `families`, ending in a newline."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape_label(value)}"' for key, value in sample.labels)
            lines.append(f"{family.name}{sample.suffix}{{{labels}}} {_number(sample.value)}" if labels
                         else f"{family.name}{sample.suffix} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(float(value))


# ------------------------------------------------------------------------------------------ the endpoint


def parse_metrics_address(text: str) -> addresses.Endpoint:
    """``HOST:PORT`` (also ``[V6]:PORT``, ``http://HOST:PORT/``) for ``--metrics``; ValueError if it is not."""
    endpoint = addresses.parse(text, default_port=None, what="--metrics", allow_port_zero=True)
    if endpoint.scheme != "tcp":
        raise ValueError(f"--metrics {text!r}: metrics are served over HTTP; give HOST:PORT")
    return endpoint


def may_expose(endpoint: addresses.Endpoint, secret: Optional[bytes], insecure: bool, who: str) -> bool:
    """The daemons' own rule for their port, applied to the metrics port: beyond loopback only in a cluster
    with a secret (meant to be reached from other machines), or when the operator insists (--insecure)."""
    if secret is not None or addresses.is_loopback(endpoint):
        return True
    if insecure:
        logger.warning("%s serves metrics on %s:%d without a cluster secret (--insecure): anyone who reaches the "
                       "port reads the cluster's nodes, hosts and load", who, endpoint.host, endpoint.port)
        return True
    logger.error("%s refuses to serve metrics on %s:%d without a cluster secret: without one a cluster stays on "
                 "this machine. Give --secret-file (or $LUCIDITY_SECRET), a loopback --metrics address, or "
                 "--insecure.", who, endpoint.host, endpoint.port)
    return False


class _Request:
    __slots__ = ("path", "done", "answer")

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = threading.Event()
        self.answer: Optional[tuple[int, str, bytes]] = None  # status, content type, body


def _server_classes() -> tuple[type["http.server.ThreadingHTTPServer"], type["http.server.ThreadingHTTPServer"]]:
    """The HTTP server classes for IPv4 and IPv6, made when a daemon first serves metrics: http.server
    costs a daemon about 9 ms of start-up, and most daemons never serve metrics (issue 13)."""
    import http.server

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True  # a request waiting for a stopped loop never holds the daemon's exit

    class Server6(Server):
        address_family = socket.AF_INET6

    return Server, Server6


class Exporter:
    """Serves ``/metrics`` and ``/health`` at `endpoint` for the daemon called `who`.

    Args:
        wake: wakes the daemon's loop (its Waker), which then calls `answer`.
        is_stopping: whether the daemon is stopping; read from the HTTP thread, so it must be cheap and safe.
    """

    def __init__(self, endpoint: addresses.Endpoint, who: str, wake: Callable[[], None],
                 is_stopping: Callable[[], bool]) -> None:
        self.endpoint = endpoint
        self.who = who
        self.url = ""
        self._wake = wake
        self._is_stopping = is_stopping
        self._pending: collections.deque[_Request] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._server: Optional["http.server.ThreadingHTTPServer"] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> str:
        """Bind and start serving; returns the URL of the metrics page. Raises OSError if it cannot bind."""
        import http.server

        exporter = self
        server4, server6 = _server_classes()

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "lucidity"

            def do_GET(self) -> None:  # noqa: N802 - the name http.server looks for
                status, kind, body = exporter._respond(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s metrics: " + format, exporter.who, *args)

        host = self.endpoint.host
        if host == "*":  # every interface, IPv6 and IPv4 (a dual-stack socket), or IPv4 alone without IPv6
            try:
                self._server = server6(("", self.endpoint.port), Handler)
            except OSError:
                self._server = server4(("", self.endpoint.port), Handler)
        else:
            server = server6 if ":" in host else server4
            self._server = server(("" if self.endpoint.is_wildcard else host, self.endpoint.port), Handler)
        port = self._server.server_address[1]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
        self._thread = threading.Thread(target=self._server.serve_forever, name="lucidity-metrics", daemon=True)
        self._thread.start()
        logger.info("%s serves metrics at %s and its health at /health", self.who, self.url)
        return self.url

    def _respond(self, path: str) -> tuple[int, str, bytes]:
        if path not in ("/metrics", "/health"):
            return 404, "text/plain; charset=utf-8", b"lucidity serves /metrics and /health\n"
        if self._is_stopping():
            return self._unavailable(path, "stopping")
        request = _Request(path)
        with self._lock:
            if self._closed:
                return self._unavailable(path, "stopping")
            self._pending.append(request)
        self._wake()
        if not request.done.wait(ANSWER_TIMEOUT) or request.answer is None:
            return self._unavailable(path, "stopping" if self._is_stopping() else
                                     f"the daemon's loop did not answer within {ANSWER_TIMEOUT:.0f} s")
        return request.answer

    def _unavailable(self, path: str, why: str) -> tuple[int, str, bytes]:
        if path == "/health":
            return 503, "application/json", json.dumps({"status": "unavailable", "reason": why}).encode() + b"\n"
        return 503, "text/plain; charset=utf-8", f"{self.who}: {why}\n".encode()

    def answer(self, families: Callable[[], Sequence[Family]], health: Callable[[], Health]) -> None:
        """Answer every waiting request (the daemon's thread calls this after each poll)."""
        while self._pending:
            with self._lock:
                if not self._pending:
                    return
                request = self._pending.popleft()
            try:
                if request.path == "/metrics":
                    request.answer = (200, CONTENT_TYPE, render(families()).encode())
                else:
                    healthy, body = health()
                    request.answer = (200 if healthy else 503, "application/json",
                                      json.dumps(dict(body), sort_keys=True).encode() + b"\n")
            except Exception:  # a bug of ours: the request fails (503), never the daemon
                logger.exception("%s could not answer %s", self.who, request.path)
            finally:
                request.done.set()

    def close(self) -> None:
        """Stop serving within `CLOSE_TIMEOUT`; waiting requests get 503. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = list(self._pending), collections.deque()
        for request in pending:
            request.done.set()
        if self._server is not None:
            self._server.shutdown()  # returns once serve_forever has seen the request (within its 0.5 s poll)
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT)
