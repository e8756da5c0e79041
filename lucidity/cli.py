"""`lucidity control | node | status | top | secret | fly | demo`: parse, configure logging, run.

This is the only place that configures logging handlers. Logic lives in the daemons; a test never needs
to go through here to reach it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from . import addresses
from ._version import __version__
from .errors import AuthenticationError, ClusterUnavailable
from .status import STATUS_TIMEOUT, format_status, query_status

if TYPE_CHECKING:
    from .node.logformat import JsonFormatter

__all__ = ["main"]

DEFAULT_CONTROL = "tcp://127.0.0.1:3030"
FLY_HELP = "run node machines on fly.io"


def _size(text: str) -> int:
    from .sizes import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return int(size)  # type: ignore[arg-type]


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, as wide as the terminal by `_terminal_columns`: argparse makes one for every
    option added, and its own reads the width through shutil, whose import (with bz2 and lzma) was 1.5 ms of
    every daemon's start (issue 13)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width)


def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` says: $COLUMNS if positive, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The CLI's parser; for a command line `argv` that does not hold the word "fly", without the options of
    ``lucidity fly``, whose modules cost every daemon's start-up about 4 ms (issue 13). Subcommands are
    never abbreviated, so such a command line cannot mean ``fly``; its help still lists the command."""
    # No abbreviations: a recipe that says --worker-port must fail, not quietly mean --worker-ports.
    parser = argparse.ArgumentParser(prog="lucidity", description="Run Python functions on node daemons.",
                                     allow_abbrev=False, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"lucidity {__version__}")
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument("--log-level", dest="global_log_level", default=None, type=str.upper, choices=levels,
                        help="default: INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    def daemon_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--log-level", default=None, type=str.upper, choices=levels, help="default: INFO")
        sub.add_argument("--secret-file", default=None,
                         help="file holding the cluster secret (mode 0600); default $LUCIDITY_SECRET(_FILE)")
        sub.add_argument("--insecure", action="store_true",
                         help="allow listening beyond loopback without a secret (anyone reaching the port runs code)")
        sub.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
        sub.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
        sub.add_argument("--metrics", default=None, metavar="HOST:PORT",
                         help="serve Prometheus metrics at http://HOST:PORT/metrics and a health check at /health "
                              "(loopback; beyond it only with a cluster secret or --insecure)")
        sub.add_argument("--log-format", default="text", choices=["text", "json"],
                         help="json: one JSON object per log line (default: text)")

    control = commands.add_parser("control", allow_abbrev=False, formatter_class=_Formatter,
                                  help="run the control node (the cluster's membership)")
    control.add_argument("--bind", default=DEFAULT_CONTROL,
                         help=f"listening address, e.g. tcp://[::]:3030 or 0.0.0.0 (default {DEFAULT_CONTROL})")
    control.add_argument("--node-timeout", type=float, default=5.0,
                         help="seconds of silence after which a node is declared lost (default 5)")
    control.add_argument("--dashboard", default=None, metavar="HOST:PORT",
                         help="serve a web dashboard there (loopback; beyond it only with a secret, behind a "
                              "token printed at start)")
    # Embedded clusters only: the private directory of the ipc:// address, removed when the daemon exits.
    control.add_argument("--runtime-dir", default=None, help=argparse.SUPPRESS)
    daemon_options(control)

    node = commands.add_parser("node", allow_abbrev=False, formatter_class=_Formatter,
                               help="run a node daemon that joins a control node")
    node.add_argument("control_address",
                      help="the control node: tcp://HOST:PORT, HOST:PORT, [IPv6]:PORT, or HOST (port 3030); "
                           "a host name is resolved again whenever the control node stops answering")
    node.add_argument("--bind", default=None,
                      help="address for clients (default tcp://127.0.0.1:0, a free loopback port); "
                           "a wildcard (tcp://[::]:3031, 0.0.0.0:3031, *) listens on every interface")
    node.add_argument("--advertise", default=None, metavar="HOST",
                      help="the host clients are told to use for this node and its workers (default: the bound "
                           "address; for a wildcard, this machine's address on the route to the control node); "
                           "$VAR in it is taken from the environment")
    node.add_argument("--worker-ports", default=None, metavar="LO-HI",
                      help="the ports worker processes listen on, for a firewall (default: any free port)")
    node.add_argument("--processes", type=int, default=None,
                      help="worker processes (default: the CPUs this process may run on)")
    node.add_argument("--name", default=None, help="node name (default: host name and pid)")
    node.add_argument("--heartbeat-interval", type=float, default=1.0,
                      help="seconds between heartbeats to the control node (default 1)")
    node.add_argument("--client-timeout", type=float, default=10.0,
                      help="seconds of silence after which a client's work is dropped (default 10)")
    node.add_argument("--memory-limit", type=_size, default=None,
                      help="memory cap of every worker process, e.g. 1GB or 512MiB (default: none)")
    node.add_argument("--max-tasks-per-worker", type=int, default=None,
                      help="replace a worker after it has run this many tasks (default: never)")
    node.add_argument("--recycle-memory", type=_size, default=None,
                      help="replace a worker whose memory after a task exceeds this size (a leak guard)")
    node.add_argument("--no-forward-output", dest="forward_output", action="store_false",
                      help="keep what tasks print in this node's log only, instead of also sending it to the caller")
    # Embedded clusters of one node only: this daemon is the control node too, at the control address (an
    # ipc:// socket in --runtime-dir, which it removes when it exits), which saves the cluster an interpreter.
    node.add_argument("--serve-control", action="store_true", help=argparse.SUPPRESS)
    node.add_argument("--runtime-dir", default=None, help=argparse.SUPPRESS)
    # Embedded clusters only: the caller's main script, which the worker template runs once (node/preload.py).
    node.add_argument("--preload-main", default=None, help=argparse.SUPPRESS)
    daemon_options(node)

    status = commands.add_parser("status", allow_abbrev=False, formatter_class=_Formatter,
                                 help="print the nodes, their workers and task counts")
    top = commands.add_parser("top", allow_abbrev=False, formatter_class=_Formatter,
                              help="watch the nodes, workers, memory and tasks per second (as status --watch)")
    for sub in (status, top):
        sub.add_argument("address", nargs="?", default=None,
                         help=f"control address (default $LUCIDITY_ADDRESS or {DEFAULT_CONTROL})")
        sub.add_argument("--timeout", type=float, default=None,
                         help=f"seconds to wait per daemon (default {STATUS_TIMEOUT:g}; watching: 1)")
        sub.add_argument("--secret-file", default=None, help="file holding the cluster secret")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--watch", action="store_true", help="redraw a live view every second until q or Ctrl-C")

    secret = commands.add_parser("secret", allow_abbrev=False, formatter_class=_Formatter,
                                 help="write a new random cluster secret to a file (mode 0600)")
    secret.add_argument("path", help="where to write it; an existing file is never overwritten")

    demo = commands.add_parser("demo", allow_abbrev=False, formatter_class=_Formatter,
                               help="run the pythagorean example on an embedded cluster")
    demo.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")

    if argv is not None and "fly" not in argv:
        commands.add_parser("fly", allow_abbrev=False, formatter_class=_Formatter, help=FLY_HELP)
    else:
        from .fly.cli import add_command

        add_command(commands, FLY_HELP)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = _parser(argv).parse_args(argv)
    level = getattr(args, "log_level", None) or args.global_log_level or "INFO"
    json_logs = _configure_logging(args, level)
    if args.command == "control":
        from .node.control import ControlDaemon

        secret = _secret(args)
        dashboard = None
        try:
            if args.dashboard is not None:
                from .dashboard import Dashboard

                dashboard = Dashboard(args.dashboard, secret=secret)
                print(f"lucidity control: dashboard at {dashboard.url}", file=sys.stderr, flush=True)
            control = ControlDaemon(args.bind, parent_fd=args.parent_fd, ready_fd=args.ready_fd,
                                    node_timeout=args.node_timeout, secret=secret, insecure=args.insecure,
                                    runtime_dir=args.runtime_dir, metrics=args.metrics,
                                    on_serving=None if dashboard is None else dashboard.attach)
        except (ValueError, OSError) as exc:
            print(f"lucidity control: {exc}", file=sys.stderr)
            return 2
        try:
            return control.run()
        finally:
            if dashboard is not None:
                dashboard.stop()
    if args.command == "node":
        from .node.daemon import NodeDaemon

        for option, value in (("--processes", args.processes), ("--max-tasks-per-worker", args.max_tasks_per_worker)):
            if value is not None and value < 1:
                print(f"lucidity node: {option} must be at least 1", file=sys.stderr)
                return 2
        bind = args.bind or "tcp://127.0.0.1:0"
        try:
            worker_ports = None if args.worker_ports is None else addresses.parse_port_range(args.worker_ports)
            if worker_ports is not None and worker_ports[1] - worker_ports[0] + 1 < (args.processes or 1):
                raise ValueError(f"--worker-ports {args.worker_ports} has fewer ports than --processes")
            daemon = NodeDaemon(args.control_address, bind, args.processes, args.name, parent_fd=args.parent_fd,
                                ready_fd=args.ready_fd, memory_limit=args.memory_limit,
                                max_tasks_per_worker=args.max_tasks_per_worker, recycle_memory=args.recycle_memory,
                                heartbeat_interval=args.heartbeat_interval, client_timeout=args.client_timeout,
                                secret=_secret(args), insecure=args.insecure, advertise=args.advertise,
                                worker_ports=worker_ports, metrics=args.metrics,
                                log_worker_output=json_logs is not None, forward_output=args.forward_output,
                                serve_control=args.serve_control, runtime_dir=args.runtime_dir,
                                preload_main=args.preload_main)
        except ValueError as exc:
            print(f"lucidity node: {exc}", file=sys.stderr)
            return 2
        if json_logs is not None:
            json_logs.node = daemon.name
        return daemon.run()
    if args.command == "top" or (args.command == "status" and args.watch):
        return _watch(args)
    if args.command == "status":
        address = args.address or os.environ.get("LUCIDITY_ADDRESS") or DEFAULT_CONTROL
        try:
            report = query_status(address, args.timeout or STATUS_TIMEOUT, _secret(args))
        except ValueError as exc:
            print(f"lucidity status: {exc}", file=sys.stderr)
            return 2
        except ClusterUnavailable as exc:
            print(f"lucidity status: {exc}", file=sys.stderr)
            return 1
        try:
            print(json.dumps(report, indent=2) if args.json else format_status(report))
        except BrokenPipeError:  # `lucidity status | head`
            sys.stdout = open(os.devnull, "w")
        return 0
    if args.command == "secret":
        from .security import write_secret_file

        try:
            write_secret_file(args.path)
        except OSError as exc:
            print(f"lucidity secret: {exc}", file=sys.stderr)
            return 1
        print(f"wrote a new cluster secret to {args.path} (mode 0600)")
        return 0
    if args.command == "fly":
        from .fly.cli import run

        return run(args)
    if args.command == "demo":
        from . import demo

        demo.run(args.processes)
        return 0
    return 2


