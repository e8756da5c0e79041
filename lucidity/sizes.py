"""Sizes of memory as people write them ("200MB", "1.5GiB", 1048576) and as lucidity prints them.

Its own module because every layer needs it: the faces take ``memory_limit=``, the CLI ``--memory-limit``,
the daemons and workers report caps; none of them should import another's module for it.
"""

from __future__ import annotations

import re
from typing import Optional, Union

__all__ = ["parse_size", "format_size"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(size: Union[int, str, None]) -> Optional[int]:
    """Bytes from 1048576, "200MB", "1.5GiB" (decimal MB/GB, binary MiB/GiB); None stays None.

    Raises:
        ValueError: for anything else, naming the accepted forms.
    """
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"not a size: {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"a size must be positive, not {size}")
        return size
    match = _SIZE.match(str(size))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {size!r} (use bytes or a number with B, KB, MB, GB, KiB, MiB, GiB)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a size must be positive, not {size!r}")
    return value


def format_size(size: Optional[int]) -> str:
    if size is None:
        return "none"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
