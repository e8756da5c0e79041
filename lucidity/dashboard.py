"""The web dashboard: `lucidity control --dashboard HOST:PORT` serves one page that watches the cluster.

The page (``dashboard.html``, package data: static HTML, CSS and JavaScript, nothing fetched from elsewhere)
asks ``/api/status`` for JSON once a second and redraws itself: nodes, workers, memory against caps, tasks
per second over the last minutes, recent failures. Two threads, both daemon threads, and no shared socket::

    sampler thread --query_status (STATUS, once a second)--> control node, then each node daemon
    sampler thread --snapshot (JSON bytes, under a lock)--> HTTP threads --/api/status--> browsers

The sampler asks the cluster through `lucidity.status.query_status`, as `lucidity status` does, at the
control node's own address: nothing here reads the control daemon's internals, so the same code could run
in any process that can reach the cluster. However many browsers watch, the cluster is asked once a second,
and the history of tasks per second is the dashboard's own (`HISTORY_SECONDS`); it starts empty when the
control node starts.

Who may look: a dashboard on a loopback address is for this machine's users, like the control node's own
port without a secret; it refuses requests whose Host header is not a loopback name, so that a web page
elsewhere cannot read it through DNS rebinding. Beyond loopback it needs the cluster secret (the same rule
as the daemons' listening sockets), and then every request must carry ``?token=...``, a random token made
at start and printed once, compared in constant time.

Recent failures: a node lists the last tasks it reported failed (a worker that died, a limit broken) with
the text their clients got, and the dashboard shows those as they are. A task that raised an exception is
answered by its worker straight to its client, with no copy at the node, so for those (the ``error``
outcome) it shows how many more there were since its last sample, without text.
"""

from __future__ import annotations

import collections
import hmac
import http.server
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
import urllib.parse
from importlib import resources
from typing import Any, Callable, Optional

from . import addresses
from .errors import ClusterUnavailable
from .status import query_status
from .watch import REFRESH_INTERVAL, RateMeter, failures_by_kind, kills_by_reason

logger = logging.getLogger(__name__)

__all__ = ["Dashboard", "DASHBOARD_PORT", "HISTORY_SECONDS"]

