"""A corpus of real programs written for multiprocessing.Pool and ProcessPoolExecutor, and how to judge them.

Each ``*.py`` file beside this one is a program published by someone else (CPython's documentation,
PyMOTW, Stack Overflow answers, tutorials), copied faithfully or minimally adapted (smaller sizes, shorter
sleeps); its docstring names the source, what it exercises and how its output is compared. The only
lines that change for lucidity are import lines carrying a ``# lucidity: ...`` marker (see
tests/scripts.py).

`PROGRAMS` is the manifest: for each program the stdlib start method whose run defines the expected
behaviour (fork, unless the program says otherwise), the flavours the test suite runs, and a `Rule` saying
how two runs compare. Rules only normalize what the program itself leaves to chance (pids, worker
numbers, completion order, random draws) or check a property stated in the docstring; they never excuse
a wrong answer. `judge` turns a reference run and another run into a `Verdict`: same, differs, or fails.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from scripts import ScriptRun

__all__ = ["CORPUS", "PROGRAMS", "Program", "Rule", "Verdict", "judge", "last_exception_line"]

CORPUS = Path(__file__).resolve().parent

#: A check of one run's stdout: None when it holds, else what is wrong.
Check = Callable[[str], Optional[str]]


@dataclass(frozen=True)
class Rule:
    """How the stdout of two runs compare: equal after `normalize`, and each satisfying `check`."""

    describe: str
    normalize: Callable[[str], object] = lambda text: text
    check: Optional[Check] = None


@dataclass(frozen=True)
class Program:
    """One corpus program and how it is judged."""

    name: str
    #: A short label for the table's source column.
    source: str
    rule: Rule
    #: The stdlib start method whose run is the expected behaviour.
    reference: str = "fork"
    #: Start methods run next to lucidity by tests/test_corpus.py (the dropin benchmark runs all three).
    suite: tuple[str, ...] = ("fork",)
    args: tuple[str, ...] = ()
    #: Modules the program imports that may be missing (the test is skipped without them).
    requires: tuple[str, ...] = ()
    #: Why lucidity deliberately differs from the reference; then `lucidity_check` is what lucidity must do.
    by_design: Optional[str] = None
    lucidity_check: Optional[Check] = None
    #: Why a stdlib start method fails by design (flavour -> reason), shown in the table.
    stdlib_fails: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return CORPUS / f"{self.name}.py"

    def text(self) -> str:
        return self.path.read_text()

    def missing(self) -> list[str]:
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


@dataclass(frozen=True)
class Verdict:
    """`kind` is "same", "differs" or "fails"; `reason` is a short phrase for the table (empty when same)."""

    kind: str
    reason: str = ""

    def __str__(self) -> str:
        return self.kind if not self.reason else f"{self.kind}: {self.reason}"

    @property
    def ok(self) -> bool:
        return self.kind == "same"


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def last_exception_line(stderr: str) -> str:
    """The last line of a traceback ("TypeError: ..."), addresses as 0x..., or the last stderr line."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if not line.startswith((" ", "\t")) and re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit|Warning)\b|^[\w.]+:", line):
            if line.endswith(":") and index + 1 < len(lines):  # a message that starts on the next line
                line += " " + lines[index + 1].strip()
            return _ADDRESS.sub("0x...", line)
    return lines[-1] if lines else "(no stderr)"


def _first_difference(expected: object, got: object) -> str:
    if isinstance(expected, str) and isinstance(got, str):
        expected, got = expected.splitlines(), got.splitlines()
    if isinstance(expected, list) and isinstance(got, list):
        for index in range(max(len(expected), len(got))):
            a = repr(expected[index]) if index < len(expected) else "(nothing)"
            b = repr(got[index]) if index < len(got) else "(nothing)"
            if a != b:
                return f"line {index + 1}: expected {_short(a)}, got {_short(b)}"
    return f"expected {_short(repr(expected))}, got {_short(repr(got))}"


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def judge(program: Program, reference: ScriptRun, run: ScriptRun) -> Verdict:
    """Compare `run` with the `reference` run of the same program under the program's rule."""
    if program.by_design and run.flavour == "lucidity":
        if run.returncode != 0:
            return Verdict("fails", last_exception_line(run.stderr))
        problem = program.lucidity_check(run.stdout) if program.lucidity_check else None
        return Verdict("differs", f"by design: {program.by_design}" if problem is None else problem)
    if run.returncode != 0 and reference.returncode == 0:
        return Verdict("fails", last_exception_line(run.stderr))
    if run.returncode == 0 and reference.returncode != 0:
        return Verdict("differs", f"runs, where {reference.flavour} fails with "
                                  f"{_short(last_exception_line(reference.stderr))}")
    if run.returncode != 0:
        want, got = last_exception_line(reference.stderr), last_exception_line(run.stderr)
        if want != got:
            return Verdict("differs", f"fails with {_short(got)}, expected {_short(want)}")
    if program.rule.check is not None:
        for which in (run,) if run is reference else (run, reference):
            problem = program.rule.check(which.stdout)
            if problem is not None:
                prefix = "" if which is run else f"(the {reference.flavour} reference) "
                return Verdict("differs", prefix + problem)
    expected, got = program.rule.normalize(reference.stdout), program.rule.normalize(run.stdout)
    if expected != got:
        return Verdict("differs", _first_difference(expected, got))
    return Verdict("same")


