"""Run a user's main script in a fresh interpreter, as the user would: once on the stdlib, once on lucidity.

A script is written for multiprocessing (or concurrent.futures). A line that lucidity changes carries its
replacement in a trailing marker comment, which is the whole of the switch a user makes::

    from multiprocessing import Pool  # lucidity: from lucidity import Pool

`run_script` writes the script into a directory, runs it with ``python script.py`` and stdout redirected
to a file (as in a log or CI: block-buffered, PYTHONUNBUFFERED unset), or to a pipe (``stdout="pipe"``,
as in ``python script.py | tee log``), and returns what the file or pipe and stderr hold. Flavours:

- ``"lucidity"``: marker lines replaced by their lucidity form;
- ``"fork"``, ``"spawn"``, ``"forkserver"``: the script unchanged, under that multiprocessing start method
  (set by a first line, ``multiprocessing.set_start_method(..., force=True)``).

Every process the script starts is in its own session, killed by group if the script overruns its
timeout; the test session's leak check still counts anything that escapes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["ScriptRun", "run_script", "lucidity_form", "STDLIB_FLAVOURS"]

STDLIB_FLAVOURS = ("fork", "spawn", "forkserver")
_MARKER = re.compile(r"^(?P<indent>\s*)(?P<code>.*?)\s*#\s*lucidity:\s*(?P<replacement>.+?)\s*$")


@dataclass
class ScriptRun:
    """What a finished script left: its exit status, the file its stdout went to, and its stderr."""

    flavour: str
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> "ScriptRun":
        """Raise, showing both streams, unless the script exited 0."""
        if self.returncode != 0:
            raise AssertionError(f"{self.flavour} run exited {self.returncode}\n--- stdout\n{self.stdout}"
                                 f"\n--- stderr\n{self.stderr}")
        return self


def lucidity_form(source: str) -> str:
    """The script with every marked line replaced by its lucidity form (indentation kept)."""
    lines = []
    for line in source.splitlines():
        match = _MARKER.match(line)
        lines.append(match["indent"] + match["replacement"] if match else line)
    return "\n".join(lines) + "\n"


def _stdlib_form(source: str, method: str) -> str:
    # One line, so that the script's own line numbers move by exactly one.
    return f"import multiprocessing; multiprocessing.set_start_method({method!r}, force=True)\n" + source


def run_script(source: str, directory: Path, flavour: str, *, name: str = "main_script.py",
               args: Sequence[str] = (), timeout: float = 90.0, env: Optional[dict[str, str]] = None,
               stdin: Optional[str] = None, stdout: str = "file", executable: Optional[str] = None) -> ScriptRun:
    """Run `source` as ``python name`` in `directory` under `flavour`; stdout goes to a file or a pipe.

    Args:
        source: the script as written for the stdlib (dedented here).
        directory: where the script (and its stdout file) are written; its working directory.
        flavour: "lucidity", or a multiprocessing start method.
        args: the script's command-line arguments.
        env: extra environment variables.
        stdout: "file" (a regular file), or "pipe" (read until every writer, daemons included, closed it).
        executable: the interpreter (default: this one).
    """
    if stdout not in ("file", "pipe"):
        raise ValueError(f"stdout must be 'file' or 'pipe', not {stdout!r}")
    source = textwrap.dedent(source)
    if flavour == "lucidity":
        text = lucidity_form(source)
    elif flavour in STDLIB_FLAVOURS:
        text = _stdlib_form(source, flavour)
    else:
        raise ValueError(f"unknown flavour {flavour!r}")
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(text)
    out = directory / f"{script.stem}.{flavour}.stdout"
    environment = dict(os.environ)
    for variable in ("PYTHONUNBUFFERED", "LUCIDITY_ADDRESS", "PYTHONPATH"):
        environment.pop(variable, None)
    environment.update(env or {})
    with open(out, "wb") as file:
        proc = subprocess.Popen([executable or sys.executable, script.name, *args], cwd=directory,
                                stdout=file if stdout == "file" else subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                env=environment, start_new_session=True)
        try:
            piped, stderr = proc.communicate(None if stdin is None else stdin.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            raise AssertionError(f"{flavour} run of {name} did not finish in {timeout} s; stderr:\n"
                                 f"{stderr.decode(errors='replace')}") from None
        if piped is not None:
            file.write(piped)  # kept beside the other runs' output, for a failing test's reader
    return ScriptRun(flavour, proc.returncode, out.read_text(errors="replace"), stderr.decode(errors="replace"))