#: The port of ``--dashboard HOST`` without one.
DASHBOARD_PORT = 3080
#: How far back the chart of tasks per second goes, in seconds (one sample a second).
HISTORY_SECONDS = 300
#: How many failure events the page lists, newest first.
FAILURE_EVENTS = 50
#: Kinds of failure a node lists one by one with their text (the rest are shown as counts).
LISTED_KINDS = frozenset({"crashed", "memory", "timeout", "cpu"})
#: Seconds the sampler waits for each daemon's answer; a slower node shows as unreachable for that sample.
SAMPLE_TIMEOUT = 1.0
#: Seconds to wait for the threads when stopping.
STOP_TIMEOUT = 5.0
#: Random bytes in the access token (printed URL-safe base64).
TOKEN_BYTES = 24
#: Host names a loopback dashboard answers to (and loopback IP literals).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
#: The page may run its own inline script and style and talk to this server; nothing else.
CONTENT_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Dashboard:
    """The dashboard's HTTP server and sampler, bound at construction and serving from `start` to `stop`.

    Args:
        listen: ``HOST:PORT`` (or ``HOST``, port `DASHBOARD_PORT`; port 0 takes a free one).
        secret: the cluster secret: needed to listen beyond loopback, and used to ask the daemons.

    Raises:
        ValueError: `listen` is not an address, or is beyond loopback without a secret.
        OSError: the address cannot be bound (in use, not on this machine).
    """

    def __init__(self, listen: str, *, secret: Optional[bytes]) -> None:
        endpoint = addresses.bind_endpoint(listen, default_port=DASHBOARD_PORT, what="--dashboard")
        if endpoint.scheme != "tcp":
            raise ValueError(f"--dashboard {listen!r}: the dashboard listens on TCP (HOST:PORT)")
        self.is_exposed = not addresses.is_loopback(endpoint)
        if self.is_exposed and secret is None:
            raise ValueError(f"--dashboard {listen}: beyond loopback the dashboard needs the cluster secret "
                             "(--secret-file or $LUCIDITY_SECRET), and then asks for a token it prints at start; "
                             "or give a loopback address such as 127.0.0.1:3080")
        self.token: Optional[str] = secrets.token_urlsafe(TOKEN_BYTES) if self.is_exposed else None
        self._secret = secret
        host = "" if endpoint.host == "*" else endpoint.host
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, endpoint.port), _Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"--dashboard {listen}: cannot listen there: {exc.strerror}") from None
        self._server.dashboard = self
        self._page = resources.files(__package__).joinpath("dashboard.html").read_bytes()
        self._lock = threading.Lock()
        self._snapshot = json.dumps({"address": "", "error": "starting", "nodes": [], "history": [],
                                     "failures": []}).encode()
        self._history: collections.deque[tuple[float, float]] = collections.deque(maxlen=HISTORY_SECONDS)
        self._failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=FAILURE_EVENTS)
        self._seen_failures: dict[tuple[str, str], set[tuple[Any, Any, Any]]] = {}
        self._last_failures: dict[tuple[str, str], dict[str, int]] = {}
        self._meter = RateMeter()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Where to point a browser (with the token, when one is needed)."""
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{shown}:{port}/{query}"

    def start(self, control_address: str) -> None:
        """Serve, and sample the cluster whose control node listens at `control_address`, in daemon threads."""
        control = addresses.parse(control_address)
        if control.is_wildcard:  # the control node's own wildcard bind: ask it on loopback
            control = control.with_host("::1" if control.host == "::" else "127.0.0.1")
        self._threads = [threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True),
                         threading.Thread(target=self._sample_forever, args=(control.zmq,), name="dashboard-sampler",
                                          daemon=True)]
        for thread in self._threads:
            thread.start()
        logger.info("dashboard at %s", self.url if self.token is None else self.url.split("?")[0])

    def stop(self) -> None:
        """Stop serving and sampling; returns once both threads ended (or `STOP_TIMEOUT` passed)."""
        self._stopping.set()
        if self._threads:
            self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
        self._threads = []

    def attach(self, control_address: str) -> Callable[[], None]:
        """`start`, returning `stop`: the shape of the control daemon's ``on_serving`` hook."""
        self.start(control_address)
        return self.stop

    # -- sampling ----------------------------------------------------------------------------------------

    def _sample_forever(self, control_address: str) -> None:
        next_sample = time.monotonic()
        while not self._stopping.wait(max(0.0, next_sample - time.monotonic())):
            next_sample = max(next_sample + REFRESH_INTERVAL, time.monotonic())
            try:
                snapshot = self._sample(control_address)
            except Exception:  # a bug here must not end the thread: the page would freeze without saying why
                logger.exception("dashboard: sampling the cluster failed")
                continue
            with self._lock:
                self._snapshot = snapshot

    def _sample(self, control_address: str) -> bytes:
        now = time.monotonic()
        try:
            report = query_status(control_address, SAMPLE_TIMEOUT, self._secret)
        except ClusterUnavailable as exc:
            return json.dumps({"address": control_address, "error": str(exc), "nodes": [],
                               "history": list(self._history), "failures": list(self._failures)}).encode()
        rates = self._meter.update(report, now)
        wall = time.time()
        self._history.append((wall, sum(rates.values())))
        report["nodes"] = sorted(report.get("nodes", []), key=lambda n: str(n.get("name")))
        for node in report["nodes"]:
            if "error" not in node:
                node["rate"] = rates.get(node["name"], 0.0)
                node["failures"] = failures_by_kind(node)
                node["kills"] = kills_by_reason(node)
                self._note_failures(node, wall)
        report["history"] = list(self._history)
        report["failures"] = list(self._failures)
        report["error"] = None
        return json.dumps(report).encode()

    def _note_failures(self, node: dict[str, Any], wall: float) -> None:
        """Record a node's new failures as events: those it lists with their text, one each, and the growth
        of its other failure counts since the last sample (tasks that raised: their text is the client's)."""
        key = (str(node["name"]), str(node.get("instance", "")))
        before = self._last_failures.get(key)
        now = dict(node["failures"])
        listed = [f for f in node.get("recent_failures") or () if isinstance(f, dict)]
        seen = self._seen_failures.get(key, set())
        for failure in reversed(listed):  # oldest first, so that the newest ends at the top
            mark = (failure.get("time"), failure.get("task"), failure.get("pid"))
            if mark not in seen:
                self._failures.appendleft({"time": failure.get("time", wall), "node": key[0],
                                           "kind": failure.get("reason", "failed"), "count": 1,
                                           "message": str(failure.get("message", ""))})
        if before is not None:
            for kind, count in now.items():
                grown = count - before.get(kind, 0)
                if grown > 0 and (not listed or kind not in LISTED_KINDS):
                    self._failures.appendleft({"time": wall, "node": key[0], "kind": kind, "count": grown})
        self._seen_failures[key] = {(f.get("time"), f.get("task"), f.get("pid")) for f in listed}
        self._last_failures = {k: v for k, v in self._last_failures.items() if k[0] != key[0]}
        self._last_failures[key] = now

    # -- serving -----------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        with self._lock:
            return self._snapshot

    def page(self) -> bytes:
        return self._page

    def allows(self, host_header: Optional[str], query: dict[str, list[str]]) -> bool:
        """Whether a request may see the dashboard: the token beyond loopback, a loopback Host on loopback."""
        if self.token is not None:
            given = (query.get("token") or [""])[0]
            return hmac.compare_digest(given.encode(), self.token.encode())
        return _is_loopback_host(host_header)


def _is_loopback_host(host_header: Optional[str]) -> bool:
    if not host_header:
        return False
    host = urllib.parse.urlsplit(f"//{host_header}").hostname or ""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    dashboard: Dashboard


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "lucidity-dashboard"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        dashboard = self.server.dashboard
        if not dashboard.allows(self.headers.get("Host"), urllib.parse.parse_qs(url.query)):
            self._reply(403, b"forbidden: this dashboard needs the token printed when its control node started "
                             b"(?token=...)\n", "text/plain; charset=utf-8")
        elif url.path in ("/", "/index.html"):
            self._reply(200, dashboard.page(), "text/html; charset=utf-8")
        elif url.path == "/api/status":
            self._reply(200, dashboard.snapshot(), "application/json")
        else:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8")

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CONTENT_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("dashboard %s: " + format, self.address_string(), *args)
