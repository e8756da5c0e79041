"""Node machines on fly.io: `lucidity fly nodes --count N` and `ensure_nodes(n)`, through the Machines API.

Owns: the few Machines API requests a cluster needs (list, create, start, wait, delete), the client-side
rate limiter and the 429 back-off around them, the machine config of a node, and the `fly` subcommand.
Deliberately not here: anything about sockets, the node daemon itself (the machines run the ordinary
`lucidity node`), and fly apps, volumes, IPs or secrets, which stay with flyctl.

What it relies on, from fly.io's documentation (docs/fly.md lists the pages)::

    base URL     http://_api.internal:4280 inside the 6PN (on a machine), https://api.machines.dev outside;
                 $FLY_API_HOSTNAME overrides both (the variable the API reference's examples use)
    auth         Authorization: Bearer $FLY_API_TOKEN on every request
    list         GET    /v1/apps/{app}/machines                          -> [machine]
    create       POST   /v1/apps/{app}/machines   {"name", "region", "config": {"image", ...}} -> machine
    start        POST   /v1/apps/{app}/machines/{id}/start
    wait         GET    /v1/apps/{app}/machines/{id}/wait?instance_id=&state=&timeout=  (408 on timeout)
    delete       DELETE /v1/apps/{app}/machines/{id}?force=true         (force stops a running machine)
    rate limits  1 request/s per action and per app or machine, bursts of 3; Get Machine 5/s, bursts of 10

A node machine runs, with no shell in between (``init.entrypoint`` and ``init.cmd``, run as they are)::

    lucidity node CONTROL --bind tcp://fly-local-6pn:3031
                  --advertise $FLY_MACHINE_ID.vm.$FLY_APP_NAME.internal --name lucidity-node-I

and the node daemon expands the two variables from its own environment, so each node tells clients the
stable 6PN name of its own machine. Machines are named ``lucidity-node-1 .. N`` and carry the metadata
``lucidity=node``; a run finds them by both, which is what makes it idempotent: a second run with the same
count creates nothing, starts what is stopped and waits for what is booting.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import json
import logging
import math
import os
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ._version import __version__
from .errors import LucidityError

__all__ = ["FlyError", "Guest", "NodeMachine", "Outcome", "MachinesAPI", "ensure_nodes", "destroy_nodes",
           "add_command", "run"]

logger = logging.getLogger(__name__)

INTERNAL_API = "http://_api.internal:4280"
PUBLIC_API = "https://api.machines.dev"
#: Environment: the API base URL (overrides the choice above), the token, and fly's runtime variables.
API_VARIABLE = "FLY_API_HOSTNAME"
TOKEN_VARIABLE = "FLY_API_TOKEN"
APP_VARIABLE = "FLY_APP_NAME"
MACHINE_VARIABLE = "FLY_MACHINE_ID"
IMAGE_VARIABLE = "FLY_IMAGE_REF"
REGION_VARIABLE = "FLY_REGION"
CONTROL_VARIABLE = "LUCIDITY_ADDRESS"
SECRET_VARIABLE = "LUCIDITY_SECRET"  # the name security.load_secret reads

NAME_PREFIX = "lucidity-node"
METADATA_KEY = "lucidity"
METADATA_VALUE = "node"
#: The port a node daemon listens on, on its machine's 6PN address.
NODE_PORT = 3031
BIND = f"tcp://fly-local-6pn:{NODE_PORT}"
ADVERTISE = "$FLY_MACHINE_ID.vm.$FLY_APP_NAME.internal"

#: Seconds `ensure_nodes` waits, in all, for its machines to reach `started`.
START_TIMEOUT = 300.0
#: Longest wait request, in seconds. The reference gives 60 as the default and no maximum; flyctl's client
#: (fly-go's flaps, constant proxyTimeoutThreshold) clamps every wait to 1..60 s. Longer waits are repeated.
WAIT_REQUEST_SECONDS = 60
#: Seconds any other request may take.
REQUEST_TIMEOUT = 30.0
#: Extra seconds a wait request's socket allows beyond the wait itself.
HTTP_MARGIN = 10.0
#: How often a request answered 429 is tried again, and the back-off when 429 carries no Retry-After.
RATE_LIMITED_TRIES = 6
RATE_LIMITED_BACKOFF = 1.0
MAX_BACKOFF = 30.0
#: (requests per second, burst) per action and identifier, as "Working with the Machines API" states.
DEFAULT_LIMIT = (1.0, 3)
ACTION_LIMITS = {"get": (5.0, 10)}
#: Longest API error text kept in a message, in characters.
MAX_ERROR_TEXT = 300


class FlyError(LucidityError):
    """The Machines API refused, failed or could not be reached; or the app is not in a state to proceed.

    Attributes: ``status`` (the HTTP status, or None when no answer came) and ``request`` ("METHOD path").
    """

    status: Optional[int]
    request: Optional[str]

    def __init__(self, message: str = "", *, status: Optional[int] = None, request: Optional[str] = None,
                 **facts: Any) -> None:
        super().__init__(message, status=status, request=request, **facts)


class Outcome(enum.Enum):
    """What a run did to one node machine."""

    CREATED = "created"
    STARTED = "started"
    RUNNING = "already running"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class Guest:
    """A node machine's size: fly's ``config.guest``. Memory is in MB, a multiple of 256 (fly's rule)."""

    cpu_kind: str = "shared"
    cpus: int = 1
    memory_mb: int = 1024

    def check(self) -> None:
        if self.cpus < 1:
            raise ValueError(f"a node machine needs at least 1 CPU, not {self.cpus}")
        if self.memory_mb < 256 or self.memory_mb % 256:
            raise ValueError(f"fly machine memory is a multiple of 256 MB; {self.memory_mb} is not")


@dataclass(frozen=True)
class NodeMachine:
    """One node machine as a run left it. ``address`` is where its node daemon listens for clients."""

    id: str
    name: str
    state: str
    region: str
    private_ip: str
    address: str
    outcome: Outcome


class _Step(enum.Enum):
    START = "start"
    AWAIT_STOPPED = "stopped"
    AWAIT_SUSPENDED = "suspended"
    AWAIT_STARTED = "started"


# What brings an existing node machine, by its state, to `started` (fly's "Machine states and lifecycle").
# `created` is booting: this launcher never creates with skip_launch.
_BOOTING = (_Step.AWAIT_STARTED,)
_RESTART = (_Step.START, _Step.AWAIT_STARTED)
_PLANS: dict[str, tuple[_Step, ...]] = {
    "started": (),
    "created": _BOOTING, "creating": _BOOTING, "starting": _BOOTING, "restarting": _BOOTING,
    "updating": _BOOTING, "replacing": _BOOTING,
    "stopped": _RESTART, "suspended": _RESTART, "failed": _RESTART,
    # stopping and suspending must finish before a start is accepted.
    "stopping": (_Step.AWAIT_STOPPED,) + _RESTART,
    "suspending": (_Step.AWAIT_SUSPENDED,) + _RESTART,
}


class _RateLimiter:
    """Token buckets per (action, identifier), so a burst of creates keeps to the documented rates.

    A request that finds its bucket empty reserves the next token and waits once, until that known moment.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, at)

    def acquire(self, action: str, identifier: str) -> None:
        rate, burst = ACTION_LIMITS.get(action, DEFAULT_LIMIT)
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get((action, identifier), (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate) - 1.0
            self._buckets[(action, identifier)] = (tokens, now)
        if tokens < 0:
            time.sleep(-tokens / rate)


class MachinesAPI:
    """One fly app's machines through the Machines REST API, rate-limited, with errors as `FlyError`.

    Use `from_environment` unless every part is known.
    """

    def __init__(self, app: str, token: str, base_url: str) -> None:
        self.app = app
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._limiter = _RateLimiter()

    @classmethod
    def from_environment(cls, app: Optional[str] = None, token: Optional[str] = None, api: Optional[str] = None,
                         environ: Mapping[str, str] = os.environ) -> "MachinesAPI":
        """The app (else $FLY_APP_NAME), token (else $FLY_API_TOKEN) and base URL (else $FLY_API_HOSTNAME,
        else the internal URL on a fly machine, the public one elsewhere).

        Raises:
            ValueError: no app. FlyError: no token.
        """
        app = app or environ.get(APP_VARIABLE)
        if not app:
            raise ValueError(f"no fly app: pass --app (app=) or set ${APP_VARIABLE}")
        token = (token or environ.get(TOKEN_VARIABLE) or "").strip()
        if not token:
            raise FlyError(f"no fly API token: set ${TOKEN_VARIABLE} (for example to the output of "
                           f"`fly tokens deploy -a {app}`)")
        # $FLY_MACHINE_ID is set on every fly machine, and a machine is inside its organization's 6PN.
        base = api or environ.get(API_VARIABLE) or (INTERNAL_API if environ.get(MACHINE_VARIABLE) else PUBLIC_API)
        return cls(app, token, base)

    def list(self) -> list[dict[str, Any]]:
        machines = self._request("GET", "", "list", self.app)
        if not isinstance(machines, list):
            raise FlyError(f"fly Machines API: listing the machines of {self.app} gave no list", status=200)
        return machines

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        machine = self._request("POST", "", "create", self.app, body=body)
        if not isinstance(machine, dict) or not machine.get("id"):
            raise FlyError(f"fly Machines API: creating {body.get('name')} gave no machine id", status=200)
        return machine

    def start(self, machine_id: str) -> None:
        self._request("POST", f"/{_quote(machine_id)}/start", "start", machine_id)

    def wait(self, machine_id: str, state: str, instance_id: Optional[str], seconds: int) -> bool:
        """Block in the API until the machine is in `state` (True) or `seconds` pass (False, HTTP 408).

        `instance_id` pins the machine version waited for; the API requires it for ``stopped``.
        """
        seconds = max(1, min(seconds, WAIT_REQUEST_SECONDS))
        query = {"state": state, "timeout": str(seconds)}
        if instance_id:
            query["instance_id"] = instance_id
        try:
            self._request("GET", f"/{_quote(machine_id)}/wait", "wait", machine_id, query=query,
                          timeout=seconds + HTTP_MARGIN)
        except FlyError as exc:
            if exc.status == 408:
                return False
            raise
        return True

    def destroy(self, machine_id: str) -> None:
        self._request("DELETE", f"/{_quote(machine_id)}", "delete", machine_id, query={"force": "true"})

    def _request(self, method: str, path: str, action: str, identifier: str, *,
                 query: Optional[dict[str, str]] = None, body: Optional[dict[str, Any]] = None,
                 timeout: float = REQUEST_TIMEOUT) -> Any:
        # Imported here: urllib.request (with http.client, email and ssl) would add some 20 ms to every
        # `lucidity` command, `lucidity node` included, since the CLI builds this module's subcommand.
        import urllib.error
        import urllib.request

        path = f"/v1/apps/{_quote(self.app)}/machines{path}"
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        what = f"{method} {path}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                   "User-Agent": f"lucidity/{__version__}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        backoff, attempt = RATE_LIMITED_BACKOFF, 1
        while True:
            self._limiter.acquire(action, identifier)
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    text = response.read()
                return json.loads(text) if text.strip() else None
            except urllib.error.HTTPError as exc:
                error_body = exc.read()
                if exc.code != 429 or attempt >= RATE_LIMITED_TRIES:
                    raise self._error(what, exc.code, error_body) from None
                delay = _retry_after(exc.headers.get("Retry-After"), backoff)
                logger.info("fly Machines API: %s rate-limited (429); trying again in %.1f s", what, delay)
                time.sleep(delay)  # the API named the moment: a known deadline, not a poll
                backoff, attempt = min(backoff * 2, MAX_BACKOFF), attempt + 1
            except urllib.error.URLError as exc:
                raise FlyError(f"cannot reach the fly Machines API at {self.base_url} ({what}): {exc.reason}; "
                               f"{_reach_hint(self.base_url)}", request=what) from exc
            except OSError as exc:  # a timeout or reset after connecting
                raise FlyError(f"the fly Machines API at {self.base_url} failed {what}: {exc}", request=what) from exc
            except ValueError as exc:
                raise FlyError(f"the fly Machines API answered {what} with something that is not JSON: {exc}",
                               request=what) from exc

    def _error(self, what: str, status: int, body: bytes) -> FlyError:
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            text = str(parsed.get("message") or parsed.get("error") or text)
        text = " ".join(text.split())[:MAX_ERROR_TEXT] or "(no message)"
        hint = ""
        if status in (401, 403):
            hint = f"; check ${TOKEN_VARIABLE}: it needs to be a token for app {self.app} (`fly tokens deploy`)"
        return FlyError(f"fly Machines API: {what} answered {status}: {text}{hint}", status=status, request=what)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _retry_after(value: Optional[str], fallback: float) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date), else `fallback`; at most MAX_BACKOFF."""
    if value:
        import email.utils

        try:
            return min(max(0.0, float(value)), MAX_BACKOFF)
        except ValueError:
            try:
                return min(max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time()), MAX_BACKOFF)
            except (TypeError, ValueError):
                pass
    return fallback


