"""Code shipping: module sources by content hash, and the workers' import hook.

Functions of importable modules travel by reference ("mymodule.f"), which is small and fast, but a node
may not have ``mymodule``. So a worker that fails to import a module through the normal machinery asks
the client that submitted the current task for its source::

    worker --FETCH {module}--> client      (only when the normal import found nothing)
    worker <--MODULE {name, digest, package} + [source]-- client

The worker keeps what it received, per client, by content digest. With every batch of tasks the client
sends the digests of the modules it shipped to that worker; a digest that changed (the user edited the
file) makes the worker forget the module, so the next task imports the new code. ``ship=[...]`` sends
named packages with the first batch instead of on demand.

Only pure-Python source is shipped. A module with compiled parts is refused, and the import error on the
node says which module is missing on which node, and how to fix it: install it there, or ship it.

A worker never asks for a name of the standard library (``sys.stdlib_module_names``), nor for the
interpreter probes the standard library makes (`INTERPRETER_PROBES`): it answers "no such module" itself.
The standard library imports such names only to learn where it runs (``from org.python.core import
PyStringMap`` in copy and pickle asks "is this Jython?"; ``import winreg``, ``_winapi``, ``nt`` and
``msvcrt`` ask "is this Windows?") and expects them to fail. Each used to cost a round trip to the client
the first time a worker loaded a function, two to four per worker (issue 11), each up to the worker's
FETCH_TIMEOUT (10 s) when the client was busy; and no client could ever have answered usefully: a
standard-library module the worker's own Python lacks belongs to another platform or another version,
and the client's copy would run one Python's standard library on another. For the same reason a user's
module that shadows a standard-library name is never fetched: install it on the node, or rename it.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

__all__ = ["ModuleSource", "ModuleServer", "ShippedFinder", "INTERPRETER_PROBES"]

_COMPILED = tuple(importlib.machinery.EXTENSION_SUFFIXES)

#: Top-level names the standard library imports to learn which interpreter or platform it runs on, and
#: which are not standard-library modules themselves: Jython's ``org.python.core`` (copy, pickle, xml.sax)
#: and ``java.lang`` (platform, xml.sax), Python 2's ``_winreg`` and OpenVMS's ``vms_lib`` (platform).
INTERPRETER_PROBES = frozenset({"org", "java", "_winreg", "vms_lib"})
#: The standard library's Windows-only modules: the probes to answer on a Python without
#: ``sys.stdlib_module_names`` (3.9).
_WINDOWS_MODULES = frozenset({"nt", "winreg", "_winapi", "msvcrt", "_overlapped", "winsound", "_msi", "msilib"})


class ModuleSource(NamedTuple):
    """One module's source as shipped: its name, whether it is a package, its file name and digest."""

    name: str
    is_package: bool
    filename: str
    digest: str
    source: bytes


class ModuleServer:
    """The client's side: finds the source of a module by name, and remembers digests by file state."""

    def __init__(self) -> None:
        self._by_stat: dict[tuple[str, int, int], str] = {}

    def lookup(self, name: str) -> tuple[Optional[ModuleSource], str]:
        """The module's source, or None and the reason it cannot be shipped."""
        import importlib.util

        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            return None, f"the client cannot find it either ({type(exc).__name__}: {exc})"
        if spec is None:
            return None, "the client cannot find it either"
        origin = spec.origin
        if origin is None or origin in ("built-in", "frozen") or not os.path.isfile(origin):
            return None, "it has no source file on the client (built-in, frozen or a namespace package)"
        if origin.endswith(_COMPILED):
            return None, f"it is a compiled extension ({os.path.basename(origin)}), which is never shipped"
        if not origin.endswith(".py"):
            return None, f"its file {os.path.basename(origin)} is not Python source"
        import hashlib

        with open(origin, "rb") as file:
            source = file.read()
        return ModuleSource(name, spec.submodule_search_locations is not None, origin,
                            hashlib.blake2b(source, digest_size=12).hexdigest(), source), ""

    def digest(self, name: str) -> Optional[str]:
        """The current digest of a module's source file, recomputed only when the file changed."""
        spec_module = sys.modules.get(name)
        origin = getattr(spec_module, "__file__", None)
        if origin is None:
            found, _ = self.lookup(name)
            return found.digest if found else None
        try:
            stat = os.stat(origin)
        except OSError:
            return None
        key = (origin, stat.st_mtime_ns, stat.st_size)
        digest = self._by_stat.get(key)
        if digest is None:
            found, _ = self.lookup(name)
            if found is None:
                return None
            digest = self._by_stat[key] = found.digest
        return digest

    def package_modules(self, names: Iterable[str]) -> list[ModuleSource]:
        """Every module of the named packages (or modules), for ``ship=[...]``."""
        import pkgutil

        found: list[ModuleSource] = []
        for name in names:
            source, reason = self.lookup(name)
            if source is None:
                raise ImportError(f"cannot ship {name!r}: {reason}")
            found.append(source)
            if source.is_package:
                path = [os.path.dirname(source.filename)]
                for info in pkgutil.walk_packages(path, prefix=name + "."):
                    sub, reason = self.lookup(info.name)
                    if sub is None:
                        raise ImportError(f"cannot ship {info.name!r}: {reason}")
                    found.append(sub)
        return found


