"""One measurement in a fresh process of its own, its results read back as ``BENCH {json}`` lines.

`benchmarks.balance` and `benchmarks.footprint` run every peer's round this way, as `benchmarks.__main__`
does with `benchmarks.runner`: no peer runs in a process another peer has touched (a fork-based pool would
copy what the previous peer left, and a client's open files and memory are what `footprint` measures), and a
hung peer is killed without losing the others. The child runs in a session of its own; on a timeout, an error
or Ctrl-C in the caller, its whole process group is killed and reaped before `run` returns or raises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .runner import PREFIX

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Lines of a failed child's stderr kept for the report.
STDERR_TAIL_LINES = 15


@dataclass
class Outcome:
    """What came back from one child: its result lines, and why it failed if it did."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    failure: str = ""
    stderr_tail: str = ""


def emit(payload: dict[str, Any]) -> None:
    """In the child: one result line for the parent."""
    print(PREFIX + json.dumps(payload), flush=True)


def environment() -> dict[str, str]:
    """This environment with the repository on PYTHONPATH (the tasks import by name) and no cluster address."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    env.pop("LUCIDITY_ADDRESS", None)  # an embedded peer must start its own cluster
    return env


def run(module: str, config: dict[str, Any], timeout: float) -> Outcome:
    """``python -m MODULE --config JSON`` in a fresh session; its BENCH lines, even if it failed or timed out."""
    outcome = Outcome()
    # Files, not pipes: an embedded cluster's daemons inherit them and may outlive the child by a moment.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", module, "--config", json.dumps(config)], cwd=REPOSITORY,
                                env=environment(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            outcome.failure = f"timed out after {timeout:.0f} s"
        finally:
            if proc.poll() is None:
                # Its own session: this stops the child and the pool workers it forked or spawned.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if not outcome.failure and proc.returncode:
            outcome.failure = f"exited with status {proc.returncode}"
        out.seek(0)
        for raw in out.read().decode(errors="replace").splitlines():
            if raw.startswith(PREFIX):
                outcome.lines.append(json.loads(raw[len(PREFIX):]))
        if outcome.failure or any("error" in line for line in outcome.lines):
            err.seek(0)
            tail = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
            outcome.stderr_tail = "\n".join(tail[-STDERR_TAIL_LINES:])
    return outcome
