"""The wire format: protocol version, message kinds and framing.

Every message is a list of frames::

    [header, meta, *payload]

``header`` is two bytes, the protocol version and the `Kind`. ``meta`` is the message's body:
`lucidity.messages` has a class for each kind's, which writes it and reads it back checked. It never holds
code, so it is safe to parse from any peer. It is a JSON object, except for the two kinds every task makes
one of (`BINARY_KINDS`: TASKS and RESULTS), whose meta is binary, of a fixed layout that
`lucidity.messages.batches` reads with one ``struct`` call per task (protocol version 7, issue 13: the JSON
and its field-by-field checks were about 40% of a worker's Python per task). This module sees of a binary
meta its first byte alone, which is its own (`BINARY_PLAIN`, or `BINARY_SLICED` and the slice table). The
``payload`` frames are opaque here: serialized calls, results and their out-of-band buffers, which
`lucidity.serialization` alone interprets. This module knows frames, not sockets, and never looks inside a
payload.

No frame sent to a socket that caps frame sizes is larger than `MAX_FRAME_BYTES`, apart from a meta frame
(always small in practice), so that a listening socket can refuse bigger frames before its peer is
authenticated (`security.Guard.listen`: the listening sockets of a cluster with a secret). Messages to a
socket without that cap (a client's; a worker of a cluster without a secret) go whole (``sliced=False``),
sparing the receiver the copy a join costs. `encode` sends a larger payload frame as slices of that size, views of the
caller's buffer (no copy), and names them in the meta field ``_slices``: a list of ``[index, count]``, the
payload frame's index as the caller gave it and the number of slices it became. `decode` joins them back
into one writable buffer (`JoinedFrame`, one copy) and removes the field, so callers see the frames they
sent. A binary meta carries the same table in binary (`BINARY_SLICED`), which `decode` removes the same way.

`decode` is the boundary check of the envelope: it names what is wrong in a `ProtocolError` so that daemons
can log the message, drop it and keep serving. It refuses meta nested deeper than `MAX_META_DEPTH` (checked
before parsing: a deep one would exhaust Python's recursion limit), integers outside 64 bits, and a meta that
is not a JSON object, or a binary meta's slice table that does not add up. The body, every field of it, is
`lucidity.messages`' to check (`parse`, `from_meta`).
"""

from __future__ import annotations

import builtins
import enum
import json
import struct
from typing import Any, Iterable, NamedTuple, Sequence, Union

from .errors import ProtocolError, VersionMismatch

__all__ = ["VERSION", "Kind", "BINARY_KINDS", "Message", "JoinedFrame", "encode", "decode", "parse_json", "write_json"]

#: 2: small item payloads packed into one frame (`pack_items`). 3: the caller's __main__ travels by name to
#: a per-client namespace in each worker (TASKS ``main``; `lucidity.mainscript`). 4: payload frames over
#: `MAX_FRAME_BYTES` travel in slices named by the meta field ``_slices`` (issue 11). 5: nodes heartbeat
#: with BEAT and send a JOIN only when their entry changed or the control node asks (WELCOME ``rejoin``);
#: NODES carries a sequence number and is a full list or the changes (issue 13). 6: WITHDRAW (work stealing).
#: 7: TASKS and RESULTS have a binary meta (`BINARY_KINDS`).
VERSION = 7

#: Largest payload frame on the wire, in bytes; `encode` slices larger ones. Listening sockets refuse frames
#: a little larger than this (`security.MAX_INBOUND_FRAME_BYTES`, with room for CURVE's overhead).
MAX_FRAME_BYTES = 1024 * 1024
#: Largest JSON meta frame a peer may send, in bytes.
MAX_META_BYTES = 4 * 1024 * 1024
#: Deepest nesting of JSON arrays and objects in a meta frame; the object itself is level 1. Real metas
#: nest 5 levels at most (NODES: nodes, workers, a worker's fields).
MAX_META_DEPTH = 32
#: Integers in meta must fit a signed 64-bit field (task ids and limits are packed into the slot table).
META_INT_MIN = -(2 ** 63)
META_INT_MAX = 2 ** 63 - 1
#: The meta field naming the sliced payload frames (see the module docstring).
SLICES_FIELD = "_slices"
#: Most payload frames in one message (a batch of tasks with their buffers).
MAX_PAYLOAD_FRAMES = 100_000
#: The first byte of a binary meta: the body follows at once ...
BINARY_PLAIN = 0
#: ... or a slice table first (u32 count, then (u32 index, u32 count) per sliced frame), then the body.
BINARY_SLICED = 1
_SLICE_COUNT = struct.Struct("<I")
_SLICE_ENTRY = struct.Struct("<II")