def _reach_hint(base_url: str) -> str:
    if base_url == INTERNAL_API:
        return f"that address exists only inside fly's private network; elsewhere set ${API_VARIABLE}={PUBLIC_API}"
    return "check the network and the URL"


def node_names(count: int, prefix: str = NAME_PREFIX) -> list[str]:
    """The names of the first `count` node machines: prefix-1 .. prefix-count."""
    return [f"{prefix}-{index}" for index in range(1, count + 1)]


def is_node(machine: Mapping[str, Any], prefix: str = NAME_PREFIX) -> bool:
    """Whether a listed machine is one of ours: our name prefix and our metadata tag, both."""
    name = str(machine.get("name") or "")
    metadata = (machine.get("config") or {}).get("metadata") or {}
    return name.startswith(prefix + "-") and metadata.get(METADATA_KEY) == METADATA_VALUE


def node_command(name: str, control: str) -> list[str]:
    """The arguments of ``lucidity`` on a node machine: no shell runs them, the node expands the $VARS."""
    return ["node", control, "--bind", BIND, "--advertise", ADVERTISE, "--name", name]


def node_config(name: str, control: str, image: str, guest: Guest, secret: Optional[bytes]) -> dict[str, Any]:
    """The ``config`` of a node machine. The secret goes in ``env`` only when given."""
    command = node_command(name, control)
    env = {SECRET_VARIABLE: secret.decode("utf-8")} if secret is not None else {}
    return {
        "image": image,
        # Both replace the image's own: its ENTRYPOINT may be `lucidity` already (deploy/docker/Dockerfile)
        # or absent (a plain Python image), and either way the machine runs exactly `lucidity node ...`.
        "init": {"entrypoint": ["lucidity"], "cmd": command},
        "env": env,
        "guest": {"cpu_kind": guest.cpu_kind, "cpus": guest.cpus, "memory_mb": guest.memory_mb},
        # No `fly_process_group` metadata: `fly deploy` leaves the nodes alone instead of replacing their command.
        "metadata": {METADATA_KEY: METADATA_VALUE},
        # A node that exits cleanly was told to leave; one that crashes comes back.
        "restart": {"policy": "on-failure"},
    }


