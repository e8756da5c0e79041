"""What a process imports to start, as structure: modules that cost start-up and are only needed sometimes
stay out of the processes that do not need them (issue 13: ``Pool()`` to its first result under 100 ms).

Each check runs a fresh interpreter and reads its ``sys.modules``; none measures time (benchmarks/ does).
The daemons' imports are checked as ``python -m lucidity node|control`` reaches them: the CLI's parser for
that command line, then the daemon's module.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Started only by some commands or options: the metrics and dashboard HTTP servers, the fly.io client,
#: progress bars, the live view, the JSON log format's clock, and OpenSSL (through hashlib or secrets) for a
#: cluster secret.
OCCASIONAL = ["http.server", "lucidity.fly", "tqdm", "lucidity.dashboard", "lucidity.watch", "datetime",
              "_hashlib", "secrets"]

NODE_ARGV = ["--log-level", "WARNING", "node", "ipc:///nowhere/control", "--bind", "ipc:///nowhere/node-1",
             "--processes", "2", "--name", "local", "--no-forward-output"]
CONTROL_ARGV = ["--log-level", "WARNING", "control", "--bind", "ipc:///nowhere/control"]


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def daemon_code(argv: list[str], module: str) -> str:
    return (f"import lucidity.cli\nargs = lucidity.cli._parser({argv!r}).parse_args({argv!r})\n"
            f"assert args.command in {module!r}\nimport {module}")


@pytest.mark.parametrize("argv, module", [(NODE_ARGV, "lucidity.node.daemon"),
                                          (CONTROL_ARGV, "lucidity.node.control")], ids=["node", "control"])
def test_a_daemon_without_metrics_dashboard_or_json_logs_imports_none_of_them(argv: list[str], module: str) -> None:
    modules = imported_after(daemon_code(argv, module))
    assert module in modules and "zmq" in modules  # the probe did import the daemon
    assert not modules & set(OCCASIONAL), sorted(modules & set(OCCASIONAL))


def test_the_worker_template_imports_no_occasional_module_either() -> None:
    # The template imports the worker's modules on top of the node daemon's (lucidity.node.template).
    modules = imported_after(daemon_code(NODE_ARGV, "lucidity.node.daemon") + "\nimport lucidity.node.worker")
    assert "lucidity.node.worker" in modules
    assert not modules & set(OCCASIONAL), sorted(modules & set(OCCASIONAL))


def test_the_message_bodies_generate_no_code_at_import() -> None:
    # Frozen dataclasses exec'd several methods each, in every process; the bodies are written out instead.
    modules = imported_after("import lucidity.messages")
    assert "lucidity.messages.work" in modules
    assert "dataclasses" not in modules


def test_importing_lucidity_or_its_pool_brings_no_server_and_no_fly_client() -> None:
    assert not imported_after("import lucidity") & {"http.server", "tqdm", "lucidity.fly", "zmq"}
    assert not imported_after("import lucidity\nlucidity.Pool") & {"http.server", "lucidity.fly", "lucidity.cli"}


def test_the_fly_command_is_still_listed_and_still_parses_in_full() -> None:
    code = ("import contextlib, io, lucidity.cli\nhelp = io.StringIO()\n"
            "with contextlib.redirect_stdout(help), contextlib.suppress(SystemExit):\n"
            "    lucidity.cli._parser(['--help']).parse_args(['--help'])\n"
            "assert 'fly' in help.getvalue(), help.getvalue()\n"
            "args = lucidity.cli._parser(['fly', 'nodes', '--count', '2']).parse_args(['fly', 'nodes', '--count', '2'])\n"
            "assert (args.fly_command, args.count) == ('nodes', 2), args")
    assert "lucidity.fly" in imported_after(code)