#: Client ids are uuid4 hex strings (checked with str.strip: no regex module in the workers).

Frame = Any  # bytes, memoryview or zmq.Frame
Payload = Union[bytes, memoryview, Any]


class Kind(enum.IntEnum):
    # membership: node <-> control
    JOIN = 1
    WELCOME = 2
    HEARTBEAT = 3
    LEAVE = 4
    BEAT = 5
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
    # worker -> client: what tasks wrote to fd 1 and 2, and how far a running task has come (issue 14)
    OUTPUT = 48
    PROGRESS = 49
    # client -> worker: give back these queued tasks (work stealing; answered with MISSING)
    WITHDRAW = 50


# How decode makes a Message in C (a NamedTuple's own __new__ is Python code).
_new_message = tuple.__new__
#: The header frame of each kind, made once, and the kind of each header (one look-up checks both bytes).
_HEADERS = {kind: bytes((VERSION, kind)) for kind in Kind}
_KIND_OF_HEADER = {header: kind for kind, header in _HEADERS.items()}
#: The kinds whose meta is binary (bytes beginning with `BINARY_PLAIN`), not JSON: every task makes one of each.
BINARY_KINDS = frozenset({Kind.TASKS, Kind.RESULTS})


class Message(NamedTuple):
    """A decoded message: its kind, its meta, and its payload frames as received (sliced ones joined).

    The meta is a dict for JSON kinds, checked as JSON; for `BINARY_KINDS`, the binary meta as bytes,
    which its body class reads and checks (`lucidity.messages`). Typed Any for the two.
    """

    kind: Kind
    meta: Any
    payload: Sequence[Frame] = ()