def check_control(control: str) -> str:
    """The control address as given, or ValueError when no other machine could reach it."""
    control = control.strip()
    if not control:
        raise ValueError(f"no control address: pass --control (control=) or set ${CONTROL_VARIABLE}, e.g. to "
                         "<control machine id>.vm.<app>.internal:3030")
    if any(ch.isspace() for ch in control):
        raise ValueError(f"the control address {control!r} contains spaces")
    if "://" in control and not control.startswith(("tcp://", "http://")):
        raise ValueError(f"the control address {control} is not a network address; nodes on other machines "
                         "need tcp://HOST:PORT, HOST:PORT or HOST")
    host = urllib.parse.urlsplit(control if "://" in control else f"tcp://{control}").hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        raise ValueError(f"the control address {control} is a loopback address, which a node machine cannot reach; "
                         "give the control machine's 6PN name, e.g. <machine id>.vm.<app>.internal:3030")
    return control


def ensure_nodes(count: int, control: Optional[str] = None, *, app: Optional[str] = None,
                 image: Optional[str] = None, region: Optional[str] = None, guest: Guest = Guest(),
                 prefix: str = NAME_PREFIX, secret: Optional[bytes] = None, send_secret: bool = True,
                 timeout: float = START_TIMEOUT, token: Optional[str] = None,
                 api: Optional[str] = None) -> list[NodeMachine]:
    """Make node machines prefix-1 .. prefix-`count` exist and run: create the missing, start the stopped.

    Idempotent: machines found by name and metadata are reused, so a second call creates nothing. Machines
    numbered beyond `count` are left alone (`destroy_nodes` removes them all).

    Args:
        count: how many nodes.
        control: the control node's address as the nodes reach it (``<id>.vm.<app>.internal:3030``);
            default $LUCIDITY_ADDRESS.
        app: the fly app (default $FLY_APP_NAME).
        image: default, on a fly machine, the image it runs itself ($FLY_IMAGE_REF); elsewhere the one
            image the app's other machines run (else the one its node machines run).
        region: default $FLY_REGION (the caller's region); off fly, fly picks one near the caller.
        secret: the cluster secret (default: `security.load_secret`'s sources), sent as $LUCIDITY_SECRET
            in the machine config. send_secret=False sends none, for an app that holds LUCIDITY_SECRET as
            a fly secret, which fly puts in the environment of every machine of the app.
        timeout: seconds, in all, for the machines to reach ``started``.
        token, api: default $FLY_API_TOKEN and the base URL `MachinesAPI.from_environment` picks.
    Returns:
        The `count` machines, in name order.
    Raises:
        ValueError: an argument no run could use (count, control address, no secret).
        FlyError: the API refused or failed, no token, a machine of another kind holds a node's name, or a
            machine did not start within `timeout`.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    guest.check()
    control = check_control(control or os.environ.get(CONTROL_VARIABLE) or "")
    if send_secret and secret is None:
        from .security import load_secret

        secret = load_secret()
        if secret is None:
            raise ValueError(f"no cluster secret: set ${SECRET_VARIABLE} or $LUCIDITY_SECRET_FILE, or pass "
                             "send_secret=False (--app-secret) if the app has LUCIDITY_SECRET as a fly secret")
    api_client = MachinesAPI.from_environment(app=app, token=token, api=api)
    machines = api_client.list()
    region = region or os.environ.get(REGION_VARIABLE)
    deadline = time.monotonic() + timeout
    by_name = {str(m.get("name")): m for m in machines if m.get("state") != "destroyed"}
    pending: list[tuple[dict[str, Any], Outcome, tuple[_Step, ...]]] = []
    for name in node_names(count, prefix):
        machine = by_name.get(name)
        if machine is None:
            image = image or _app_image(api_client, machines, prefix)
            body: dict[str, Any] = {"name": name,
                                    "config": node_config(name, control, image, guest, secret if send_secret else None)}
            if region:
                body["region"] = region
            machine = api_client.create(body)
            logger.info("fly: created %s (%s) in %s, joining %s", name, machine["id"], machine.get("region"), control)
            pending.append((machine, Outcome.CREATED, _BOOTING))
            continue
        if not is_node(machine, prefix):
            raise FlyError(f"machine {machine.get('id')} of app {api_client.app} is named {name} but is not a lucidity "
                           f"node (no metadata {METADATA_KEY}={METADATA_VALUE}); rename it or choose another prefix")
        _warn_if_stale(machine, node_command(name, control), image)
        state = str(machine.get("state"))
        if state not in _PLANS:
            raise FlyError(f"node machine {name} ({machine.get('id')}) is {state}; run again once fly is done "
                           "with it")
        steps = _PLANS[state]
        outcome = Outcome.STARTED if _Step.START in steps else Outcome.RUNNING
        while steps and steps[0] is not _Step.AWAIT_STARTED:  # start now, wait for all of them below
            _step(api_client, machine, steps[0], deadline)
            steps = steps[1:]
        pending.append((machine, outcome, steps))
    nodes = []
    for machine, outcome, steps in pending:
        for step in steps:
            _step(api_client, machine, step, deadline)
        nodes.append(_node_machine(api_client.app, machine, "started", outcome))
    return nodes


def destroy_nodes(*, app: Optional[str] = None, prefix: str = NAME_PREFIX, token: Optional[str] = None,
                  api: Optional[str] = None) -> list[NodeMachine]:
    """Delete every node machine of the app (our prefix and metadata, both), running or not; nothing else.

    Raises:
        FlyError: the API refused or failed, or no token.
    """
    api_client = MachinesAPI.from_environment(app=app, token=token, api=api)
    gone = []
    for machine in sorted(api_client.list(), key=lambda m: str(m.get("name"))):
        if is_node(machine, prefix) and machine.get("state") != "destroyed":
            api_client.destroy(str(machine["id"]))
            logger.info("fly: destroyed %s (%s)", machine.get("name"), machine["id"])
            gone.append(_node_machine(api_client.app, machine, "destroyed", Outcome.DESTROYED))
    return gone


def _step(api_client: MachinesAPI, machine: dict[str, Any], step: _Step, deadline: float) -> None:
    machine_id = str(machine["id"])
    if step is _Step.START:
        api_client.start(machine_id)
        logger.info("fly: starting %s (%s), which was %s", machine.get("name"), machine_id, machine.get("state"))
        return
    while True:  # each wait blocks in the API for up to WAIT_REQUEST_SECONDS; repeated only after a 408
        left = deadline - time.monotonic()
        if left <= 0:
            raise FlyError(f"node machine {machine.get('name')} ({machine_id}) did not reach {step.value} in time; "
                           f"see `fly logs -i {machine_id}` and `fly machine status {machine_id}`")
        if api_client.wait(machine_id, step.value, machine.get("instance_id"), math.ceil(left)):
            return


def _warn_if_stale(machine: Mapping[str, Any], command: list[str], image: Optional[str]) -> None:
    config = machine.get("config") or {}
    stale = [what for what, wanted, running in (("command", command, (config.get("init") or {}).get("cmd")),
                                                ("image", image, config.get("image")))
             if wanted is not None and wanted != running]
    if stale:
        logger.warning("fly: %s (%s) runs another %s than this run asks for, and a run never changes an existing "
                       "node; `lucidity fly nodes --destroy` and run again to replace them", machine.get("name"),
                       machine.get("id"), " and ".join(stale))


def _node_machine(app: str, machine: Mapping[str, Any], state: str, outcome: Outcome) -> NodeMachine:
    machine_id = str(machine["id"])
    return NodeMachine(id=machine_id, name=str(machine.get("name")), state=state,
                       region=str(machine.get("region") or ""), private_ip=str(machine.get("private_ip") or ""),
                       address=f"{machine_id}.vm.{app}.internal:{NODE_PORT}", outcome=outcome)


def _app_image(api_client: MachinesAPI, machines: list[dict[str, Any]], prefix: str) -> str:
    """The running app's own image: on a fly machine $FLY_IMAGE_REF, the image it runs itself; elsewhere the
    one image the app's other machines run, else the one its node machines run."""
    if os.environ.get(MACHINE_VARIABLE) and os.environ.get(IMAGE_VARIABLE):
        return os.environ[IMAGE_VARIABLE]
    images: set[str] = set()
    for ours in (False, True):
        images = {str(m["config"]["image"]) for m in machines
                  if is_node(m, prefix) is ours and (m.get("config") or {}).get("image")}
        if images:
            break
    if len(images) == 1:
        return images.pop()
    found = f"its machines run {len(images)} images ({', '.join(sorted(images))})" if images else "it has no machine"
    raise FlyError(f"cannot tell which image the nodes of app {api_client.app} should run: {found}; pass --image "
                   "(image=)")


