"""What a client sends its workers, each thing once: functions serialized once per client, and in each batch
of tasks only what that worker lacks (the functions, the shipped packages, the caller's main script).

`FunctionCache` serves the caller threads (a face serializes its function before it submits); `Packer`
serves the client's I/O thread, which owns the `WorkerLink`s whose record of "what this worker has" it
updates. Nothing here touches a socket: a batch whose send failed is taken back with `Packed.undo`, so
the worker's record stays true.
"""

from __future__ import annotations

import collections
import inspect
import threading
import weakref
from typing import Any, Callable, NamedTuple, Sequence

from . import mainscript, messages, protocol, serialization, shipping
from .links import WorkerLink
from .task import FunctionRef, Task

__all__ = ["FunctionCache", "Packer", "Packed", "FUNCTION_CACHE_SIZE"]

#: Functions remembered per client (serialized once, then sent by digest).
FUNCTION_CACHE_SIZE = 256


class FunctionCache:
    """Each function serialized once per client, remembered by identity (weakly where possible)."""

    def __init__(self, main: mainscript.MainScript) -> None:
        self._main = main
        self._lock = threading.Lock()
        # id(function) -> (a way back to the function, its serialized form)
        self._functions: collections.OrderedDict[int, tuple[Callable[[], Any], FunctionRef]] = collections.OrderedDict()

    def get(self, function: Any) -> FunctionRef:
        """The function's serialized form; raises `SerializationError` if it cannot travel."""
        key = id(function)
        with self._lock:
            cached = self._functions.get(key)
            if cached is not None and cached[0]() is function:
                self._functions.move_to_end(key)
                return cached[1]
        data = serialization.dumps_function(function, self._main.defined)
        ref = FunctionRef(serialization.digest(data), data, serialization.call_repr(function)
                          if callable(function) else "initializer")
        if inspect.ismethod(function):
            return ref  # a bound method is a new object at every access, and would keep its instance alive
        try:
            holder: Callable[[], Any] = weakref.ref(function)
        except TypeError:
            holder = lambda: function  # noqa: E731 - builtins and tuples cannot be weakly referenced
        with self._lock:
            self._functions[key] = (holder, ref)
            while len(self._functions) > FUNCTION_CACHE_SIZE:
                self._functions.popitem(last=False)
        return ref


class Packed(NamedTuple):
    """A TASKS message for one worker, and how to take back what it would have taught the worker."""

    frames: list[Any]
    functions: tuple[str, ...]  # digests sent for the first time
    shipped: bool  # the shipped packages went with it
    main: bool  # the main script's entry went with it

    def undo(self, link: WorkerLink) -> None:
        """The message was never sent: the worker still lacks what it carried."""
        link.functions.difference_update(self.functions)
        if self.shipped:
            link.has_shipped = False
        if self.main:
            link.has_main = False


class Packer:
    """Builds the TASKS message for a batch, and the reply to a worker's FETCH of a module.

    Args:
        main: the caller's main script, as workers are to see it.
        modules: the client's module server (sources by content digest).
        ship: the packages sent to every worker with its first batch.
        sliced: cut large frames into slices (a cluster with a secret: only then do workers cap frame sizes).
    """

    def __init__(self, main: mainscript.MainScript, modules: shipping.ModuleServer,
                 ship: Sequence[shipping.ModuleSource], sliced: bool) -> None:
        self._main = main
        self._modules = modules
        self._ship = tuple(ship)
        self._sliced = sliced

    def tasks(self, link: WorkerLink, session: str, batch: list[Task]) -> Packed:
        """The TASKS message for `batch` on `link`, in the order `messages.Tasks` names its payload: shipped
        modules, the main script, functions, tasks. `session` is the node link's (see `NodeLink`)."""
        functions: list[FunctionRef] = []
        for task in batch:
            for ref in (task.function, task.initializer):
                if ref is not None and ref.digest not in link.functions:
                    link.functions.add(ref.digest)
                    functions.append(ref)
        layout, task_frames = protocol.pack_items([task.frames for task in batch])
        payload: list[Any] = []
        ship: tuple[messages.Module, ...] = ()
        shipping_now = bool(self._ship) and not link.has_shipped
        if shipping_now:
            link.has_shipped = True
            ship = tuple(module_entry(m) for m in self._ship)
            payload.extend(m.source for m in self._ship)
            link.modules.update(m.name for m in self._ship)
        main = None
        main_now = not link.has_main
        if main_now:
            # Each worker learns once how to give this client's tasks the caller's __main__ and argv.
            link.has_main = True
            main = self._main.entry()
            if self._main.source is not None:
                payload.append(self._main.source.source)
        modules = None
        if link.modules:
            digests = {name: self._modules.digest(name) for name in link.modules}
            # A module whose file is gone keeps the copy the worker has.
            modules = {name: digest for name, digest in digests.items() if digest is not None}
        payload.extend(ref.data for ref in functions)
        payload.extend(task_frames)
        digests_sent = tuple(ref.digest for ref in functions)
        body = messages.Tasks(session, digests_sent, tuple([task.spec() for task in batch]), tuple(layout), ship,
                              main, modules)
        return Packed(messages.encode(body, payload, sliced=self._sliced), digests_sent, shipping_now, main_now)

    def ready_for(self, link: WorkerLink, task: Task) -> bool:
        """The worker has all a task needs, so that a TASKS of it alone need carry nothing else (`lone`)."""
        return (link.has_main and (link.has_shipped or not self._ship) and not link.modules
                and task.function.digest in link.functions
                and (task.initializer is None or task.initializer.digest in link.functions))

    def lone(self, session: str, task: Task) -> list[Any]:
        """The TASKS message of one task for a worker `ready_for` it; changes no link (any thread may call)."""
        layout, frames = protocol.pack_items([task.frames])
        body = messages.Tasks(session, (), (task.spec(),), tuple(layout), (), None, None)
        return messages.encode(body, frames, sliced=self._sliced)

    def module(self, link: WorkerLink, name: str) -> list[Any]:
        """The reply to a worker's FETCH: the module's source, or why it cannot have it."""
        source, reason = self._modules.lookup(name)
        if source is None:
            return messages.encode(messages.Module(name, False, reason=reason))
        link.modules.add(name)
        return messages.encode(module_entry(source), [source.source], sliced=self._sliced)


def module_entry(source: shipping.ModuleSource) -> messages.Module:
    return messages.Module(source.name, True, source.is_package, source.filename, source.digest)