def encode(kind: Kind, meta: Union[dict[str, Any], bytes], payload: Iterable[Payload] = (), *,
           sliced: bool = True) -> list[Payload]:
    """Frames for one message. Payload frames are passed through without copying.

    `meta` is a dict, written as JSON, or for `BINARY_KINDS` the binary meta, bytes beginning with
    `BINARY_PLAIN` (what their body classes write).

    A payload frame (bytes or any contiguous buffer: memoryview, zmq.Frame, PickleBuffer, numpy array)
    larger than `MAX_FRAME_BYTES` goes as slices of that size, views of its buffer: still no copy, so
    the caller must keep the buffer unchanged until the frames are sent, as before. The slices are named
    in the meta field ``_slices``, which the caller's `meta` must not use (ValueError).

    ``sliced=False`` sends large frames whole, for a receiver whose socket caps no frame size (a client's
    sockets; a worker of a cluster without a secret): joining slices costs the receiver a copy of the
    payload, about 26 ms per 64 MiB, which only a capped socket needs to pay.
    """
    if isinstance(meta, bytes):
        if kind not in BINARY_KINDS or meta[:1] != b"\0":
            raise ValueError(f"a {kind.name} meta of bytes must be a binary one, beginning with {BINARY_PLAIN}")
    elif kind in BINARY_KINDS:
        raise ValueError(f"a {kind.name} meta is binary (bytes), not {type(meta).__name__}")
    if not sliced:
        return [_HEADERS[kind], meta if isinstance(meta, bytes) else _encode_meta(meta), *payload]
    frames: list[Payload] = []
    slices: list[list[int]] = []
    for index, frame in enumerate(payload):
        size = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
        if size <= MAX_FRAME_BYTES:
            frames.append(frame)
            continue
        view = memoryview(frame).cast("B")
        slices.append([index, -(-size // MAX_FRAME_BYTES)])
        frames.extend(view[start:start + MAX_FRAME_BYTES] for start in range(0, size, MAX_FRAME_BYTES))
    if isinstance(meta, bytes):
        if slices:
            table = b"".join(_SLICE_ENTRY.pack(index, count) for index, count in slices)
            meta = bytes((BINARY_SLICED,)) + _SLICE_COUNT.pack(len(slices)) + table + meta[1:]
        return [_HEADERS[kind], meta, *frames]
    if slices:
        if SLICES_FIELD in meta:
            raise ValueError(f"the meta field {SLICES_FIELD!r} is the protocol's own")
        meta = {**meta, SLICES_FIELD: slices}
    return [_HEADERS[kind], _encode_meta(meta), *frames]


# json.dumps with separators makes a JSONEncoder, and its encode a C encoder, for every call (4 us of the ~10
# a message costs in Python): the C encoder is made once here. Without it (another Python), the same encoder
# object is kept instead. Metas are never circular (the marker dict only turns that into a ValueError).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    _C_ENCODER = _c_make_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ":",
                                 ",", False, False, True)

    def _encode_meta(meta: dict[str, Any]) -> bytes:
        return "".join(_C_ENCODER(meta, 0)).encode()
else:  # pragma: no cover - CPython has the C encoder
    _ENCODER = json.JSONEncoder(separators=(",", ":"))

    def _encode_meta(meta: dict[str, Any]) -> bytes:
        return _ENCODER.encode(meta).encode()


def write_json(value: dict[str, Any]) -> bytes:
    """A JSON object as a meta is written (compact, ASCII): for the JSON parts of a binary meta."""
    return _encode_meta(value)


class JoinedFrame(bytearray):
    """A payload frame that `decode` joined from its slices.

    Writable, like a received zmq.Frame (a numpy array rebuilt on it is writable), and, like one, it
    answers ``.bytes`` (a copy) and ``.buffer`` (a view), so callers need not tell the two apart.
    """

    __slots__ = ()

    @property
    def bytes(self) -> builtins.bytes:
        return builtins.bytes(self)

    @property
    def buffer(self) -> memoryview:
        return memoryview(self)


def _join(parts: Sequence[Frame]) -> JoinedFrame:
    # The copy costs about 26 ms per 64 MiB, mostly page faults of the new memory. Growing by += costs no
    # more than filling a buffer made to size, which bytearray zeroes first (22 against 26 ms). A private
    # mapping with transparent huge pages asked for joined 64 MiB in 6 ms, but the first join took 130 ms
    # of system time in 2 of 10 new processes, and a new pool's 64 MiB round trips got slower, not faster
    # (issue 11): not worth it.
    whole = JoinedFrame()
    for part in parts:
        whole += part
    return whole


def _frame_bytes(frame: Frame) -> bytes:
    if isinstance(frame, bytes):
        return frame
    raw = getattr(frame, "bytes", None)
    if isinstance(raw, bytes):
        return raw
    return bytes(frame)


def _frame_size(frame: Frame) -> int:
    # The len of bytes, a bytearray or a received zmq.Frame is its size (a Frame's .buffer makes a memoryview).
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def decode(frames: Sequence[Frame], accept: frozenset[Kind]) -> Message:
    """Check a message's envelope and meta; return it, or raise `ProtocolError` saying what is wrong.

    Sliced payload frames (see `encode`) come back joined, each as one `JoinedFrame`; the others are
    returned as received.

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
    kind = _KIND_OF_HEADER.get(header)
    if kind is None:
        raise _bad_header(header)
    if kind not in accept:
        raise ProtocolError(f"message kind {kind.name} is not accepted here")
    if _frame_size(frames[1]) > MAX_META_BYTES:
        raise ProtocolError(f"{kind.name} meta frame exceeds {MAX_META_BYTES} bytes")
    if kind in BINARY_KINDS:
        raw = _frame_bytes(frames[1])
        # The body checks the rest, the first byte too: a body class refuses a meta it cannot read, and its
        # receiver then fails the tasks it concerns (a client, of a worker's RESULTS), where a ProtocolError
        # here would drop the message and leave them waiting.
        if raw[:1] == _SLICED_MARK:
            raw, slices = _binary_slices(raw, kind)
            return Message(kind, raw, _joined(frames[2:], slices, kind))
        return _new_message(Message, (kind, raw, frames[2:]))
    meta = parse_json(_frame_bytes(frames[1]), f"{kind.name} meta")
    payload = frames[2:]
    slices = meta.pop(SLICES_FIELD, None)
    if slices is not None:
        payload = _joined(payload, slices, kind)
    return Message(kind, meta, payload)


_SLICED_MARK = bytes((BINARY_SLICED,))


def _bad_header(header: bytes) -> ProtocolError:
    """What is wrong with a header frame that names no kind of this version."""
    if len(header) != 2:
        return ProtocolError(f"header frame is {len(header)} bytes; 2 are required")
    if header[0] != VERSION:
        return VersionMismatch(f"protocol version {header[0]} is not supported (this is version {VERSION})",
                               version=header[0])
    return ProtocolError(f"unknown message kind {header[1]}")


def _binary_slices(raw: bytes, kind: Kind) -> tuple[bytes, list[list[int]]]:
    """A sliced binary meta's body (beginning with `BINARY_PLAIN`, as sent) and its slice table."""
    if len(raw) < 1 + _SLICE_COUNT.size:
        raise ProtocolError(f"{kind.name} meta ends inside its slice table ({len(raw)} bytes)")
    (count,) = _SLICE_COUNT.unpack_from(raw, 1)
    body = 1 + _SLICE_COUNT.size + count * _SLICE_ENTRY.size
    if body > len(raw):
        raise ProtocolError(f"{kind.name} meta announces {count} sliced frames; it ends inside their table "
                            f"({len(raw)} bytes)")
    slices = [list(entry) for entry in _SLICE_ENTRY.iter_unpack(raw[1 + _SLICE_COUNT.size:body])]
    return bytes((BINARY_PLAIN,)) + raw[body:], slices


def parse_json(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a peer, within the limits: depth (checked before parsing), 64-bit integers, no NaN
    or Infinity; `ProtocolError` naming `what` ("RESULTS meta") otherwise. A JSON meta is read with it, and
    the JSON parts of a binary one (`lucidity.messages.batches`)."""
    if not _is_shallow(raw):
        raise ProtocolError(f"{what} nests arrays and objects deeper than {MAX_META_DEPTH} levels "
                            "(or its brackets do not balance)")
    # An integer outside 64 bits has at least 19 digits, after a separator or a sign. Only a meta with such a
    # run pays for the decoder that checks every integer; the digits of a float's fraction or exponent
    # follow "." or "e" and do not count (a string's may, harmlessly: that only picks the slower decoder).
    decoder = _BOUNDED_DECODER if _LONG_INTEGER in raw.translate(_DIGIT_RUNS) else _DECODER
    try:
        text = raw.decode("utf-8")
        try:
            # The scanner alone (decode adds two regex matches for whitespace that our metas lack); any text
            # it does not read to the end, decode reads again and names what is wrong.
            meta, end = decoder.scan_once(text, 0)  # type: ignore[attr-defined]
        except StopIteration:
            end = -1
        if end != len(text):
            meta = decoder.decode(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    except (ValueError, RecursionError) as exc:  # a bound of ours; RecursionError cannot pass _is_shallow
        raise ProtocolError(f"{what} is refused: {str(exc)[:200]}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"{what} is a {type(meta).__name__}, not an object")
    return meta


def _is_shallow(raw: bytes) -> bool:
    """Whether JSON text nests at most `MAX_META_DEPTH` levels, found with bytes operations alone (C speed).

    Brackets inside strings do not count. Text that json would reject may pass, but then json stops at its
    first error, within the nesting measured here: json never recurses deeper than this allows.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_META_DEPTH:
        return True
    if b"\\" in raw:
        # Removing escaped backslashes, then escaped quotes, leaves no quote that is not a string's delimiter
        # (pairs are removed left to right, as json reads escapes).
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = raw.translate(_AS_BRACKETS, _NOT_STRUCTURE)  # quotes and brackets, braces as brackets
    # Strings without brackets are now adjacent quote pairs. If removing those leaves a quote, some string
    # holds brackets: drop every other stretch between quotes instead (slower, rare).
    brackets = marks.replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(marks.split(b'"')[::2])
    # Each pass removes exactly the innermost level (a replaced pair is not searched again).
    for _ in range(MAX_META_DEPTH):
        if not brackets:
            return True
        inner_removed = brackets.replace(b"[]", b"")
        if len(inner_removed) == len(brackets):
            return False  # unbalanced
        brackets = inner_removed
    return not brackets


def _bounded_int(text: str) -> int:
    value = int(text) if len(text) <= 20 else META_INT_MAX + 1
    if not META_INT_MIN <= value <= META_INT_MAX:
        raise ValueError(f"the integer {text[:24]}{'...' if len(text) > 24 else ''} does not fit in 64 bits")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number (the JSON extension NaN/Infinity is not accepted)")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_BOUNDED_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_constant=_no_constant)
#: Digits become "0", what may come before an integer (separators, whitespace, a sign) " ", the rest "x".
_DIGIT_RUNS = bytes(b"0"[0] if byte in b"0123456789" else b" "[0] if byte in b"[,: \t\r\n-" else b"x"[0]
                    for byte in range(256))
_LONG_INTEGER = b" " + b"0" * 19
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))


def _joined(payload: Sequence[Frame], slices: Any, kind: Kind) -> list[Frame]:
    """The payload with each sliced frame joined back into one `JoinedFrame` (see `encode`)."""
    if type(slices) is not list or not slices:
        raise ProtocolError(f"{kind.name} meta field {SLICES_FIELD!r} is not a list of [index, count]")
    joined: list[Frame] = []
    position = 0  # in the received payload
    for entry in slices:
        if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is int and type(entry[1]) is int):
            raise ProtocolError(f"{kind.name} meta field {SLICES_FIELD!r} has a bad entry {str(entry)[:40]}")
        index, count = entry
        unsliced = index - len(joined)  # whole frames before this one
        if unsliced < 0 or count < 2 or position + unsliced + count > len(payload):
            raise ProtocolError(f"{kind.name} meta field {SLICES_FIELD!r} does not match the {len(payload)} "
                                f"payload frames ({str(entry)[:40]})")
        joined.extend(payload[position:position + unsliced])
        position += unsliced
        joined.append(_join(payload[position:position + count]))
        position += count
    joined.extend(payload[position:])
    return joined