# ---- rules -------------------------------------------------------------------------------------------

EXACT = Rule("exact")


def _substitute(*pairs: tuple[str, str], sort: bool = False) -> Callable[[str], object]:
    compiled = [(re.compile(pattern, re.MULTILINE), replacement) for pattern, replacement in pairs]

    def normalize(text: str) -> object:
        for pattern, replacement in compiled:
            text = pattern.sub(replacement, text)
        return sorted(text.splitlines()) if sort else text
    return normalize


_WORKER_NAME = (r"\b\w*PoolWorker-\d+\b", "PoolWorker-N")


def _docs_pool_workers(text: str) -> object:
    lines = text.splitlines()
    if len(lines) < 16:
        return lines
    # line 0: map; 1-10: imap_unordered in any order; 11: f(20); 12: a pid; 13: four pids.
    return ([lines[0]] + sorted(lines[1:11]) + [lines[11], re.sub(r"^\d+$", "<pid>", lines[12]),
            re.sub(r"\d+", "<pid>", lines[13])] + lines[14:])


def _docs_pool_errors(text: str) -> object:
    lines = str(_substitute(_WORKER_NAME)(text)).splitlines()
    title = "Unordered results using pool.imap_unordered():"
    if title not in lines:
        return lines
    start = lines.index(title) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[:start] + sorted(lines[start:end]) + lines[end:]


def _pi_estimates(text: str) -> Optional[str]:
    try:
        estimates = ast.literal_eval(text.splitlines()[0])
    except (IndexError, ValueError, SyntaxError):
        return "no list of estimates printed"
    if len(estimates) != 5:
        return f"{len(estimates)} estimates, expected 5"
    # Two independent estimates of 100,000 points coincide about once in 50 runs (they are multiples of
    # 4e-5, spread about 5e-3); shared streams make all five equal.
    if len(set(estimates)) < 4:
        return f"estimates repeat: {estimates}"
    far = [e for e in estimates if abs(e - math.pi) > 0.1]
    return f"estimates far from pi: {far}" if far else None


def _random_values(text: str) -> Optional[str]:
    values = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("value:")]
    if len(values) != 10:
        return f"{len(values)} values, expected 10"
    if len(set(values)) != 10:
        return f"only {len(set(values))} distinct values of 10"
    return None if all(0 <= v < 1 for v in values) else f"values out of [0, 1): {values}"


def _dice_tallies(text: str) -> Optional[str]:
    try:
        tallies = [tuple(ast.literal_eval(line)) for line in text.splitlines()]
    except (ValueError, SyntaxError):
        return "tallies not printed as lists"
    if len(tallies) != 6 or any(sum(t) != 2000 or 0 in t for t in tallies):
        return f"tallies malformed: {tallies}"
    return None if len(set(tallies)) == 6 else f"only {len(set(tallies))} distinct tallies of 6 (repeated draws)"


def _worker_identity(text: str) -> Optional[str]:
    names = set()
    for line in text.splitlines():
        match = re.fullmatch(r"(\d+) (\S+) (\(.*\))", line)
        if not match:
            return f"unexpected line {_short(line)}"
        name, identity = match[2], ast.literal_eval(match[3])
        number = re.fullmatch(r"\w*PoolWorker-(\d+)", name)
        if not number:
            return f"task ran in {name!r}, not a pool worker"
        if not (isinstance(identity, tuple) and len(identity) == 1 and identity[0] == int(number[1])):
            return f"{name} has _identity {identity!r}"
        names.add(name)
    if len(names) > 2:
        return f"{len(names)} distinct workers in a pool of 2"
    return None


def _worker_identity_facts(text: str) -> object:
    return [line.split()[0] for line in text.splitlines()]


def _maxtasks_facts(text: str) -> object:
    return [line for line in text.splitlines() if not line.startswith("Starting ")]


def _maxtasks_check(text: str) -> Optional[str]:
    import multiprocessing
    starts = [line for line in text.splitlines() if line.startswith("Starting ")]
    bad = [line for line in starts if not re.fullmatch(r"Starting \w*PoolWorker-\d+", line)]
    if bad:
        return f"initializer printed {_short(bad[0])}"
    wanted = multiprocessing.cpu_count() * 2
    return None if len(starts) >= wanted else f"{len(starts)} initializer prints, expected at least {wanted}"


def _progress_facts(text: str) -> object:
    return [line for line in text.splitlines() if not line.startswith("Waiting for ")]


def _progress_check(text: str) -> Optional[str]:
    for line in text.splitlines():
        if line.startswith("Waiting for "):
            match = re.fullmatch(r"Waiting for (\d+) tasks to complete\.\.\.", line)
            if not match or not 1 <= int(match[1]) <= 20:
                return f"progress line {_short(line)}"
    return None


