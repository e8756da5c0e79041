"""Task functions shared by several test modules (workers import them by this module's name)."""

from __future__ import annotations


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


INITIALIZED: list[object] = []


def remember(value: object) -> None:
    """An initializer: leaves `value` where tasks of this worker can see it."""
    INITIALIZED.append(value)


def initialized() -> tuple[list[object], int]:
    import os

    return list(INITIALIZED), os.getpid()