# ---------------------------------------------------------------------------------------------------- CLI


def add_command(subparsers: Any) -> None:
    """Add ``fly nodes`` to the CLI's subcommands (the object `ArgumentParser.add_subparsers` returned)."""
    fly = subparsers.add_parser("fly", allow_abbrev=False, help="run node machines on fly.io")
    commands = fly.add_subparsers(dest="fly_command", required=True)
    nodes = commands.add_parser("nodes", allow_abbrev=False,
                                help="create or start N node machines of the app's image (or --destroy)",
                                description="Idempotent: machines named PREFIX-1..N are reused, missing ones created.")
    nodes.add_argument("--count", type=int, default=None, help="how many node machines")
    nodes.add_argument("--destroy", action="store_true", help="delete every node machine of the app instead")
    nodes.add_argument("--control", default=None,
                       help=f"the control node's address as nodes reach it (default ${CONTROL_VARIABLE})")
    nodes.add_argument("--app", default=None, help=f"fly app (default ${APP_VARIABLE})")
    nodes.add_argument("--image", default=None,
                       help=f"image to run (default: on a fly machine its own, ${IMAGE_VARIABLE}; else the app's)")
    nodes.add_argument("--region", default=None, help=f"fly region (default ${REGION_VARIABLE}, else fly's choice)")
    nodes.add_argument("--cpu-kind", default=Guest.cpu_kind, choices=["shared", "performance"])
    nodes.add_argument("--cpus", type=int, default=Guest.cpus, help=f"CPUs per machine (default {Guest.cpus})")
    nodes.add_argument("--memory-mb", type=int, default=Guest.memory_mb,
                       help=f"memory per machine, a multiple of 256 (default {Guest.memory_mb})")
    nodes.add_argument("--prefix", default=NAME_PREFIX, help=f"machine name prefix (default {NAME_PREFIX})")
    nodes.add_argument("--secret-file", default=None,
                       help="file holding the cluster secret (default $LUCIDITY_SECRET(_FILE)); sent in the config")
    nodes.add_argument("--app-secret", action="store_true",
                       help="send no secret: the app holds LUCIDITY_SECRET as a fly secret (`fly secrets set`)")
    nodes.add_argument("--timeout", type=float, default=START_TIMEOUT,
                       help=f"seconds for the machines to start (default {START_TIMEOUT:g})")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fly`` command: 0 on success, 1 when fly or the API fails, 2 for a usage error."""
    if args.fly_command != "nodes":
        return 2
    try:
        if args.destroy:
            if args.count is not None:
                raise ValueError("give --count N or --destroy, not both")
            nodes = destroy_nodes(app=args.app, prefix=args.prefix)
        else:
            if args.count is None:
                raise ValueError("give --count N (how many node machines), or --destroy")
            secret = None
            if not args.app_secret:
                from .security import load_secret

                secret = load_secret(secret_file=args.secret_file)
            nodes = ensure_nodes(args.count, args.control, app=args.app, image=args.image, region=args.region,
                                 guest=Guest(args.cpu_kind, args.cpus, args.memory_mb), prefix=args.prefix,
                                 secret=secret, send_secret=not args.app_secret, timeout=args.timeout)
    except FlyError as exc:
        print(f"lucidity fly nodes: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, LucidityError) as exc:  # arguments, or a bad secret file (never its content)
        print(f"lucidity fly nodes: {exc}", file=sys.stderr)
        return 2
    if not nodes:
        print("no node machines")
    for node in nodes:
        print(f"{node.name}  {node.id}  {node.state}  {node.region or '-'}  {node.private_ip or '-'}  "
              f"{node.address}  ({node.outcome.value})")
    return 0
