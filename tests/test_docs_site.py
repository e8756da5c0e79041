"""The documentation site builds with `mkdocs build --strict`, and its API reference covers the public names.

`--strict` turns every warning into a failure: a broken link or anchor between pages, a docstring that
griffe cannot parse (an Args entry missing from the signature, a Raises line without a type), a page that
mkdocs.yml names but that does not exist. The build runs in a subprocess, as a developer would run it, into a
temporary directory; it takes about two seconds.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import lucidity

pytest.importorskip("mkdocs", reason="the documentation tools are in the test extra: pip install '.[test]'")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is in the test extra")

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Seconds the build may take; it takes about 2 s here, so this only bounds a hang.
BUILD_TIMEOUT = 90


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


def test_every_page_of_docs_is_built(site: pathlib.Path) -> None:
    pages = [p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md")]
    assert pages
    for page in pages:
        built = site / page.with_suffix("") / "index.html" if page.name != "index.md" else site / page.with_suffix(".html")
        assert built.exists(), f"docs/{page} was not built (looked for {built})"


def test_every_page_is_in_the_navigation(site: pathlib.Path) -> None:
    """Pages mkdocs.yml does not list are added under "More" by docs/nav_hook.py: none is an orphan."""
    home = (site / "index.html").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        target = page.relative_to(ROOT / "docs").with_suffix("").as_posix()
        target = target[:-len("index")].rstrip("/") if page.name == "index.md" else target
        if not target:
            continue
        assert f'href="{target}/"' in home, f"docs/{target}.md is missing from the site's navigation"


def test_the_api_reference_covers_every_public_name(site: pathlib.Path) -> None:
    reference = "".join(p.read_text() for p in (site / "reference").rglob("index.html"))
    documented = set(re.findall(r'id="lucidity\.[a-z_.]*\.([A-Za-z_]+)"', reference))
    public = {name for name in lucidity.__all__ if not name.startswith("__")}
    assert public <= documented, f"public names without an API reference entry: {sorted(public - documented)}"
    for method in ["map_async", "starmap_async", "apply_async"]:
        assert f'id="lucidity.pool.Pool.{method}"' in reference


def test_the_nav_hook_adds_pages_that_mkdocs_yml_does_not_list(tmp_path: pathlib.Path) -> None:
    """docs/nav_hook.py is what keeps a page added later (monitoring.md, ...) from being an orphan."""
    spec = importlib.util.spec_from_file_location("nav_hook", ROOT / "docs" / "nav_hook.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    for page in ["index.md", "pool.md", "monitoring.md", "guide/new.md", "reference/index.md"]:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text("# page\n")
    config = {"docs_dir": str(tmp_path), "nav": ["index.md", {"Use": [{"Pool": "pool.md"}]},
                                                {"API": ["reference/index.md"]}]}
    hook.on_config(config)
    assert config["nav"][-1] == {"More": ["guide/new.md", "monitoring.md"]}
