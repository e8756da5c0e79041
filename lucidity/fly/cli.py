"""`lucidity fly nodes`: the subcommand, its options, and one line per machine (or one line of error)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import LucidityError
from .api import APP_VARIABLE, CONTROL_VARIABLE, IMAGE_VARIABLE, REGION_VARIABLE, FlyError
from .nodes import NAME_PREFIX, START_TIMEOUT, Guest, destroy_nodes, ensure_nodes


def add_command(subparsers: Any, help: str = "run node machines on fly.io") -> None:
    """Add ``fly nodes`` to the CLI's subcommands (the object `ArgumentParser.add_subparsers` returned)."""
    fly = subparsers.add_parser("fly", allow_abbrev=False, help=help)
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
                from ..security import load_secret

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
