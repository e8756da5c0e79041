"""Objects to bytes and back: the only importer of pickle, dill and tblib.

Three kinds of things cross between processes, each serialized its own way:

- *functions* (and initializers) go with dill, so lambdas and closures travel by value. A function is
  serialized once per client and identified by the digest of its bytes, so a worker can cache it.
- *data* (arguments and results) goes with the C pickler, protocol 5. Large buffers (numpy arrays,
  bytearrays wrapped in PickleBuffer) come out of band as their own frames, so they cross without a
  serialization copy. Data that only dill can handle (a lambda inside the arguments) falls back to dill.
- *exceptions* go with their traceback frames (tblib), and fall back to `RemoteError` when the exception
  itself cannot travel.

The caller's ``__main__`` is special (see `lucidity.mainscript`): a worker has one namespace per client for
it, the caller's script imported as ``__mp_main__`` or filled by value. `_MainPickler` maps the caller's
main module onto that namespace: a function or class the import defines travels by name; one it does not
(or every one, when the script is not imported) travels by value once and is installed there by name, so
that it keeps one identity in the worker; a by-value function's globals *are* the namespace; the globals a
function reads that the import does not define travel with it and are set there unless already set (an
initializer's ``global`` stays). A bound method of a module-level object (``random.random``, numpy's global
``RandomState`` methods) travels by name, so that each worker draws from its own generator.

Everything here knows objects and buffers, not frames or sockets: the caller puts the returned buffers in
messages.
"""

from __future__ import annotations

import copyreg
import functools
import io
import pickle
import sys
import types
from typing import Any, Callable, Container, Optional, Sequence

from . import errors

__all__ = [
    "dumps_function",
    "loads_function",
    "digest",
    "dumps",
    "loads",
    "dumps_exception",
    "loads_exception",
    "EVERYTHING",
]

PROTOCOL = 5
Buffer = Any  # bytes, memoryview, PickleBuffer or zmq.Frame


def _dill() -> Any:
    # dill costs tens of milliseconds to import; the C pickler handles most payloads without it.
    import dill

    return dill


def digest(data: bytes) -> str:
    """A short content hash naming a serialized function, for caches on both sides."""
    import hashlib  # here, not at the top: workers only read digests

    return hashlib.blake2b(data, digest_size=12).hexdigest()


class _Everything:
    """A container holding every name: the peer's ``__main__`` defines whatever ours does (a worker's view)."""

    def __contains__(self, name: object) -> bool:
        return True


#: For `dumps` in a worker: every name of its ``__main__`` exists in the caller's, so all travel by name.
EVERYTHING: Container[str] = _Everything()


def dumps_function(function: Any, defined_in_main: Container[str] = frozenset()) -> bytes:
    """Serialize a callable (or a callable with its arguments, such as an initializer) by value where needed.

    Args:
        defined_in_main: names of the caller's ``__main__`` that the worker's own import of the script
            defines (`lucidity.mainscript.MainScript.defined`); the rest travel by value.

    Raises:
        The pickler's own exception, with a note naming the function (``pickle.PicklingError``,
        ``TypeError``...): nothing has been sent.
    """
    try:
        return _dumps_main_aware(function, defined_in_main, None)[0]
    except Exception as exc:
        raise _explained(exc, f"lucidity cannot send the function {_describe(function)} to its workers") from None


def loads_function(data: Buffer) -> Any:
    """Rebuild a callable serialized by `dumps_function`.

    The C unpickler reads dill's output: a function sent by reference loads without importing dill at all
    (a worker stays small), and one sent by value imports the parts of dill it needs by itself.
    """
    return pickle.loads(data)


def dumps(obj: Any, what: str = "object", defined_in_main: Container[str] = frozenset()) -> list[Buffer]:
    """Serialize data to ``[pickle_bytes, *out_of_band_buffers]``.

    Args:
        obj: the value.
        what: how to name the value in an error, e.g. "items 0..9".
        defined_in_main: as for `dumps_function`; `EVERYTHING` in a worker, whose ``__main__`` names are
            all the caller's too.

    Raises:
        The pickler's own exception (what multiprocessing raises for it), with a note naming ``what``;
        nothing has been sent.
    """
    buffers: list[Buffer] = []
    first_error: Optional[Exception] = None
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
        # Objects of the caller's __main__ pickle by reference, which a worker can resolve only for names its
        # import of the script defines. The marker can only appear in the (small) in-band bytes.
        if defined_in_main is EVERYTHING or b"__main__" not in data:
            return [data, *[buffer.raw() for buffer in buffers]] if buffers else [data]
    except Exception as exc:
        first_error = exc
    try:
        data, buffers = _dumps_main_aware(obj, defined_in_main, True)
    except Exception as exc:
        raise _explained(first_error or exc, f"lucidity cannot send {what} ({_describe(obj)}) to its workers"
                         ) from None
    return [data, *(buffer.raw() for buffer in buffers)]


