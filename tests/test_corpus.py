"""Real programs written for the stdlib run unchanged on lucidity, with only their import lines swapped.

Each program of tests/corpus/ runs as a user would run it (``python script.py``, stdout to a file,
PYTHONUNBUFFERED unset): under its reference start method (fork for most), under spawn too where the
stdlib's behaviour there is what lucidity imitates (the main script imported as ``__mp_main__``), and on
lucidity. The outputs compare by the program's rule (tests/corpus/__init__.py). `python -m
benchmarks.dropin` runs the full matrix (fork, spawn, forkserver, lucidity) and prints it as a table.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corpus import PROGRAMS, Program, judge, last_exception_line
from scripts import ScriptRun, run_script

#: Seconds one run of one corpus program may take; each is about a second.
RUN_TIMEOUT = 60.0


def run_flavours(program: Program, flavours: list[str], directory: Path) -> dict[str, ScriptRun]:
    """Run `program` under each flavour, at once (each in its own directory), and return the runs by flavour."""
    source = program.text()
    with ThreadPoolExecutor(len(flavours)) as threads:
        futures = {flavour: threads.submit(run_script, source, directory / flavour, flavour,
                                           args=program.args, timeout=RUN_TIMEOUT)
                   for flavour in flavours}
        return {flavour: future.result() for flavour, future in futures.items()}


def describe(run: ScriptRun) -> str:
    return f"--- {run.flavour} (exit {run.returncode}) stdout:\n{run.stdout}--- stderr:\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("program", PROGRAMS, ids=[program.name for program in PROGRAMS])
def test_program(program: Program, tmp_path: Path) -> None:
    missing = program.missing()
    if missing:
        pytest.skip(f"{program.name} needs {', '.join(missing)} (the test extra installs it)")
    flavours = list(dict.fromkeys([program.reference, *program.suite, "lucidity"]))
    runs = run_flavours(program, flavours, tmp_path)
    reference = runs[program.reference]
    shown = "\n".join(describe(run) for run in runs.values())

    # The corpus itself: the stdlib flavours behave as the program's docstring says.
    if program.by_design:
        assert reference.returncode != 0, f"the stdlib was expected to fail ({program.by_design})\n{shown}"
    for flavour in program.suite:
        verdict = judge(program, reference, runs[flavour])
        if flavour in program.stdlib_fails:
            assert verdict.kind == "fails", f"{flavour} was expected to fail: {program.stdlib_fails[flavour]}"
        else:
            assert verdict.ok, f"{flavour}: {verdict}\n{shown}"

    verdict = judge(program, reference, runs["lucidity"])
    if program.by_design:
        assert verdict.kind == "differs" and verdict.reason.startswith("by design"), f"lucidity: {verdict}\n{shown}"
    else:
        assert verdict.ok, f"lucidity: {verdict}\n{shown}"


def test_last_exception_line_names_the_exception() -> None:
    stderr = ('Traceback (most recent call last):\n  File "x.py", line 3, in <module>\n    raise E\n'
              "_pickle.PicklingError: Can't pickle <function <lambda> at 0x7f00deadbeef>: attribute lookup\n")
    assert last_exception_line(stderr) == "_pickle.PicklingError: Can't pickle <function <lambda> at 0x...>: attribute lookup"
