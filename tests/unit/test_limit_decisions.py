"""lucidity.node.limits without a process: sizes, and the watchdog's and the classifier's decisions."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from lucidity.node import limits
from lucidity.sizes import format_size, parse_size
from lucidity.node.limits import Breach, LimitKind, Limits, check

MB = 10**6


@pytest.mark.parametrize("text, expected", [
    ("200MB", 200_000_000), ("1.5GiB", int(1.5 * 2**30)), ("512MiB", 512 * 2**20), ("1GB", 10**9),
    ("64kb", 64_000), (" 2 gb ", 2 * 10**9), ("1048576", 1048576), (1048576, 1048576), ("300B", 300),
    (None, None),
])
def test_sizes_parse(text: Any, expected: Optional[int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "MB", "10 XB", "-5MB", "0MB", 0, -1, True, "1.5.2GB", "2e9"])
def test_bad_sizes_raise_value_error(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("size, text", [
    (None, "none"), (300, "300 B"), (2048, "2.0 KiB"), (200 * MB, "190.7 MiB"), (2**30, "1.0 GiB"),
    (int(1.5 * 2**30), "1.5 GiB"),
])
def test_sizes_format_for_people(size: Optional[int], text: str) -> None:
    assert format_size(size) == text


def test_a_formatted_size_parses_back_to_about_the_same() -> None:
    for size in (5_000, 200 * MB, 3 * 2**30):
        number, unit = format_size(size).split()
        assert abs(parse_size(number + unit) - size) <= 0.05 * size  # type: ignore[operator]  # 1 decimal


def test_limits_know_whether_any_is_set() -> None:
    assert not Limits().any
    assert Limits(memory=1).any and Limits(timeout=0.5).any and Limits(cpu_time=0.5).any


def test_without_limits_nothing_is_a_breach() -> None:
    assert check(Limits(), running_for=10**6, memory=10**12, cpu_used=10**6, pressure=10**6) is None


@pytest.mark.parametrize("limit, sample, expected", [
    (Limits(memory=100 * MB), dict(memory=101 * MB), Breach(LimitKind.MEMORY, 100 * MB, 101 * MB)),
    (Limits(memory=100 * MB), dict(memory=100 * MB), None),
    (Limits(memory=100 * MB), dict(memory=None), None),  # a sample that failed decides nothing
    (Limits(timeout=1.0), dict(running_for=1.5), Breach(LimitKind.TIMEOUT, 1.0, 1.5)),
    (Limits(timeout=1.0), dict(running_for=0.9), None),
    (Limits(cpu_time=1.0), dict(cpu_used=1.2), Breach(LimitKind.CPU, 1.0, 1.2)),
    (Limits(cpu_time=1.0), dict(cpu_used=None), None),
    (Limits(cpu_time=1.0), dict(running_for=100.0, cpu_used=0.5), None),  # sleeping uses no CPU time
    (Limits(timeout=1.0), dict(cpu_used=100.0), None),
], ids=["memory over", "memory at the cap", "memory unknown", "timeout over", "timeout under", "cpu over",
        "cpu unknown", "cpu under while sleeping", "cpu without a cpu limit"])
def test_one_sample_decides_one_breach(limit: Limits, sample: dict[str, Any], expected: Optional[Breach]) -> None:
    sample = {"running_for": 0.0, "memory": 0, "cpu_used": 0.0, **sample}
    decision = check(limit, **sample)
    if expected is None:
        assert decision is None
    else:
        assert decision is not None and decision[:3] == expected[:3]


def test_memory_is_named_first_when_several_limits_break_at_once() -> None:
    breach = check(Limits(memory=MB, timeout=1.0, cpu_time=1.0), running_for=2.0, memory=2 * MB, cpu_used=2.0)
    assert breach is not None and breach.kind is LimitKind.MEMORY


@pytest.mark.parametrize("stderr, last_memory, cap, expected", [
    ("", 95 * MB, 100 * MB, True),  # died near its cap
    ("", 50 * MB, 100 * MB, False),
    ("Traceback ...\nMemoryError\n", 10 * MB, 100 * MB, True),
    ("terminate called after throwing an instance of 'std::bad_alloc'", 0, 100 * MB, True),
    ("OpenBLAS : Program is Terminated. Because you tried to allocate too many memory regions.", 0, 100 * MB, True),
    ("OpenBLAS : Program is Terminated.", 0, 0, False),  # without a cap, a crash is a crash
    ("", 10**12, 0, False),
    ("Segmentation fault", 10 * MB, 100 * MB, False),
])
def test_a_worker_that_died_on_its_own_is_called_a_memory_breach_only_with_evidence(
        stderr: str, last_memory: int, cap: int, expected: bool) -> None:
    assert limits.looks_like_memory_failure(stderr, last_memory, cap) is expected


def test_a_thread_that_could_not_start_is_a_memory_failure() -> None:
    assert limits.thread_failed_for_memory(RuntimeError("can't start new thread"))
    assert not limits.thread_failed_for_memory(RuntimeError("something else"))
    assert not limits.thread_failed_for_memory(MemoryError())


def test_the_data_rlimit_is_a_backstop_above_the_cap() -> None:
    caps = [64 * 2**20, 200 * MB, 2**30, 16 * 2**30]
    rlimits = [limits.rlimit_for(cap) for cap in caps]
    assert all(rlimit > cap for rlimit, cap in zip(rlimits, caps))
    assert rlimits == sorted(rlimits)
