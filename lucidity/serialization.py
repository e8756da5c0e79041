"""Objects to bytes and back: the only importer of pickle, dill and tblib.

Three kinds of things cross between processes, each serialized its own way:

- *functions* (and initializers) go with dill, so lambdas, closures and functions defined in ``__main__`` or
  a notebook travel by value. A function is serialized once per client and identified by the digest of
  its bytes, so a worker can cache it.
- *data* (arguments and results) goes with the C pickler, protocol 5. Large buffers (numpy arrays,
  bytearrays wrapped in PickleBuffer) come out of band as their own frames, so they cross without a
  serialization copy. Data that only dill can handle (a lambda inside the arguments, an instance of a class
  defined in ``__main__``) falls back to dill.
- *exceptions* go with their traceback frames (tblib), and fall back to `RemoteError` when the exception
  itself cannot travel.

Everything here knows objects and buffers, not frames or sockets: the caller puts the returned buffers in
messages.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import types
from typing import Any, Callable, Sequence

from . import errors
from .errors import SerializationError

__all__ = [
    "dumps_function",
    "loads_function",
    "digest",
    "dumps",
    "loads",
    "dumps_exception",
    "loads_exception",
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


def dumps_function(function: Any) -> bytes:
    """Serialize a callable (or a callable with its arguments, such as an initializer) by value where needed.

    Raises:
        SerializationError: naming the object that could not be serialized; the dill error is the cause.
    """
    try:
        data: bytes = _dill().dumps(function, protocol=PROTOCOL, recurse=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize function {_describe(function)}: {type(exc).__name__}: {exc}"
        ) from exc
    return data


def loads_function(data: Buffer) -> Any:
    """Rebuild a callable serialized by `dumps_function`.

    The C unpickler reads dill's output: a function sent by reference loads without importing dill at all
    (a worker stays small), and one sent by value imports the parts of dill it needs by itself.
    """
    return pickle.loads(data)


def dumps(obj: Any, what: str = "object") -> list[Buffer]:
    """Serialize data to ``[pickle_bytes, *out_of_band_buffers]``.

    Args:
        obj: the value.
        what: how to name the value in an error, e.g. "argument 2 of task 17".

    Raises:
        SerializationError: naming ``what`` and the type that failed; nothing has been sent.
    """
    buffers: list[Buffer] = []
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
        # Objects of __main__ pickle by reference, but a worker's __main__ is not the caller's: send them
        # by value. The marker can only appear in the (small) in-band bytes.
        if b"__main__" not in data:
            return [data, *(buffer.raw() for buffer in buffers)]
    except Exception:
        pass
    buffers = []
    try:
        data = _dill().dumps(obj, protocol=PROTOCOL, recurse=True, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} ({_describe(obj)}): {type(exc).__name__}: {exc}"
        ) from exc
    return [data, *(buffer.raw() for buffer in buffers)]


def loads(frames: Sequence[Buffer]) -> Any:
    """Rebuild data from the frames `dumps` produced; out-of-band buffers are used in place."""
    return pickle.loads(frames[0], buffers=frames[1:])


def dumps_exception(exc: BaseException) -> list[Buffer]:
    """Serialize an exception raised by a task: the exception with its traceback frames, and the text.

    The exception is checked by loading it back, because some exceptions pickle but cannot be rebuilt
    (an ``__init__`` taking two arguments, say). Anything that does not survive becomes a `RemoteError`
    holding the type name, the message and the formatted traceback.
    """
    import traceback  # only when a task failed

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
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
    """Rebuild a task's exception, with the remote traceback in ``__cause__`` as multiprocessing does."""
    from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]

    try:
        exc, tb, text = pickle.loads(frames[0])
    except Exception as failure:
        return errors.RemoteError(
            f"the task's exception could not be rebuilt here: {type(failure).__name__}: {failure}",
            type_name="unknown",
            traceback_text="",
        )
    if tb is not None:
        exc = exc.with_traceback(tb)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
    return exc  # type: ignore[no-any-return]


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
