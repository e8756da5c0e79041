"""`Record`, the base of every body class of `lucidity.messages`: immutable, slotted, compared by value.

The bodies were frozen dataclasses until issue 13, whose start-up work found that generating their methods
(an ``exec`` for each ``__init__``, ``__eq__``, ``__repr__``, ``__setattr__``... of 31 classes) cost every
process that imports `lucidity.messages` (caller, daemons, workers) about 15 ms, from a budget of 100 for
``Pool()`` to its first result. A `Record` subclass writes what the dataclass generated and this base cannot
share: its ``__slots__`` (the fields, in order, after those of its bases) and an ``__init__`` taking them in
that order, which sets them with `object.__setattr__` (or `Record._assign`) as a frozen dataclass did.
Equality, hashing, ``repr``, pickling and `replace` come from here, field by field. Private to the package.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

__all__ = ["Record"]

_Record_ = TypeVar("_Record_", bound="Record")


class Record:
    """An immutable record whose fields are its ``__slots__`` (its bases' first), as a frozen dataclass.

    Assigning or deleting a field raises AttributeError; two records are equal when they are of the same
    class and their fields are equal; ``__init__`` must take every field, positionally, in `FIELDS` order
    (pickling and `replace` rely on it).
    """

    __slots__ = ()

    #: Every field, in order: the slots of each base class, then the class's own.
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__slots__" not in cls.__dict__:  # without, instances would get a __dict__ and mutable attributes
            raise TypeError(f"{cls.__qualname__}: a Record names its fields in __slots__")
        cls.FIELDS = tuple(name for klass in reversed(cls.__mro__) for name in klass.__dict__.get("__slots__", ()))

    def _assign(self, *values: Any) -> None:
        """Set the fields, in `FIELDS` order (for ``__init__``: the record is frozen after it)."""
        for name, value in zip(self.FIELDS, values):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def replace(self: _Record_, **changes: Any) -> _Record_:
        """A copy with the fields named in `changes` changed (as `dataclasses.replace`)."""
        values = dict(zip(self.FIELDS, self._values()))
        values.update(changes)
        return type(self)(**values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}: it is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}: it is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__qualname__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self._values()
