"""Node machines: their names, their config, and `ensure_nodes` / `destroy_nodes`, idempotent by name."""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .api import (CONTROL_VARIABLE, IMAGE_VARIABLE, MACHINE_VARIABLE, REGION_VARIABLE, SECRET_VARIABLE, FlyError,
                  MachinesAPI)

logger = logging.getLogger("lucidity.fly")

NAME_PREFIX = "lucidity-node"
METADATA_KEY = "lucidity"
METADATA_VALUE = "node"
#: The port a node daemon listens on, on its machine's 6PN address.
NODE_PORT = 3031
BIND = f"tcp://fly-local-6pn:{NODE_PORT}"
ADVERTISE = "$FLY_MACHINE_ID.vm.$FLY_APP_NAME.internal"

#: Seconds `ensure_nodes` waits, in all, for its machines to reach `started`.
START_TIMEOUT = 300.0
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
        from ..security import load_secret

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


