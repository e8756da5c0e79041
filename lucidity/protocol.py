"""The wire format: protocol version, message kinds and framing.

Every message is a list of frames::

    [header, meta, *payload]

``header`` is two bytes, the protocol version and the `Kind`. ``meta`` is a JSON object whose required
fields depend on the kind (`SCHEMA`); it never holds code, so it is safe to parse from any peer. The
``payload`` frames are opaque here: serialized calls, results and their out-of-band buffers, which
`lucidity.serialization` alone interprets. This module knows frames, not sockets, and never looks inside
a payload.

`decode` is the boundary check: it names what is wrong in a `ProtocolError` so that daemons can log the
message, drop it and keep serving.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Iterable, NamedTuple, Sequence, Union

from .errors import ProtocolError, VersionMismatch

__all__ = ["VERSION", "Kind", "Message", "encode", "decode"]

#: 2: small item payloads packed into one frame (`pack_items`). 3: the caller's __main__ travels by name to
#: a per-client namespace in each worker (TASKS ``main``; `lucidity.mainscript`).
VERSION = 3

#: Largest JSON meta frame a peer may send, in bytes.
MAX_META_BYTES = 4 * 1024 * 1024
#: Most payload frames in one message (a batch of tasks with their buffers).
MAX_PAYLOAD_FRAMES = 100_000

#: Client ids are uuid4 hex strings (checked with str.strip: no regex module in the workers).
_HEX = "0123456789abcdef"

Frame = Any  # bytes, memoryview or zmq.Frame
Payload = Union[bytes, memoryview, Any]


class Kind(enum.IntEnum):
    # membership: node <-> control
    JOIN = 1
    WELCOME = 2
    HEARTBEAT = 3
    LEAVE = 4
    # membership: client <-> control
    WATCH = 10
    NODES = 11
    # client <-> node daemon
    HELLO = 20
    WORKERS = 21
    TASK_FAILED = 22
    ABANDON = 23
    BYE = 24
    # anyone <-> a daemon
    STATUS = 30
    STATUS_REPLY = 31
    # the task path: client <-> worker
    TASKS = 40
    RESULTS = 41
    CANCEL = 42
    MISSING = 43
    # code shipping: worker <-> client
    FETCH = 44
    MODULE = 45
    # node daemon -> worker
    DROP = 46
    # worker -> client: a batch of tasks it could not accept
    REFUSED = 47


_KINDS = {kind.value: kind for kind in Kind}

#: Required meta fields and their JSON types, per kind. Extra fields are allowed (forward compatible).
SCHEMA: dict[Kind, dict[str, Union[type, tuple[type, ...]]]] = {
    Kind.JOIN: {"name": str, "address": str, "processes": int, "instance": str},
    Kind.WELCOME: {"instance": str},
    Kind.HEARTBEAT: {},
    Kind.LEAVE: {"name": str},
    Kind.WATCH: {},
    Kind.NODES: {"nodes": list, "instance": str},
    Kind.HELLO: {"client": str},
    Kind.WORKERS: {"node": str, "workers": list},
    Kind.TASK_FAILED: {"task": int, "reason": str, "message": str},
    Kind.ABANDON: {"client": str},
    Kind.BYE: {"client": str},
    Kind.STATUS: {},
    Kind.STATUS_REPLY: {"role": str},
    Kind.TASKS: {"client": str, "tasks": list},
    Kind.RESULTS: {"results": list},
    Kind.CANCEL: {"tasks": list},
    Kind.MISSING: {"tasks": list, "digests": list},
    Kind.FETCH: {"module": str},
    Kind.MODULE: {"name": str, "found": bool},
    Kind.DROP: {"client": str},
    Kind.REFUSED: {"reason": str},
}


class Message(NamedTuple):
    """A decoded message: its kind, its checked meta, and its payload frames untouched."""

    kind: Kind
    meta: dict[str, Any]
    payload: Sequence[Frame] = ()


def encode(kind: Kind, meta: dict[str, Any], payload: Iterable[Payload] = ()) -> list[Payload]:
    """Frames for one message. Payload frames are passed through without copying."""
    return [bytes((VERSION, kind)), json.dumps(meta, separators=(",", ":")).encode(), *payload]


def _frame_bytes(frame: Frame) -> bytes:
    if isinstance(frame, bytes):
        return frame
    raw = getattr(frame, "bytes", None)
    if isinstance(raw, bytes):
        return raw
    return bytes(frame)


def _frame_size(frame: Frame) -> int:
    if isinstance(frame, (bytes, memoryview)):
        return len(frame)
    return len(frame.buffer)


def decode(frames: Sequence[Frame], accept: frozenset[Kind]) -> Message:
    """Check a message's envelope and meta; return it, or raise `ProtocolError` saying what is wrong.

    Args:
        frames: the frames as received (routing identities already removed).
        accept: the kinds this receiver takes from this peer; anything else is refused here, before any
            field is interpreted.
    """
    if len(frames) < 2:
        raise ProtocolError(f"message has {len(frames)} frame(s); at least 2 are required")
    if len(frames) - 2 > MAX_PAYLOAD_FRAMES:
        raise ProtocolError(f"message has {len(frames) - 2} payload frames; at most {MAX_PAYLOAD_FRAMES}")
    header = _frame_bytes(frames[0])
    if len(header) != 2:
        raise ProtocolError(f"header frame is {len(header)} bytes; 2 are required")
    version, kind_number = header[0], header[1]
    if version != VERSION:
        raise VersionMismatch(f"protocol version {version} is not supported (this is version {VERSION})",
                              version=version)
    kind = _KINDS.get(kind_number)
    if kind is None:
        raise ProtocolError(f"unknown message kind {kind_number}")
    if kind not in accept:
        raise ProtocolError(f"message kind {kind.name} is not accepted here")
    if _frame_size(frames[1]) > MAX_META_BYTES:
        raise ProtocolError(f"{kind.name} meta frame exceeds {MAX_META_BYTES} bytes")
    try:
        meta = json.loads(_frame_bytes(frames[1]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{kind.name} meta is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"{kind.name} meta is a {type(meta).__name__}, not an object")
    for name, expected in SCHEMA[kind].items():
        value = meta.get(name)
        if not isinstance(value, expected) or isinstance(value, bool) and expected is int:
            raise ProtocolError(f"{kind.name} meta field {name!r} is missing or not of the right type")
    client = meta.get("client")
    if client is not None and not (isinstance(client, str) and len(client) == 32 and not client.strip(_HEX)):
        raise ProtocolError(f"{kind.name} meta field 'client' is not a client id")
    return Message(kind, meta, frames[2:])


#: Item frames up to this size travel packed together in one frame (one send instead of one per item).
PACK_LIMIT = 16 * 1024


def pack_items(items: Sequence[Sequence[Payload]]) -> tuple[list[Any], list[Payload]]:
    """Lay out the frames of many items (tasks, results) for one message.

    An item made of one small frame is packed with the others like it into a single leading frame and named
    by ``[offset, length]`` in the layout; any other item keeps its frames (out-of-band buffers travel
    untouched) and is named by their count. Batches of tiny tasks then cost a few frames, not one per task.
    """
    packed = bytearray()
    layout: list[Any] = []
    separate: list[Payload] = []
    for frames in items:
        if len(frames) == 1 and len(frames[0]) <= PACK_LIMIT:
            layout.append([len(packed), len(frames[0])])
            packed += frames[0]
        else:
            layout.append(len(frames))
            separate.extend(frames)
    return layout, ([bytes(packed)] if packed else []) + separate


def unpack_items(layout: Sequence[Any], frames: Sequence[Frame]) -> list[list[Any]]:
    """The buffers of each item laid out by `pack_items` (views, no copies); `ProtocolError` if they don't add up."""
    has_pack = any(type(entry) is list for entry in layout)
    packed = _frame_view(frames[0]) if has_pack and frames else memoryview(b"")
    position = 1 if has_pack else 0
    items: list[list[Any]] = []
    for entry in layout:
        if type(entry) is int and entry >= 1:
            if position + entry > len(frames):
                raise ProtocolError("message announces more frames than it carries")
            items.append([_frame_view(f) for f in frames[position:position + entry]])
            position += entry
        elif type(entry) is list and len(entry) == 2 and all(type(v) is int and v >= 0 for v in entry):
            start, length = entry
            if start + length > len(packed):
                raise ProtocolError("a packed item lies outside its frame")
            items.append([packed[start:start + length]])
        else:
            raise ProtocolError(f"bad item layout entry {str(entry)[:40]}")
    if position != len(frames):
        raise ProtocolError(f"message carries {len(frames) - position} frame(s) more than announced")
    return items


def _frame_view(frame: Frame) -> memoryview:
    if isinstance(frame, memoryview):
        return frame
    if isinstance(frame, (bytes, bytearray)):
        return memoryview(frame)
    return frame.buffer  # type: ignore[no-any-return]