def _sorted_list_line(text: str) -> object:
    try:
        return sorted(ast.literal_eval(text.strip()))
    except (ValueError, SyntaxError):
        return text


def _lambda_squares(text: str) -> Optional[str]:
    return None if text == "[0, 1, 4, 9, 16]\n" else f"printed {_short(repr(text))}, expected the squares"


# ---- the manifest ------------------------------------------------------------------------------------

_NO_GUARD = "the stdlib's spawn children re-import the main script, which starts a pool at import"

PROGRAMS: list[Program] = [
    Program("docs_pool_intro", "CPython docs, multiprocessing: Introduction", EXACT),
    Program("docs_pool_workers", "CPython docs, multiprocessing: Using a pool of workers",
            Rule("imap_unordered lines as a set, pids as <pid>", _docs_pool_workers)),
    Program("docs_pool_errors", "CPython docs, multiprocessing: Examples (Using Pool)",
            Rule("worker names as PoolWorker-N, the unordered block as a set", _docs_pool_errors)),
    Program("docs_futures_primes", "CPython docs, concurrent.futures: ProcessPoolExecutor Example", EXACT),
    Program("docs_asyncio_executor", "CPython docs, asyncio: run_in_executor with a process pool", EXACT),
    Program("pymotw_pool", "PyMOTW-3, multiprocessing: Process Pools",
            Rule("worker names as PoolWorker-N, lines as a multiset", _substitute(_WORKER_NAME, sort=True)),
            suite=("fork", "spawn")),
    Program("pymotw_pool_maxtasks", "PyMOTW-3, multiprocessing: Process Pools (maxtasksperchild)",
            Rule("results exact; >= cpu_count()*2 'Starting <pool worker>' lines", _maxtasks_facts,
                 _maxtasks_check)),
    Program("pymotw_current_process", "PyMOTW-3, multiprocessing: Determining the Current Process",
            Rule("each task names a pool worker whose _identity matches", _worker_identity_facts,
                 _worker_identity), suite=("fork", "spawn")),
    Program("so_monte_carlo_pi", "Monte Carlo pi with `from random import random` (SuperFastPython et al.)",
            Rule("5 estimates, at least 4 distinct, each within 0.1 of pi", lambda text: None, _pi_estimates)),
    Program("sfp_random_values", "SuperFastPython, ProcessPoolExecutor guide: random() in tasks",
            Rule("10 distinct values in [0, 1)", lambda text: None, _random_values)),
    Program("so_dice_randint", "Stack Overflow: same random numbers in every process",
            Rule("6 distinct tallies of 2000 rolls", lambda text: None, _dice_tallies)),
    Program("so_initializer_global", "Stack Overflow 10117073: initializer sets `global param1`", EXACT,
            suite=("fork", "spawn")),
    Program("so_custom_exception", "Stack Overflow: exception class defined in the main script", EXACT,
            suite=("fork", "spawn")),
    Program("so_numpy_global_array", "Stack Overflow: large read-only module-level numpy array", EXACT,
            requires=("numpy",)),
    Program("so_print_in_task", "SuperFastPython / Stack Overflow: prints from initializer and tasks",
            Rule("lines as a multiset", _substitute(sort=True)), suite=("fork", "spawn")),
    Program("so_sys_argv_task", "Stack Overflow: sys.argv read in a task", EXACT, args=("3", "suffix"),
            suite=("fork", "spawn")),
    Program("so_tqdm_imap", "Stack Overflow 41920124: tqdm over Pool.imap", EXACT, requires=("tqdm",)),
    Program("so_tqdm_position", "tqdm parallel bars: position from current_process()._identity", EXACT,
            requires=("tqdm",)),
    Program("so_pool_progress", "Stack Overflow 5666576: progress from rs._number_left",
            Rule("'Waiting for N tasks' lines dropped after a range check", _progress_facts, _progress_check)),
    Program("so_no_main_guard", "Stack Overflow: a script without a __main__ guard (fork)", EXACT,
            stdlib_fails={"spawn": _NO_GUARD, "forkserver": _NO_GUARD}),
    Program("so_keyboard_interrupt", "Stack Overflow 1408356: Ctrl-C pattern (run without Ctrl-C)", EXACT),
    Program("so_lambda_executor", "Stack Overflow: lambda passed to ProcessPoolExecutor", EXACT,
            by_design="lucidity ships lambdas by value; the stdlib raises PicklingError",
            lucidity_check=_lambda_squares),
    Program("so_apply_async_callback", "Stack Overflow 8533318: apply_async with a callback",
            Rule("the printed list as a multiset", _sorted_list_line)),
    Program("so_starmap", "Stack Overflow 5442910: starmap, partial, zip/repeat", EXACT),
    Program("so_lock_argument", "Stack Overflow 25557686: a Lock passed to Pool.map", EXACT),
]
