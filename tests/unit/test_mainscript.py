"""lucidity.mainscript.describe on scripts written to a temporary directory: whether workers import the
caller's main script, and which names its import defines. Nothing is run; the script is only parsed."""

from __future__ import annotations

import sys
import textwrap
import types
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Optional

from lucidity import mainscript
from lucidity.mainscript import MAIN_NAME, MainScript, describe

GUARDED = """
    import os, collections.abc as abc
    from pathlib import Path as P
    CONSTANT = 3
    first, (second, *rest) = 1, (2, 3)
    for index in range(2):
        pass
    with open(os.devnull) as handle:
        pass
    try:
        import numpy
    except ImportError as missing:
        numpy = None


    def task(x):
        inner = x
        return inner


    class Thing:
        attribute = 1

    square = lambda y: y * y

    if __name__ == "__main__":
        only_in_main = 1
        task(only_in_main)
    else:
        imported_only = 2
"""


def script(tmp_path: Path, source: str, name: str = "app.py", spec: Optional[ModuleSpec] = None) -> MainScript:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    main = types.ModuleType("__main__")
    main.__file__ = str(path)
    main.__spec__ = spec
    return describe(main)


def test_a_guarded_script_is_imported_and_its_top_level_names_are_known(tmp_path: Path) -> None:
    described = script(tmp_path, GUARDED)
    assert described.source is not None and described.reason == ""
    assert described.source.name == MAIN_NAME
    assert described.source.filename == str(tmp_path / "app.py")
    assert described.defined == {"os", "abc", "P", "CONSTANT", "first", "second", "rest", "index", "handle",
                                 "numpy", "missing", "task", "Thing", "square", "imported_only"}


def test_the_guard_may_be_written_either_way_round(tmp_path: Path) -> None:
    described = script(tmp_path, """
        def f(x):
            return x

        if "__main__" == __name__:
            f(1)
    """)
    assert described.source is not None and described.defined == {"f"}


def test_a_script_without_the_guard_is_filled_by_value(tmp_path: Path) -> None:
    described = script(tmp_path, """
        def f(x):
            return x

        if __name__ != "__main__":
            pass
        print(f(1))
    """)
    assert described.source is None and described.defined == frozenset()
    assert "__main__" in described.reason


def test_no_script_file_means_a_namespace_filled_by_value(tmp_path: Path) -> None:
    interactive = types.ModuleType("__main__")  # the REPL, a notebook, python -c
    described = describe(interactive)
    assert described.source is None and "not a script file" in described.reason
    assert script(tmp_path, "x = 1\n", name="app.pyw").source is None


def test_a_script_that_cannot_be_read_or_parsed_is_filled_by_value(tmp_path: Path) -> None:
    broken = script(tmp_path, "def f(:\n")
    assert broken.source is None and "cannot be parsed" in broken.reason
    missing = types.ModuleType("__main__")
    missing.__file__ = str(tmp_path / "gone.py")
    assert "cannot be read" in describe(missing).reason


def test_the_same_source_has_the_same_digest(tmp_path: Path) -> None:
    one, two, changed = (script(tmp_path, source, name) for source, name in [
        (GUARDED, "one.py"), (GUARDED, "two.py"), (textwrap.dedent(GUARDED) + "extra = 1\n", "changed.py")])
    assert one.source and two.source and changed.source
    assert one.source.digest == two.source.digest != changed.source.digest


def test_the_meta_carries_argv_start_method_and_which_source(tmp_path: Path) -> None:
    described = script(tmp_path, GUARDED, spec=ModuleSpec("pkg.app", None))
    assert described.argv == tuple(sys.argv) and described.package == "pkg"
    assert described.source is not None
    meta = described.entry().to_meta()
    assert meta == {"argv": list(sys.argv), "start": described.start_method, "filename": str(tmp_path / "app.py"),
                    "digest": described.source.digest, "package": "pkg"}
    unimported = describe(types.ModuleType("__main__")).entry().to_meta()
    assert set(unimported) == {"argv", "start"}


def test_this_process_is_not_importing_a_callers_script() -> None:
    assert mainscript.is_importing() is False
