"""A stand-in for fly's Machines API on 127.0.0.1 that checks every request against fly's documentation.

No machine here can reach fly.io, so `lucidity.fly` is tested against this server instead. It keeps a
small model of one app's machines (created -> started, stop, start, force delete, wait that blocks until a
state or its timeout) and, more to the point, records a *violation* for anything the real API would
refuse or that its documentation does not allow: an unknown route or method, a missing or malformed
``Authorization: Bearer`` header, a query parameter the endpoint does not take or a value outside its
enum, a create body with unknown fields or without ``config.image``, fields of the wrong type, and
requests faster than the documented rate limits. A test that ends with ``violations == []`` has shown
that the launcher only sent what fly documents.

The facts checked, and where they come from (fly.io docs, "Machines" resource reference and "Working with
the Machines API"; fly-go's flaps client for the 60 s wait bound):

- ``Authorization: Bearer <token>`` on every request.
- routes: GET/POST /v1/apps/{app}/machines; GET/POST/DELETE .../machines/{id}; GET .../{id}/wait;
  POST .../{id}/start; POST .../{id}/stop.
- list takes include_deleted, region, metadata.{key}; wait takes instance_id, timeout (integer seconds;
  the API's proxy ends requests at 60 s, so flaps sends 1..60) and state (started, stopped, suspended,
  destroyed), and needs instance_id for stopped; delete takes force (a boolean).
- create: body fields name, region, config (required, with image), lease_ttl, skip_launch, lsvd,
  skip_service_registration; the config fields the reference lists; env and metadata map strings to
  strings; init.cmd/exec/entrypoint are lists of strings; guest.memory_mb is a multiple of 256; restart
  policy is no, on-failure or always; guest and size are mutually exclusive.
- rate limits: 1 request/s per action and per app or machine, bursts of 3; Get Machine 5/s, bursts of 10.

Knobs for tests: `start_delay` (seconds a machine takes to boot, by a timer here), `seed` (machines that
already exist), `fail_next` (one scripted error answer), `rate_limit_next` (429 with Retry-After).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

#: Tokens of slack in the rate check, for thread scheduling between the client's clock and ours.
RATE_TOLERANCE = 0.15
WAIT_STATES = {"started", "stopped", "suspended", "destroyed"}
MAX_WAIT_SECONDS = 60
CREATE_FIELDS = {"name", "region", "config", "lease_ttl", "skip_launch", "lsvd", "skip_service_registration"}
CONFIG_FIELDS = {"image", "auto_destroy", "checks", "dns", "env", "files", "guest", "init", "metadata", "metrics",
                 "mounts", "processes", "restart", "schedule", "services", "size", "standbys", "statics",
                 "stop_config"}
INIT_FIELDS = {"exec", "entrypoint", "cmd", "kernel_args", "tty", "swap_size_mb"}
GUEST_FIELDS = {"cpu_kind", "gpu_kind", "host_dedication_id", "cpus", "gpus", "memory_mb", "kernel_args",
                "persist_rootfs"}
RESTART_POLICIES = {"no", "on-failure", "always"}
STARTABLE = {"stopped", "suspended", "created", "failed"}
TRANSIENT = {"starting": "started", "stopping": "stopped", "suspending": "suspended"}
_APP = r"/v1/apps/(?P<app>[^/?]+)/machines"
_ID = r"/(?P<id>[^/?]+)"
# (method, pattern) -> action; the action names the rate-limit bucket as well.
ROUTES = [
    ("GET", re.compile(f"^{_APP}$"), "list"),
    ("POST", re.compile(f"^{_APP}$"), "create"),
    ("GET", re.compile(f"^{_APP}{_ID}$"), "get"),
    ("POST", re.compile(f"^{_APP}{_ID}$"), "update"),
    ("DELETE", re.compile(f"^{_APP}{_ID}$"), "delete"),
    ("GET", re.compile(f"^{_APP}{_ID}/wait$"), "wait"),
    ("POST", re.compile(f"^{_APP}{_ID}/start$"), "start"),
    ("POST", re.compile(f"^{_APP}{_ID}/stop$"), "stop"),
]
QUERY = {"list": {"include_deleted", "region"}, "wait": {"instance_id", "timeout", "state"}, "delete": {"force"}}
LIMITS = {"get": (5.0, 10)}
DEFAULT_LIMIT = (1.0, 3)


@dataclass
class Seen:
    """One request as it arrived."""

    action: str
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    at: float
    machine_id: Optional[str] = None
    status: int = 0


@dataclass
class _Scripted:
    action: str
    status: int
    error: str
    retry_after: Optional[str] = None
    count: int = 1


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class StandIn:
    """The server. Use as a context manager; `url` is the base URL to give the launcher."""

    app: str = "lucidity-test"
    token: str = field(default_factory=lambda: "fm2_" + secrets.token_hex(16))
    start_delay: float = 0.2
    violations: list[str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._scripted: list[_Scripted] = []
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._timers: list[threading.Timer] = []
        self._closing = False
        standin = self

        class Handler(_Handler):
            owner = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # serve_forever notices shutdown() only between polls; a short poll keeps each test's teardown short.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fly-api-stand-in",
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> "StandIn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            for timer in self._timers:
                timer.cancel()
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------------------------------ knobs

    def seed(self, name: str, state: str = "started", image: str = "registry.fly.io/lucidity-test:deployment-1",
             metadata: Optional[dict[str, str]] = None, region: str = "ams") -> dict[str, Any]:
        """A machine that exists before the test, in the shape the API lists; a transient state (stopping,
        starting, suspending) reaches its end on the stand-in's timer, as on fly."""
        with self._cond:
            machine = self._new_machine(name, region, {"image": image, "metadata": metadata or {}})
            machine["state"] = state
            if state in TRANSIENT:
                self._become(machine, state, TRANSIENT[state])
            return machine

    def fail_next(self, action: str, status: int, error: str, count: int = 1) -> None:
        """Answer the next `count` requests of `action` (after they pass the checks) with this error."""
        with self._cond:
            self._scripted.append(_Scripted(action, status, error, count=count))

    def rate_limit_next(self, action: str, retry_after: str = "1", count: int = 1) -> None:
        """Answer the next `count` requests of `action` with 429 Too Many Requests and Retry-After."""
        with self._cond:
            self._scripted.append(_Scripted(action, 429, "rate limit exceeded", retry_after, count))

    def calls(self, action: str) -> list[Seen]:
        with self._cond:
            return [s for s in self.seen if s.action == action]

    def node_machines(self) -> list[dict[str, Any]]:
        with self._cond:
            return sorted((m for m in self.machines.values() if m["state"] != "destroyed"), key=lambda m: m["name"])

    # ------------------------------------------------------------------------------------------ model

    def _new_machine(self, name: str, region: str, config: dict[str, Any]) -> dict[str, Any]:
        machine_id = secrets.token_hex(7)
        machine = {
            "id": machine_id, "name": name, "state": "created", "region": region,
            "instance_id": "01" + secrets.token_hex(12).upper(),
            "private_ip": f"fdaa:0:18:a7b:196:{secrets.token_hex(2)}:{secrets.token_hex(2)}:2",
            "config": config, "image_ref": {"registry": "registry.fly.io", "repository": self.app},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "events": [],
        }
        self.machines[machine_id] = machine
        return machine

    def _become(self, machine: dict[str, Any], transient: str, final: str) -> None:
        """Enter a transient state now and the final one after `start_delay`, by a timer (caller holds the lock)."""
        machine["state"] = transient

        def arrive() -> None:
            with self._cond:
                if machine["state"] == transient:
                    machine["state"] = final
                    self._cond.notify_all()

        timer = threading.Timer(self.start_delay, arrive)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _violation(self, seen: Seen, text: str) -> None:
        self.violations.append(f"{seen.method} {seen.path}: {text}")

    def _check_rate(self, seen: Seen, identifier: str) -> bool:
        rate, burst = LIMITS.get(seen.action, DEFAULT_LIMIT)
        bucket = self._buckets.setdefault((seen.action, identifier), _Bucket(float(burst), seen.at))
        bucket.tokens = min(float(burst), bucket.tokens + (seen.at - bucket.at) * rate)
        bucket.at = seen.at
        if bucket.tokens < 1.0 - RATE_TOLERANCE:
            self._violation(seen, f"over the documented rate limit for {seen.action} on {identifier} "
                                  f"({rate:g}/s, bursts of {burst})")
            return False
        bucket.tokens -= 1.0
        return True

    def handle(self, method: str, target: str, headers: Any, raw_body: bytes) -> tuple[int, Any, dict[str, str]]:
        """Check one request and answer it: (status, JSON body, extra headers)."""
        split = urllib.parse.urlsplit(target)
        path = split.path
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        seen = Seen("?", method, path, query, None, time.monotonic())
        with self._cond:
            self.seen.append(seen)
            answer = self._answer(seen, headers, raw_body)
            seen.status = answer[0]
        if seen.action == "wait" and answer[0] == 0:  # blocks outside the handler's lock
            answer = self._wait(seen)
            seen.status = answer[0]
        return answer

    def _answer(self, seen: Seen, headers: Any, raw_body: bytes) -> tuple[int, Any, dict[str, str]]:
        auth = headers.get("Authorization") or ""
        if not re.fullmatch(r"Bearer \S+", auth):
            self._violation(seen, f"Authorization header is not 'Bearer <token>': {auth[:12]!r}...")
            return 401, {"error": "missing or malformed authorization"}, {}
        for route_method, pattern, action in ROUTES:
            match = pattern.match(seen.path)
            if match and route_method == seen.method:
                seen.action = action
                break
        else:
            self._violation(seen, "no such endpoint in the Machines API reference")
            return 404, {"error": "not found"}, {}
        params = match.groupdict()
        seen.machine_id = params.get("id")
        before = len(self.violations)
        body = self._check_body(seen, headers, raw_body)
        self._check_query(seen)
        if len(self.violations) > before:  # what the API documents as "400: check that the parameters were correct"
            return 400, {"error": "; ".join(self.violations[before:])}, {}
        if not self._check_rate(seen, seen.machine_id or params["app"]):
            return 429, {"error": "rate limit exceeded"}, {"Retry-After": "1"}
        if auth != f"Bearer {self.token}":
            return 401, {"error": "You must be authenticated to view this."}, {}
        for scripted in self._scripted:
            if scripted.action == seen.action and scripted.count > 0:
                scripted.count -= 1
                extra = {"Retry-After": scripted.retry_after} if scripted.retry_after else {}
                return scripted.status, {"error": scripted.error}, extra
        if params["app"] != self.app:
            return 404, {"error": "app not found"}, {}
        machine = self.machines.get(seen.machine_id or "")
        if seen.machine_id is not None and (machine is None or machine["state"] == "destroyed"):
            return 404, {"error": "machine not found"}, {}
        return self._act(seen, body, machine)

    def _act(self, seen: Seen, body: Any, machine: Optional[dict[str, Any]]) -> tuple[int, Any, dict[str, str]]:
        if seen.action == "list":
            everything = seen.query.get("include_deleted") == ["true"]
            return 200, [m for m in self.machines.values() if everything or m["state"] != "destroyed"], {}
        if seen.action == "create":
            name = body.get("name") or f"machine-{secrets.token_hex(3)}"
            if any(m["name"] == name and m["state"] != "destroyed" for m in self.machines.values()):
                return 409, {"error": f"a machine named {name} already exists"}, {}
            created = self._new_machine(name, body.get("region") or "iad", body["config"])
            if not body.get("skip_launch"):
                created["state"] = "created"
                self._become(created, "created", "started")
            return 200, created, {}
        assert machine is not None
        if seen.action == "get":
            return 200, machine, {}
        if seen.action == "start":
            previous = machine["state"]
            if previous not in STARTABLE:
                return 412, {"error": f"unable to start machine from current state: '{previous}'"}, {}
            self._become(machine, "starting", "started")
            return 200, {"previous_state": previous, "migrated": False, "new_host": ""}, {}
        if seen.action == "stop":
            self._become(machine, "stopping", "stopped")
            return 200, {"ok": True}, {}
        if seen.action == "delete":
            forced = seen.query.get("force") == ["true"]
            if machine["state"] not in ("stopped", "created", "failed", "suspended") and not forced:
                return 412, {"error": "failed_precondition: machine still active, refusing to delete"}, {}
            machine["state"] = "destroyed"
            self._cond.notify_all()
            return 200, {"ok": True}, {}
        if seen.action == "wait":
            return 0, None, {}  # answered by _wait, outside the lock
        return 501, {"error": f"the stand-in does not model {seen.action}"}, {}

    def _wait(self, seen: Seen) -> tuple[int, Any, dict[str, str]]:
        state = (seen.query.get("state") or ["started"])[0]
        timeout_text = (seen.query.get("timeout") or ["60"])[0]
        timeout = int(timeout_text) if timeout_text.isdigit() else 60
        deadline = time.monotonic() + timeout
        with self._cond:
            machine = self.machines[seen.machine_id or ""]
            wanted = seen.query.get("instance_id")
            if wanted and wanted[0] != machine["instance_id"]:
                self._violation(seen, f"waits for instance {wanted[0]}, but the machine's is {machine['instance_id']}")
                return 400, {"error": "no such instance"}, {}
            while machine["state"] != state and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 408, {"error": f"deadline_exceeded: machine did not reach state {state}"}, {}
                self._cond.wait(left)
            return 200, {"ok": True}, {}

    # ------------------------------------------------------------------------------------------ checks

    def _check_query(self, seen: Seen) -> None:
        allowed = QUERY.get(seen.action, set())
        for key, values in seen.query.items():
            documented = key in allowed or (seen.action == "list" and key.startswith("metadata."))
            if not documented:
                self._violation(seen, f"query parameter {key!r} is not documented for {seen.action}")
            if len(values) != 1:
                self._violation(seen, f"query parameter {key!r} given {len(values)} times")
        value = {k: v[0] for k, v in seen.query.items()}
        for key in ("force", "include_deleted"):
            if key in value and value[key] not in ("true", "false"):
                self._violation(seen, f"{key}={value[key]!r} is not a boolean")
        if seen.action == "wait":
            if "state" in value and value["state"] not in WAIT_STATES:
                self._violation(seen, f"state={value['state']!r} is not one of {sorted(WAIT_STATES)}")
            timeout = value.get("timeout", "60")
            if not (timeout.isdigit() and 1 <= int(timeout) <= MAX_WAIT_SECONDS):
                self._violation(seen, f"timeout={value['timeout']!r} is not whole seconds in 1..{MAX_WAIT_SECONDS}")
            if value.get("state") == "stopped" and not value.get("instance_id"):
                self._violation(seen, "waiting for stopped requires instance_id")
            if "instance_id" in value and not value["instance_id"]:
                self._violation(seen, "instance_id is empty")

    def _check_body(self, seen: Seen, headers: Any, raw_body: bytes) -> Any:
        if seen.action in ("list", "get", "wait", "delete", "start"):
            if raw_body:
                self._violation(seen, f"{seen.method} {seen.action} takes no body, got {len(raw_body)} bytes")
            return None
        if not raw_body:
            if seen.action == "create":
                self._violation(seen, "create needs a JSON body with config.image")
                return {"config": {"image": ""}}
            return None
        if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._violation(seen, f"body sent as {headers.get('Content-Type')!r}, not application/json")
        try:
            body = json.loads(raw_body)
        except ValueError:
            self._violation(seen, "body is not JSON")
            return {"config": {"image": ""}}
        seen.body = body
        if seen.action == "create":
            self._check_create(seen, body)
        return body

    def _check_create(self, seen: Seen, body: Any) -> None:
        bad = self._violation
        if not isinstance(body, dict):
            bad(seen, "create body is not an object")
            return
        for key in set(body) - CREATE_FIELDS:
            bad(seen, f"create body field {key!r} is not documented")
        for key in ("name", "region"):
            if key in body and not (isinstance(body[key], str) and body[key]):
                bad(seen, f"{key} must be a non-empty string")
        config = body.get("config")
        if not isinstance(config, dict):
            bad(seen, "config (an object) is required")
            body["config"] = {"image": ""}
            return
        for key in set(config) - CONFIG_FIELDS:
            bad(seen, f"config field {key!r} is not documented")
        if not (isinstance(config.get("image"), str) and config["image"]):
            bad(seen, "config.image (a non-empty string) is required")
        for key in ("env", "metadata"):
            if key in config and not _string_map(config[key]):
                bad(seen, f"config.{key} must map strings to strings")
        init = config.get("init", {})
        if not isinstance(init, dict):
            bad(seen, "config.init must be an object")
        else:
            for key in set(init) - INIT_FIELDS:
                bad(seen, f"config.init field {key!r} is not documented")
            for key in ("exec", "entrypoint", "cmd"):
                if key in init and not (isinstance(init[key], list) and all(isinstance(a, str) for a in init[key])):
                    bad(seen, f"config.init.{key} must be a list of strings")
        guest = config.get("guest", {})
        if not isinstance(guest, dict):
            bad(seen, "config.guest must be an object")
        else:
            for key in set(guest) - GUEST_FIELDS:
                bad(seen, f"config.guest field {key!r} is not documented")
            for key in ("cpus", "memory_mb"):
                if key in guest and not (isinstance(guest[key], int) and guest[key] > 0):
                    bad(seen, f"config.guest.{key} must be a positive integer")
            if isinstance(guest.get("memory_mb"), int) and guest["memory_mb"] % 256:
                bad(seen, "config.guest.memory_mb must be a multiple of 256")
            if "guest" in config and "size" in config:
                bad(seen, "config.guest and config.size are mutually exclusive")
        restart = config.get("restart")
        if restart is not None:
            if not isinstance(restart, dict) or restart.get("policy") not in RESTART_POLICIES:
                bad(seen, f"config.restart.policy must be one of {sorted(RESTART_POLICIES)}")
            elif set(restart) - {"policy", "max_retries"}:
                bad(seen, f"config.restart has undocumented fields {sorted(set(restart) - {'policy', 'max_retries'})}")


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


class _Handler(BaseHTTPRequestHandler):
    owner: StandIn

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        status, body, extra = self.owner.handle(self.command, self.path, self.headers, raw_body)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `seen` instead
        pass