def _explained(error: Exception, explanation: str) -> Exception:
    """The pickler's exception itself, its type intact, with lucidity's explanation added as a note."""
    add_note = getattr(error, "add_note", None)  # Python 3.11+
    if add_note is not None:
        add_note(f"({explanation}; nothing was sent)")
    return error


def _dumps_main_aware(obj: Any, defined_in_main: Container[str],
                      out_of_band: Optional[bool]) -> tuple[bytes, list[Any]]:
    """dill with the caller's ``__main__`` mapped onto the worker's namespace (see the module docstring)."""
    buffers: list[Any] = []
    main = sys.modules["__main__"].__dict__
    pickler_class = _main_pickler_class()
    extras = {name: main[name] for name in sorted(_globals_read(obj, main)) if name not in defined_in_main}
    payload = _WithGlobals(extras, obj) if extras else obj
    stream = io.BytesIO()
    pickler = pickler_class(stream, main, defined_in_main, None, buffers.append if out_of_band else None)
    pickler.dump(payload)
    return stream.getvalue(), buffers


class _WithGlobals:
    """Pickles as a call that sets the globals a function reads in the worker's namespace, then gives it."""

    def __init__(self, extras: dict[str, Any], obj: Any) -> None:
        self.extras = extras
        self.obj = obj

    def __reduce__(self) -> Any:
        return _with_globals, (self.extras, self.obj)


def _with_globals(extras: dict[str, Any], obj: Any) -> Any:
    namespace = _main_namespace()
    for name, value in extras.items():
        namespace.setdefault(name, value)
    return obj


def _main_namespace() -> dict[str, Any]:
    """This process's ``__main__`` namespace; in a worker, the current client's (its script run if needed)."""
    main = sys.modules["__main__"]
    load = getattr(type(main), "_lucidity_load", None)
    if load is not None:
        load(main)
    return main.__dict__


def _main_global(name: str, definition: Optional[bytes]) -> Any:
    """A top-level function or class of the caller's main script, by name; by value if the import lacks it."""
    namespace = _main_namespace()
    if definition is None:
        try:
            return namespace[name]
        except KeyError:
            raise AttributeError(f"the main script, imported as __mp_main__ in this worker, defines no {name!r}"
                                 ) from None
    existing = namespace.get(name)
    if existing is not None:
        return existing
    value = pickle.loads(definition)
    return namespace.setdefault(name, value)


def _module_attribute(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def _globals_read(obj: Any, main: dict[str, Any]) -> set[str]:
    """Names of ``main`` that functions of ``main`` reachable from ``obj`` read, transitively."""
    found: set[str] = set()
    seen: set[int] = set()
    stack = [obj]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, tuple):
            stack.extend(current)
        elif isinstance(current, types.MethodType):
            stack.append(current.__func__)
        elif isinstance(current, type) and current.__module__ in _MAIN_NAMES:
            stack.extend(current.__dict__.values())
        elif isinstance(current, (staticmethod, classmethod)):
            stack.append(current.__func__)
        elif isinstance(current, property):
            stack.extend(f for f in (current.fget, current.fset, current.fdel) if f is not None)
        elif isinstance(current, types.FunctionType) and current.__globals__ is main:
            for name in _names_in_code(current.__code__):
                if name in main and not (name.startswith("__") and name.endswith("__")):
                    if name not in found:
                        found.add(name)
                        stack.append(main[name])
            stack.extend(current.__defaults__ or ())
            stack.extend(cell.cell_contents for cell in current.__closure__ or () if _cell_is_set(cell))
    return found


_MAIN_NAMES = ("__main__", "__mp_main__")
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"})


