"""lucidity: a drop-in multiprocessing.Pool whose work runs on node daemons, on one machine or many.

The public names are re-exported here from the modules that define them. They are imported on first use,
so that worker processes and daemons, which import this package too, start without loading the faces.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "__version__",
    "Pool",
    "Executor",
    "job",
    "Job",
    "connect",
    "LocalCluster",
    "current_node",
    "progress",
    "report_progress",
    "LucidityError",
    "ProtocolError",
    "SerializationError",
    "RemoteError",
    "WorkerCrashed",
    "NodeLost",
    "ClusterUnavailable",
    "MemoryLimitExceeded",
    "JobTimeout",
    "CpuLimitExceeded",
    "AuthenticationError",
]

_HOMES = {
    "Pool": "pool",
    "LocalCluster": "cluster",
    "current_node": "cluster",
    "Executor": "executor",
    "job": "jobs",
    "Job": "jobs",
    "connect": "cluster",
    "progress": "progressbar",
    "report_progress": "progressbar",
    **{name: "errors" for name in __all__[__all__.index("LucidityError"):]},
}

if TYPE_CHECKING:
    from .cluster import LocalCluster, connect, current_node
    from .errors import (AuthenticationError, ClusterUnavailable, CpuLimitExceeded, JobTimeout, LucidityError,
                         MemoryLimitExceeded, NodeLost, ProtocolError, RemoteError, SerializationError,
                         WorkerCrashed)
    from .executor import Executor
    from .jobs import Job, job
    from .pool import Pool
    from .progressbar import progress, report_progress


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lucidity' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
