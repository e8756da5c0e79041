"""mkdocs hook: every page under docs/ is in the navigation, even one that mkdocs.yml does not list yet.

Engineers add pages (monitoring.md, dashboard.md, ...) while others edit mkdocs.yml; a page left out of
`nav` would be built but reachable only by search. This hook appends such pages under "More", in path
order, so the site stays whole and `mkdocs build --strict` needs no edit of mkdocs.yml to pass.
"""

from __future__ import annotations

import pathlib
from typing import Any


def _listed(nav: Any) -> set[str]:
    """The page paths a nav (nested lists and one-key dicts) names."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(value) for value in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_listed(item) for item in nav)) if nav else set()
    return set()


def on_config(config: Any) -> Any:
    nav = config.get("nav")
    if not nav:
        return config
    docs = pathlib.Path(config["docs_dir"])
    listed = _listed(nav)
    missing = sorted(str(path.relative_to(docs)) for path in docs.rglob("*.md")
                     if str(path.relative_to(docs)) not in listed)
    if missing:
        nav.append({"More": missing})
    return config