def _names_in_code(code: types.CodeType) -> set[str]:
    import dis

    names: set[str] = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_OPS:
            names.add(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_in_code(const)
    return names


def _cell_is_set(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _main_pickler_class() -> type:
    """`_MainPickler`, built on first use: dill costs tens of milliseconds to import."""
    dill = _dill()

    class _MainPickler(dill.Pickler):  # type: ignore[misc, name-defined]
        """dill, with the caller's ``__main__`` mapped onto the worker's namespace (see the module docstring)."""

        def __init__(self, file: Any, main: dict[str, Any], defined: Container[str], skip: Any,
                     buffer_callback: Optional[Callable[[Any], Any]]) -> None:
            super().__init__(file, protocol=PROTOCOL, recurse=True, buffer_callback=buffer_callback)
            self._namespace = main
            self._defined_names = defined
            self._by_value = skip

        def reducer_override(self, obj: Any) -> Any:
            if obj is self._namespace:
                return _main_namespace, ()
            kind = type(obj)
            if kind is types.FunctionType:
                # Only a function whose globals are __main__'s keeps them by reference (the namespace).
                self._recurse = obj.__globals__ is not self._namespace
                if obj.__module__ in _MAIN_NAMES and obj is not self._by_value:
                    return self._namespace_object(obj)
            elif isinstance(obj, type):
                if obj.__module__ in _MAIN_NAMES and obj is not self._by_value:
                    return self._namespace_object(obj)
            elif kind is types.MethodType or kind is types.BuiltinMethodType:
                return self._module_level(obj)
            return NotImplemented

        def _namespace_object(self, obj: Any) -> Any:
            name = getattr(obj, "__qualname__", "")
            if self._namespace.get(name) is not obj:
                return NotImplemented  # nested, local or renamed: by value, inline
            if name in self._defined_names:
                return _main_global, (name, None)
            stream = io.BytesIO()
            type(self)(stream, self._namespace, self._defined_names, obj, None).dump(obj)
            return _main_global, (name, stream.getvalue())

        def _module_level(self, method: Any) -> Any:
            owner = getattr(method, "__self__", None)
            if owner is None or isinstance(owner, types.ModuleType):
                return NotImplemented
            name = getattr(method, "__name__", None)
            for module_name in (getattr(method, "__module__", None), type(owner).__module__):
                module = sys.modules.get(module_name) if isinstance(module_name, str) else None
                if module is not None and name and module_name not in _MAIN_NAMES \
                        and getattr(module, name, None) is method:
                    return _module_attribute, (module_name, name)
            return NotImplemented

    return _MainPickler


def loads(frames: Sequence[Buffer]) -> Any:
    """Rebuild data from the frames `dumps` produced; out-of-band buffers are used in place."""
    return pickle.loads(frames[0], buffers=frames[1:])


def dumps_exception(exc: BaseException, skip_frames_of: str = "") -> list[Buffer]:
    """Serialize an exception raised by a task: the exception with its traceback frames, and the text.

    The exception is checked by loading it back, because some exceptions pickle but cannot be rebuilt
    (an ``__init__`` taking two arguments, say). Anything that does not survive becomes a `RemoteError`
    holding the type name, the message and the formatted traceback.

    Args:
        skip_frames_of: a file name (the worker's own module) whose frames at the head of the traceback
            are left out of the text: the caller wants the task's frames, not the worker loop's.
    """
    import traceback  # only when a task failed

    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == skip_frames_of:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        data = _pickle_with_traceback(exc, text)
        pickle.loads(data)
        return [data]
    except Exception as failure:
        substitute = errors.RemoteError(
            f"{_qualname(type(exc))}: {exc} (the exception could not be sent back: {failure})",
            type_name=_qualname(type(exc)),
            traceback_text=text,
        )
        return [pickle.dumps((substitute, None, text), protocol=PROTOCOL)]


def loads_exception(frames: Sequence[Buffer]) -> BaseException:
    """Rebuild a task's exception, with the remote traceback in ``__cause__`` as multiprocessing does.

    The remote frames are shown once, in that text, as multiprocessing shows them: the exception's own
    traceback is where the caller raises it.
    """
    from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]

    try:
        exc, _remote_frames, text = pickle.loads(frames[0])
        if not isinstance(exc, BaseException) or not isinstance(text, str):
            raise TypeError(f"the payload holds a {type(exc).__name__}, not an exception and its traceback")
    except Exception as failure:
        return errors.RemoteError(
            f"the task's exception could not be rebuilt here: {type(failure).__name__}: {failure}",
            type_name="unknown",
            traceback_text="",
        )
    exc = exc.with_traceback(None)  # tblib restored the remote frames; they are in the text already
    exc.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
    return exc


def _pickle_with_traceback(exc: BaseException, text: str) -> bytes:
    from tblib import pickling_support

    table = copyreg.dispatch_table.copy()
    table[types.TracebackType] = pickling_support.pickle_traceback
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        table[type(current)] = pickling_support.pickle_exception
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=PROTOCOL)
    pickler.dispatch_table = table
    pickler.dump((exc, exc.__traceback__, text))
    return buffer.getvalue()


def _qualname(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    if isinstance(obj, (types.FunctionType, types.MethodType)) or callable(obj) and name:
        return f"{name} from {getattr(obj, '__module__', '?')}"
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(obj).__name__} {text}"


def call_repr(function: Callable[..., Any]) -> str:
    """A short description of a function for error messages: name, file and line."""
    code = getattr(function, "__code__", None)
    name = getattr(function, "__qualname__", repr(function))
    if not isinstance(code, types.CodeType):
        return str(name)
    return f"{name}, defined in {code.co_filename}:{code.co_firstlineno}"