class ShippedFinder:
    """The worker's side: a last-resort finder that imports modules shipped by the current task's client.

    ``fetch(name)`` asks the current client for a module and returns (source or None, reason).
    """

    def __init__(self, fetch: Callable[[str], tuple[Optional[ModuleSource], str]], node: str) -> None:
        self._fetch = fetch
        self._node = node
        self._store: dict[bytes, dict[str, ModuleSource]] = {}
        self._loaded: dict[str, tuple[bytes, str]] = {}  # module name -> (client, digest) now in sys.modules
        self._refused: dict[bytes, dict[str, str]] = {}
        self.client: Optional[bytes] = None

    # -- called by the worker ------------------------------------------------------------------------------

    def receive(self, client: bytes, modules: Sequence[ModuleSource]) -> None:
        store = self._store.setdefault(client, {})
        for module in modules:
            store[module.name] = module

    def prepare(self, client: bytes, manifest: Mapping[str, str]) -> bool:
        """Before running a task of `client`: forget modules that are stale for it. True if any was."""
        self.client = client
        stale = [name for name, (owner, digest) in self._loaded.items()
                 if owner != client or (name in manifest and manifest[name] != digest)]
        store = self._store.get(client, {})
        for name, digest in manifest.items():
            if name in store and store[name].digest != digest:
                del store[name]
        for name in stale:
            del self._loaded[name]
            sys.modules.pop(name, None)
        return bool(stale)

    def explain(self, error: BaseException) -> BaseException:
        """Turn a ModuleNotFoundError for a module the client could not ship into one that says why."""
        if not isinstance(error, ModuleNotFoundError) or self.client is None:
            return error
        name = error.name or ""
        local = _never_fetched(name)
        if local:
            explained = ModuleNotFoundError(
                f"No module named {name!r} on node {self._node} (worker {os.getpid()}): {local}; a worker never "
                f"fetches such a module from the client. Install it on the node, if its platform has it.",
                name=error.name)
            explained.__cause__ = error
            return explained
        reason = self._refused.get(self.client, {}).get(name)
        if reason is None:
            return error
        top = name.split(".")[0]
        shippable = not any(word in reason for word in ("compiled", "namespace", "built-in", "not Python source"))
        fix = f"Install it on the node, or ship it with ship=[{top!r}]." if shippable else "Install it on the node."
        explained = ModuleNotFoundError(
            f"No module named {name!r} on node {self._node} (worker {os.getpid()}): it is not installed "
            f"there, and the client could not ship it: {reason}. {fix}", name=error.name)
        explained.__cause__ = error
        return explained

    # -- the import protocol -------------------------------------------------------------------------------

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        client = self.client
        if client is None:
            return None
        store = self._store.setdefault(client, {})
        module = store.get(fullname)
        if module is None:
            refused = self._refused.setdefault(client, {})
            if fullname in refused or _never_fetched(fullname):
                return None
            module, reason = self._fetch(fullname)
            if module is None:
                refused[fullname] = reason
                return None  # the import system raises ModuleNotFoundError; `explain` adds the reason
            store[fullname] = module
        # A meta path finder and loader by protocol (no importlib.abc: workers import as little as they can).
        return importlib.machinery.ModuleSpec(fullname, self, origin=f"shipped:{module.filename}",  # type: ignore[arg-type]
                                              is_package=module.is_package)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        client = self.client
        if client is None:
            raise ImportError(f"{module.__name__} was requested outside a task")
        source = self._store[client][module.__name__]
        module.__file__ = source.filename
        self._loaded[module.__name__] = (client, source.digest)
        exec(compile(source.source, source.filename, "exec"), module.__dict__)


def _never_fetched(name: str) -> str:
    """Why a worker answers an import of `name` itself instead of asking the client; "" if it may ask."""
    top = name.partition(".")[0]
    if top in INTERPRETER_PROBES:
        return "it exists only on another Python implementation or platform (a probe of the standard library)"
    if top in getattr(sys, "stdlib_module_names", _WINDOWS_MODULES):
        return (f"it belongs to the standard library, but not to this node's Python "
                f"({sys.platform}, {sys.version.split()[0]})")
    return ""
