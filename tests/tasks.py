"""Task functions shared by several test modules (workers import them by this module's name).

They work on lucidity's workers and on the stdlib's (forked, or importing this module by name), so that
one test body can run against both.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable


def identity(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def power(base: int, exponent: int = 2) -> int:
    return base ** exponent


def add(a: int, b: int) -> int:
    return a + b


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def pid_of(_: object = None) -> int:
    """The pid of the worker that ran the task."""
    return os.getpid()


def make_adder(amount: int) -> Callable[[int], int]:
    """A closure, which only travels by value."""
    def adder(x: int) -> int:
        return x + amount
    return adder


def pow_of(make: Callable[[], int]) -> int:
    return make() ** 2


class Boom(Exception):
    """A custom exception whose constructor takes two arguments."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)


def raise_boom(message: str, code: int) -> None:
    raise Boom(message, code)


def fail_on_three(x: int) -> int:
    if x == 3:
        raise Boom("three", x)
    return x


def divide(a: int, b: int) -> float:
    return a / b


class Unpicklable:
    """Neither pickle nor dill can serialize this."""

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle Unpicklable")


class UnpicklableCallable(Unpicklable):
    def __call__(self, x: int) -> int:
        return x


INITIALIZED: list[object] = []


def remember(value: object) -> None:
    """An initializer: leaves `value` where tasks of this worker can see it."""
    INITIALIZED.append(value)


def initialized() -> tuple[list[object], int]:
    return list(INITIALIZED), os.getpid()
