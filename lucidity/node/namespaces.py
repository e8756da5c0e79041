"""A worker's ``__main__`` per client: the caller's script imported as ``__mp_main__``, or a namespace by value.

See `lucidity.mainscript` for the client's side and why. Here, each client connection has a `ClientMain`
module; `MainNamespaces.activate` makes it ``sys.modules["__main__"]`` (and ``"__mp_main__"``) and sets
``sys.argv`` to the caller's before each of its tasks, which costs two dictionary stores. The script itself
runs the first time a task needs a name of it (`lucidity.serialization` calls `ClientMain._lucidity_load`),
so a client whose tasks live in importable modules never pays for its script.
"""

from __future__ import annotations

import builtins
import collections
import enum
import sys
import types
from typing import Optional

from ..messages import MainEntry
from ..shipping import ModuleSource

__all__ = ["ClientMain", "MainNamespaces"]

#: The module name of a caller's main script in a worker, as multiprocessing's spawn gives it.
MAIN_NAME = "__mp_main__"
#: Clients whose namespaces a worker keeps; the least recently active is forgotten first, and its client
#: sends its main entry again when the worker asks (MISSING).
MAX_CLIENTS = 16


class _LoadState(enum.Enum):
    EMPTY = "empty"  # a script not run yet
    LOADING = "loading"
    LOADED = "loaded"  # run, or a namespace filled by value (no script)
    FAILED = "failed"


class ClientMain(types.ModuleType):
    """One client's ``__main__`` in a worker: its script, run on first use, or a namespace filled by value.

    The bookkeeping lives in slots, outside the script's namespace; `_lucidity_load` is looked up on the
    type by `lucidity.serialization`, so that no global of the script can shadow it.
    """

    __slots__ = ("_lucidity_client", "_lucidity_argv", "_lucidity_start", "_lucidity_source", "_lucidity_state",
                 "_lucidity_error", "_lucidity_initialized")

    def __init__(self, client: str, argv: list[str], source: Optional[ModuleSource], package: str,
                 start_method: str = "") -> None:
        super().__init__(MAIN_NAME)
        self.__dict__["__builtins__"] = builtins
        if source is not None:
            self.__dict__.update(__file__=source.filename, __package__=package or None)
        self._lucidity_client = client
        self._lucidity_argv = argv
        self._lucidity_start = start_method
        self._lucidity_source = source
        self._lucidity_state = _LoadState.EMPTY if source is not None else _LoadState.LOADED
        self._lucidity_error: Optional[BaseException] = None
        # Digests of the initializers that ran for this client here: once per worker and pool, as the stdlib.
        self._lucidity_initialized: set[str] = set()

    @property
    def _lucidity_is_loading(self) -> bool:
        return self._lucidity_state is _LoadState.LOADING

    def _lucidity_load(self) -> None:
        """Run the script as ``__mp_main__`` the first time a task needs it; a failure is kept and re-raised."""
        state = self._lucidity_state
        if state is _LoadState.LOADED or state is _LoadState.LOADING:
            return
        source = self._lucidity_source
        if source is None:
            return
        if state is _LoadState.FAILED:
            raise ImportError(f"the main script {source.filename} could not be imported as {MAIN_NAME} in this "
                              "worker; the cause is the error it raised the first time") from self._lucidity_error
        self._lucidity_state = _LoadState.LOADING
        try:
            exec(compile(source.source, source.filename, "exec"), self.__dict__)
        except BaseException as exc:
            self._lucidity_state = _LoadState.FAILED
            self._lucidity_error = exc
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(f"(raised while a lucidity worker imported the main script {source.filename} as "
                         f"{MAIN_NAME}, as multiprocessing's spawn start method does; code that must not run "
                         "in workers belongs under `if __name__ == \"__main__\":`)")
            raise
        self._lucidity_state = _LoadState.LOADED


#: The caller's script as the worker template ran it (`preload`), until the client it belongs to adopts it.
_preloaded: Optional[ClientMain] = None


def preload(main: MainEntry, source: bytes) -> None:
    """Run a caller's script as a worker would the first time a task needs it, in the worker template of its
    embedded cluster (`lucidity.node.preload`), so that workers forked afterwards hold it and the modules it
    imported; the first of their clients whose script it is adopts the namespace (`MainNamespaces.receive`).

    Raises:
        whatever the script raised (its workers will then import it themselves).
    """
    global _preloaded
    module = ClientMain("", list(main.argv), ModuleSource(MAIN_NAME, False, main.filename or "", main.digest, source),
                        main.package, main.start)
    own_main, own_argv = sys.modules.get("__main__"), sys.argv[:]
    sys.modules["__main__"] = sys.modules[MAIN_NAME] = module
    sys.argv[:] = module._lucidity_argv
    try:
        module._lucidity_load()
    finally:
        if own_main is not None:
            sys.modules["__main__"] = own_main
        sys.modules.pop(MAIN_NAME, None)
        sys.argv[:] = own_argv
    _preloaded = module


class MainNamespaces:
    """A worker's ``__main__`` per client connection, swapped into ``sys.modules`` before each task."""

    def __init__(self) -> None:
        self._by_identity: collections.OrderedDict[bytes, ClientMain] = collections.OrderedDict()
        self._active: Optional[ClientMain] = None
        self._own_main = sys.modules.get("__main__")  # the worker's entry module, kept alive

    def receive(self, identity: bytes, client: str, main: MainEntry, source: Optional[bytes]) -> None:
        """A client's ``main`` entry (`lucidity.mainscript.MainScript.entry`) and the script, if sent."""
        global _preloaded
        argv = list(main.argv)
        module = None
        if source is not None:
            module = ModuleSource(MAIN_NAME, False, main.filename or "", main.digest, source)
        previous = self._by_identity.get(identity)
        if previous is not None and previous._lucidity_source == module and previous._lucidity_argv == argv:
            return  # the same script again: keep its namespace
        adopted = _preloaded
        if (adopted is not None and module is not None and adopted._lucidity_source == module
                and adopted._lucidity_argv == argv and adopted._lucidity_start == main.start
                and adopted.__dict__.get("__package__") == (main.package or None)):
            _preloaded = None  # one client's namespace: the first whose script it is
            adopted._lucidity_client = client
            self._by_identity[identity] = adopted
        else:
            self._by_identity[identity] = ClientMain(client, argv, module, main.package, main.start)
        if previous is not None and previous is self._active:
            self._active = None
        while len(self._by_identity) > MAX_CLIENTS:
            _, forgotten = self._by_identity.popitem(last=False)
            if forgotten is self._active:
                self._active = None

    def initialized(self, identity: bytes) -> set[str]:
        """The initializers that ran for this connection's client (a new namespace runs them again)."""
        return self._by_identity[identity]._lucidity_initialized

    def knows(self, identity: bytes) -> bool:
        """Whether this connection's main entry is here (else the worker asks its client to send it again)."""
        return identity in self._by_identity

    def activate(self, identity: bytes) -> Optional[str]:
        """Make this connection's ``__main__`` and ``sys.argv`` current; if they changed, the caller's start
        method (which names the worker), else None."""
        main = self._by_identity[identity]
        if main is self._active:
            return None
        self._by_identity.move_to_end(identity)
        self._active = main
        sys.modules["__main__"] = sys.modules[MAIN_NAME] = main
        sys.argv[:] = main._lucidity_argv
        return main._lucidity_start

    def drop(self, client: str) -> None:
        """Forget the namespaces of a client that went away."""
        for identity, main in list(self._by_identity.items()):
            if main._lucidity_client == client:
                del self._by_identity[identity]
                if main is self._active:
                    self._active = None
