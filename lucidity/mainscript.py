"""The caller's main script as workers see it: imported as ``__mp_main__``, or a namespace filled by value.

multiprocessing's spawn and forkserver start methods (the Linux default from Python 3.14) give each worker
the caller's main script by importing it as ``__mp_main__``, its ``if __name__ == "__main__":`` block not
run; functions and classes of the script then travel by name, share one namespace in the worker (globals
an initializer sets are seen by tasks), and keep their identity (an exception class raised in a worker is
caught by ``except`` in the caller). lucidity does the same, per client:

- On the client, `describe` decides once per process whether the script can be imported: it must be a
  file, and the script must keep its pool-starting code under the ``__main__`` guard. A script without the
  guard runs today (and under fork), and importing it again would run its pools and writes again; so, as
  for code typed into a REPL or a notebook, the worker gets an empty namespace instead, which the client
  fills by value (`lucidity.serialization` sends each definition once and installs it by name).
- On the worker (`lucidity.node.namespaces`), each client has its own ``__main__``: the script's source,
  received with the client's first batch, is executed when a task first needs it, and the active client's
  module is swapped into ``sys.modules`` (with its ``sys.argv``) before each task.
- On an embedded cluster, the node daemon's worker template runs the script once before it forks the
  workers (`lucidity.node.preload`, from `preload_record`), and the caller's client adopts that namespace
  in each worker, which then pays nothing for the script or its imports: as forkserver's preload.

Names the script binds only inside its ``__main__`` block do not exist in an imported script (spawn raises
NameError for them); lucidity sends those a task reads by value, as fork would have them.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Optional

from .messages import MainEntry
from .shipping import ModuleSource

__all__ = ["MainScript", "describe", "is_importing", "preload_record", "read_preload_record", "MAIN_NAME"]

#: The module name workers give the caller's main script, as multiprocessing's spawn does.
MAIN_NAME = "__mp_main__"
#: `sysconfig` paths of installed code: a main script under one is not preloaded (`preload_record`).
_INSTALLED_PATHS = ("stdlib", "platstdlib", "purelib", "platlib")


@dataclass(frozen=True)
class MainScript:
    """What workers need to recreate the caller's ``__main__``.

    Attributes:
        argv: the caller's ``sys.argv``, which tasks see as theirs.
        source: the script, when workers import it as ``__mp_main__``; None when they get a namespace
            filled by value (no script file, no ``__main__`` guard, or pools started by top-level code).
        package: for ``python -m pkg.mod``, the package relative imports resolve against.
        defined: names the import defines (its top-level bindings outside the guard, and in the guard's
            ``else``); empty without a source.
        start_method: the caller's multiprocessing start method, which names the workers.
        reason: why the script is not imported, for the docs and the debug log.
    """

    argv: tuple[str, ...]
    source: Optional[ModuleSource]
    package: Optional[str]
    defined: frozenset[str]
    start_method: str
    reason: str = ""

    def entry(self) -> MainEntry:
        """The ``main`` entry of a TASKS message (the source, if any, travels as a payload frame)."""
        if self.source is None:
            return MainEntry(self.argv, self.start_method)
        return MainEntry(self.argv, self.start_method, self.source.filename, self.source.digest, self.package or "")


def preload_record(script: MainScript) -> Optional[bytes]:
    """What the node daemon of an embedded cluster needs to run the script once in its worker template
    (`lucidity.node.preload`): its main entry and source, as JSON; None if workers get no script, or if
    the script belongs to an installed package or the standard library (``python -m pytest``): a tool's
    entry point, not the caller's program, whose tasks seldom need it and whose import would then be paid
    by every pool for nothing."""
    if script.source is None:
        return None
    import sysconfig

    installed = {path for key, path in sysconfig.get_paths().items() if key in _INSTALLED_PATHS}
    if any(script.source.filename.startswith(path + os.sep) for path in installed):
        return None
    record = {"main": script.entry().to_meta(), "source": base64.b64encode(script.source.source).decode()}
    return json.dumps(record).encode()


def read_preload_record(data: bytes) -> tuple[MainEntry, bytes]:
    """The main entry and source `preload_record` wrote."""
    record = json.loads(data)
    return MainEntry.from_meta(record["main"], "a preload record"), base64.b64decode(record["source"])


def describe(main: Optional[types.ModuleType] = None) -> MainScript:
    """Decide how workers get the caller's ``__main__`` (see the module docstring).

    Called when a client starts, from the thread that starts it: if that happens in the script's top-level
    code outside the ``__main__`` guard, importing the script would start pools again, so it is not imported.
    """
    if main is None:
        main = sys.modules["__main__"]
    argv = tuple(str(a) for a in sys.argv)
    start = _start_method()
    filename = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if not isinstance(filename, str) or not filename.endswith(".py"):
        return MainScript(argv, None, None, frozenset(), start, "the main module is not a script file")
    try:
        with open(filename, "rb") as file:
            source = file.read()
    except OSError as exc:
        return MainScript(argv, None, None, frozenset(), start, f"the script cannot be read: {exc}")
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError) as exc:
        return MainScript(argv, None, None, frozenset(), start, f"the script cannot be parsed: {exc}")
    guards = [node for node in tree.body if _is_main_guard(node)]
    if not guards:
        return MainScript(argv, None, None, frozenset(), start, 'the script has no `if __name__ == "__main__":`')
    line = _top_level_line(main)
    if line is not None and not any(g.lineno <= line <= (g.end_lineno or g.lineno) for g in guards):
        return MainScript(argv, None, None, frozenset(), start,
                          "the pool was started by the script's top-level code, outside its __main__ block")
    import hashlib

    defined: set[str] = set()
    for node in tree.body:
        for statement in (node.orelse if node in guards else [node]):  # type: ignore[attr-defined]
            _Bindings(defined).visit(statement)
    package = getattr(spec, "parent", None) or None
    module = ModuleSource(MAIN_NAME, False, filename, hashlib.blake2b(source, digest_size=12).hexdigest(), source)
    return MainScript(argv, module, package, frozenset(defined), start)


def _start_method() -> str:
    # The first method listed is the platform's default; get_start_method() would fix the caller's choice.
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def _is_main_guard(node: Any) -> bool:
    """``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return has_name and has_main


def _top_level_line(main: types.ModuleType) -> Optional[int]:
    """The line the script's top-level code is at, if it is running now (on this thread's stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            return frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


class _Bindings(ast.NodeVisitor):
    """Collects the names a module-level statement binds, without entering functions, classes or lambdas."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.names.add(node.id)

    def _definition(self, node: Any) -> None:
        self.names.add(node.name)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _definition

    def visit_Lambda(self, node: ast.Lambda) -> None:
        pass

    def visit_Import(self, node: Any) -> None:
        for alias in node.names:
            self.names.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)


def is_importing() -> bool:
    """True while this process (a worker) is importing a caller's main script, which must not start pools."""
    return bool(getattr(sys.modules.get("__main__"), "_lucidity_is_loading", False))