def _watch(args: argparse.Namespace) -> int:
    from .watch import REFRESH_INTERVAL, watch

    if getattr(args, "json", False):
        print("lucidity status: --watch draws a screen; --json prints once (choose one)", file=sys.stderr)
        return 2
    if not sys.stdout.isatty():
        print(f"lucidity {args.command}: the live view needs a terminal; `lucidity status` prints once",
              file=sys.stderr)
        return 2
    address = args.address or os.environ.get("LUCIDITY_ADDRESS") or DEFAULT_CONTROL
    try:
        return watch(address, secret=_secret(args), timeout=args.timeout or REFRESH_INTERVAL)
    except ValueError as exc:
        print(f"lucidity {args.command}: {exc}", file=sys.stderr)
        return 2


def _configure_logging(args: argparse.Namespace, level: str) -> Optional["JsonFormatter"]:
    """The root logger's one handler, on stderr: text, or with ``--log-format json`` the daemon's JSON lines
    (returned, so that a node daemon's name can be set once it is known)."""
    if getattr(args, "log_format", "text") != "json":
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
        return None
    from .node.logformat import JsonFormatter

    formatter = JsonFormatter(args.command)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])
    return formatter


def _secret(args: argparse.Namespace) -> Optional[bytes]:
    from .security import load_secret

    try:
        return load_secret(secret_file=args.secret_file)
    except (AuthenticationError, ValueError, OSError) as exc:  # a bad secret file: say why, no traceback
        print(f"lucidity {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
