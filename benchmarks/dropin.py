"""``python -m benchmarks.dropin``: the corpus of real programs under fork, spawn, forkserver and lucidity.

The programs are those of tests/corpus/ (CPython's documentation, PyMOTW, Stack Overflow answers,
tutorials), each run as its user runs it: ``python script.py``, stdout to a file, PYTHONUNBUFFERED unset,
through tests/scripts.py. Each program's reference run (fork, unless the manifest says otherwise) defines
the expected behaviour; every flavour is judged against it by the program's rule (tests/corpus/__init__.py)
and shown as "same", "differs: <reason>" or "fails: <exception line>". The reference column says "same"
when its own run meets the program's stated property.

The table is Markdown, for the closing note of issue 9. Options: ``--only name,name`` (programs),
``--flavours fork,lucidity``, ``--timeout SECONDS`` (per run; a program that hangs under a flavour, as a
script without a ``__main__`` guard does under spawn, is reported as failing after it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPOSITORY, "tests"))

from corpus import PROGRAMS, Program, Verdict, judge, last_exception_line  # noqa: E402 - needs tests/ on the path
from scripts import STDLIB_FLAVOURS, ScriptRun, run_script  # noqa: E402

FLAVOURS = [*STDLIB_FLAVOURS, "lucidity"]
#: Seconds one run may take before it counts as failing (every program runs in about a second).
RUN_TIMEOUT = 20.0
#: Seconds for a run the manifest expects to fail by the stdlib's design (it may hang rather than exit).
EXPECTED_FAILURE_TIMEOUT = 10.0


def run_one(program: Program, flavour: str, directory: Path, timeout: float, pythonpath: Optional[str]) -> ScriptRun:
    """One run; a run that overruns its timeout is a failed run whose stderr says so."""
    env = {"PYTHONPATH": pythonpath} if pythonpath else None
    try:
        return run_script(program.text(), directory / flavour, flavour, args=program.args, timeout=timeout, env=env)
    except AssertionError as error:  # run_script's timeout, with the process group already killed
        text = str(error)
        cause = last_exception_line(text.partition("\n")[2])
        return ScriptRun(flavour, -1, "", f"did not finish in {timeout:.0f} s"
                         + (f" ({cause})" if cause != "(no stderr)" else ""))


def judge_all(program: Program, runs: dict[str, ScriptRun]) -> dict[str, Verdict]:
    reference = runs.get(program.reference)
    verdicts = {}
    for flavour, run in runs.items():
        if reference is None:
            verdicts[flavour] = Verdict("differs", f"no {program.reference} reference run")
        elif run.returncode == -1 and run.stdout == "":
            verdicts[flavour] = Verdict("fails", run.stderr)
        elif flavour == program.reference:
            # The reference is judged by itself: it fails, or breaks the program's stated property, or is it.
            problem = program.rule.check(run.stdout) if program.rule.check and run.returncode == 0 else None
            verdicts[flavour] = (Verdict("fails", last_exception_line(run.stderr)) if run.returncode != 0
                                 else Verdict("differs", problem) if problem else Verdict("same"))
        else:
            verdicts[flavour] = judge(program, reference, run)
    return verdicts


def cell(program: Program, flavour: str, verdict: Verdict) -> str:
    text = str(verdict)
    if verdict.kind == "fails" and flavour in program.stdlib_fails:
        text += f" (by design: {program.stdlib_fails[flavour]})"
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dropin", description="The corpus of real "
                                     "programs under fork, spawn, forkserver and lucidity, as a Markdown table.")
    parser.add_argument("--only", help="programs to run, comma-separated (default: all)")
    parser.add_argument("--flavours", help=f"flavours, comma-separated: {','.join(FLAVOURS)}")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT, help="seconds per run (default 20)")
    parser.add_argument("--pythonpath", metavar="DIR", help="import lucidity from this checkout instead (e.g. an "
                        "export of an older commit, for a before/after table)")
    args = parser.parse_args(argv)
    programs = PROGRAMS
    if args.only:
        names = {name.strip() for name in args.only.split(",")}
        unknown = names - {program.name for program in PROGRAMS}
        if unknown:
            raise SystemExit(f"unknown programs: {', '.join(sorted(unknown))}")
        programs = [program for program in PROGRAMS if program.name in names]
    flavours = FLAVOURS if not args.flavours else [f.strip() for f in args.flavours.split(",")]
    unknown = set(flavours) - set(FLAVOURS)
    if unknown:
        raise SystemExit(f"unknown flavours: {', '.join(sorted(unknown))}; choose from {', '.join(FLAVOURS)}")

    source = args.pythonpath or REPOSITORY
    commit = subprocess.run(["git", "-C", REPOSITORY, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", REPOSITORY, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    where = f"lucidity from {source}" if args.pythonpath else \
        f"commit {commit}{' (with uncommitted changes)' if dirty else ''}"
    print(f"# Drop-in corpus: {len(programs)} programs, {where},"
          f" Python {sys.version.split()[0]}, stdout to a file\n", flush=True)

    started = time.monotonic()
    rows: list[tuple[Program, dict[str, Verdict]]] = []
    with tempfile.TemporaryDirectory(prefix="lucidity-dropin-") as scratch:
        for program in programs:
            missing = program.missing()
            if missing:
                rows.append((program, {f: Verdict("fails", f"needs {', '.join(missing)}") for f in flavours}))
                continue
            wanted = list(dict.fromkeys([program.reference, *flavours]))
            with ThreadPoolExecutor(len(wanted)) as threads:
                futures = {flavour: threads.submit(
                    run_one, program, flavour, Path(scratch) / program.name,
                    EXPECTED_FAILURE_TIMEOUT if flavour in program.stdlib_fails else args.timeout, args.pythonpath)
                    for flavour in wanted}
                runs = {flavour: future.result() for flavour, future in futures.items()}
            verdicts = judge_all(program, runs)
            rows.append((program, {flavour: verdicts[flavour] for flavour in flavours}))
            print(f"<!-- {program.name}: " + ", ".join(f"{f} {verdicts[f].kind}" for f in flavours) + " -->",
                  file=sys.stderr, flush=True)

    header = ["program", "source"] + flavours
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for program, verdicts in rows:
        print(f"| {program.name} | {program.source} | "
              + " | ".join(cell(program, flavour, verdicts[flavour]) for flavour in flavours) + " |")
    totals = [f"{sum(verdicts[f].ok for _, verdicts in rows)}/{len(rows)} same" for f in flavours]
    print("| **total** | | " + " | ".join(totals) + " |")
    print(f"\nReference: each program's {PROGRAMS[0].reference} run unless its manifest entry names another; "
          "the rules are in tests/corpus/__init__.py. Where the reference itself fails (a program that fails "
          "under the stdlib), \"same\" means failing with the same exception line. "
          f"{time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