#: Item frames up to this size travel packed together in one frame (one send instead of one per item).
PACK_LIMIT = 16 * 1024


def pack_items(items: Sequence[Sequence[Payload]]) -> tuple[list[Any], list[Payload]]:
    """Lay out the frames of many items (tasks, results) for one message.

    An item made of one small frame is packed with the others like it into a single leading frame and named
    by ``[offset, length]`` in the layout; any other item keeps its frames (out-of-band buffers travel
    untouched) and is named by their count. Batches of tiny tasks then cost a few frames, not one per task.
    A lone item (an apply's task, its result) keeps its frames: a pack of one would only copy it.
    """
    if len(items) == 1:
        return [len(items[0])], list(items[0])
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
    has_pack = list in map(type, layout)  # any entry [offset, length], in C
    packed = _frame_view(frames[0]) if has_pack and frames else _NO_PACK
    position = 1 if has_pack else 0
    items: list[list[Any]] = []
    packed_size = len(packed)
    for entry in layout:
        # Plain checks, no generator: this runs for every task and every result.
        if type(entry) is list and len(entry) == 2:
            start, length = entry
            if type(start) is not int or type(length) is not int or start < 0 or length < 0:
                raise ProtocolError(f"bad item layout entry {str(entry)[:40]}")
            if start + length > packed_size:
                raise ProtocolError("a packed item lies outside its frame")
            items.append([packed[start:start + length]])
        elif type(entry) is int and entry >= 1:
            if position + entry > len(frames):
                raise ProtocolError("message announces more frames than it carries")
            if entry == 1:  # a lone item's one frame (see pack_items)
                items.append([_frame_view(frames[position])])
            else:
                items.append([_frame_view(f) for f in frames[position:position + entry]])
            position += entry
        else:
            raise ProtocolError(f"bad item layout entry {str(entry)[:40]}")
    if position != len(frames):
        raise ProtocolError(f"message carries {len(frames) - position} frame(s) more than announced")
    return items


_NO_PACK = memoryview(b"")


def _frame_view(frame: Frame) -> memoryview:
    if isinstance(frame, memoryview):
        return frame
    if isinstance(frame, (bytes, bytearray)):
        return memoryview(frame)
    return frame.buffer  # type: ignore[no-any-return]
