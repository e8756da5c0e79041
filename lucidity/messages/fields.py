"""The checks of single fields that every body of `lucidity.messages` is read with.

Each takes the JSON object, a description of it for the error ("TASKS meta", "a WORKERS entry") and the
field's name; it returns the value, typed, or raises `ProtocolError` saying which field is missing or what
it holds instead. Private to `lucidity.messages`.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Optional

from ..errors import ProtocolError
from ..protocol import META_INT_MAX

__all__ = ["Meta", "MAX_SECONDS", "refused", "shown", "text", "maybe_text", "natural", "maybe_natural",
           "maybe_integer", "maybe_amount", "flag", "maybe_flag", "client_id", "array",
           "texts", "task_ids", "objects", "maybe_counts"]

#: A message's meta, or an entry in it: a JSON object.
Meta = dict[str, Any]
#: Longest time limit or task duration a message may carry, in seconds (about 31 years).
MAX_SECONDS = 10 ** 9
#: How many characters of a refused value an error message shows.
SHOWN = 40
_HEX = "0123456789abcdef"


def shown(value: Any) -> str:
    written = repr(value)
    return written if len(written) <= SHOWN else written[:SHOWN] + "..."


def refused(meta: Mapping[str, Any], where: str, name: str, wanted: str) -> ProtocolError:
    if name not in meta:
        return ProtocolError(f"{where} lacks the field {name!r}")
    return ProtocolError(f"{where} field {name!r} is not {wanted}: {shown(meta[name])}")


def text(meta: Mapping[str, Any], where: str, name: str) -> str:
    value = meta.get(name)
    if type(value) is not str:
        raise refused(meta, where, name, "a string")
    return value


def maybe_text(meta: Mapping[str, Any], where: str, name: str) -> Optional[str]:
    """The string, or None if the field is absent or null."""
    value = meta.get(name)
    if value is not None and type(value) is not str:
        raise refused(meta, where, name, "a string")
    return value


def natural(meta: Mapping[str, Any], where: str, name: str) -> int:
    """An id, count or size: an integer from 0 to 2**63 - 1."""
    value = meta.get(name)
    if type(value) is not int or not 0 <= value <= META_INT_MAX:
        raise refused(meta, where, name, "an integer from 0 to 2**63 - 1")
    return value


def maybe_natural(meta: Mapping[str, Any], where: str, name: str) -> Optional[int]:
    value = meta.get(name)
    if value is not None and (type(value) is not int or not 0 <= value <= META_INT_MAX):
        raise refused(meta, where, name, "an integer from 0 to 2**63 - 1")
    return value


def maybe_integer(meta: Mapping[str, Any], where: str, name: str) -> Optional[int]:
    value = meta.get(name)
    if value is not None and type(value) is not int:
        raise refused(meta, where, name, "an integer")
    return value


def maybe_amount(meta: Mapping[str, Any], where: str, name: str) -> Optional[float]:
    """A measurement (bytes or seconds): a finite number, not negative."""
    value = meta.get(name)
    if value is not None and not ((type(value) is float or type(value) is int) and 0 <= value <= sys.float_info.max):
        raise refused(meta, where, name, "a finite number, not negative")
    return value


def flag(meta: Mapping[str, Any], where: str, name: str) -> bool:
    value = meta.get(name)
    if type(value) is not bool:
        raise refused(meta, where, name, "true or false")
    return value


def maybe_flag(meta: Mapping[str, Any], where: str, name: str) -> bool:
    """The boolean, or False if the field is absent or null."""
    value = meta.get(name)
    if value is not None and type(value) is not bool:
        raise refused(meta, where, name, "true or false")
    return bool(value)


def client_id(meta: Mapping[str, Any], where: str, name: str = "client") -> str:
    value = meta.get(name)
    if type(value) is not str or len(value) != 32 or value.strip(_HEX):
        raise refused(meta, where, name, "a client id (32 hex digits)")
    return value


def array(meta: Mapping[str, Any], where: str, name: str) -> list[Any]:
    value = meta.get(name)
    if type(value) is not list:
        raise refused(meta, where, name, "a list")
    return value


def texts(meta: Mapping[str, Any], where: str, name: str) -> tuple[str, ...]:
    values = array(meta, where, name)
    for value in values:
        if type(value) is not str:
            raise ProtocolError(f"{where} field {name!r} holds {shown(value)}, not a string")
    return tuple(values)


def task_ids(meta: Mapping[str, Any], where: str, name: str) -> tuple[int, ...]:
    values = array(meta, where, name)
    for value in values:
        if type(value) is not int or not 0 <= value <= META_INT_MAX:
            raise ProtocolError(f"{where} field {name!r} holds {shown(value)}, not a task id")
    return tuple(values)


def objects(meta: Mapping[str, Any], where: str, name: str) -> list[Meta]:
    values = array(meta, where, name)
    for value in values:
        if type(value) is not dict:
            raise ProtocolError(f"{where} field {name!r} holds {shown(value)}, not an object")
    return values


def maybe_counts(meta: Mapping[str, Any], where: str, name: str) -> dict[str, int]:
    """An object of counts by name (``{"ok": 3, "crashed": 1}``); empty when absent."""
    value = meta.get(name)
    if value is None:
        return {}
    if type(value) is not dict:
        raise refused(meta, where, name, "an object of counts")
    for key, count in value.items():
        if type(count) is not int or not 0 <= count <= META_INT_MAX:
            raise ProtocolError(f"{where} field {name!r} holds {shown(count)} for {key!r}, not a count")
    return dict(value)
