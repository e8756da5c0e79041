"""The functions the benchmarks run on workers.

They live in a module of their own, importable by name on every worker, and import nothing: a spawned
worker re-imports the module that defines its function, and the idle-memory workload must not measure
numpy or the harness.
"""

from __future__ import annotations

from typing import Any


def noop() -> None:
    """The empty task of the latency and submit workloads."""
    return None


def square(x: int) -> int:
    """The tiny task of the map workloads."""
    return x * x


def identity(x: Any) -> Any:
    """Return the argument, so that a large array crosses to the worker and back."""
    return x


def sleep_for(seconds: float) -> int:
    """The task of the balance workloads: sleep (the machine has 2 cores, so 64 workers cannot all spin), then
    name the worker that ran it, so that the harness can count the workers a map reached."""
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def sleep_and_time(seconds: float) -> tuple[int, float, float]:
    """`sleep_for`, also saying when it started and ended on the machine's monotonic clock (balance --trace)."""
    import os
    import time

    started = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), started, time.monotonic()
