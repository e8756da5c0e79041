"""The public surface: exactly these names, each importable, with signatures that match the stdlib's."""

from __future__ import annotations

import concurrent.futures
import inspect
import multiprocessing.pool
import subprocess
import sys

import lucidity

PUBLIC = {
    "__version__", "Pool", "Executor", "job", "Job", "connect", "LocalCluster", "current_node", "progress",
    "report_progress", "LucidityError", "ProtocolError", "SerializationError", "RemoteError", "WorkerCrashed", "NodeLost",
    "ClusterUnavailable", "MemoryLimitExceeded", "JobTimeout", "CpuLimitExceeded", "AuthenticationError",
}


def test_all_lists_exactly_the_public_names_and_each_resolves():
    assert set(lucidity.__all__) == PUBLIC
    for name in lucidity.__all__:
        assert getattr(lucidity, name) is not None


def test_errors_honour_the_stdlib_types():
    assert issubclass(lucidity.MemoryLimitExceeded, MemoryError)
    assert issubclass(lucidity.JobTimeout, TimeoutError)
    assert issubclass(lucidity.RemoteError, multiprocessing.pool.MaybeEncodingError)
    assert issubclass(lucidity.AuthenticationError, PermissionError)
    for name in PUBLIC - {"__version__", "Pool", "Executor", "job", "Job", "connect", "LocalCluster", "current_node",
                          "progress", "report_progress"}:
        assert issubclass(getattr(lucidity, name), lucidity.LucidityError)


def test_the_faces_accept_the_stdlib_signatures():
    for method in ["apply", "apply_async", "map", "map_async", "imap", "imap_unordered", "starmap", "starmap_async",
                   "close", "terminate", "join"]:
        ours = inspect.signature(getattr(lucidity.Pool, method)).parameters
        theirs = inspect.signature(getattr(multiprocessing.pool.Pool, method)).parameters
        assert list(theirs) == list(ours)[:len(theirs)], method
    theirs = list(inspect.signature(multiprocessing.pool.Pool.__init__).parameters)
    assert list(inspect.signature(lucidity.Pool.__init__).parameters)[:len(theirs)] == theirs
    assert issubclass(lucidity.Executor, concurrent.futures.Executor)
    assert issubclass(lucidity.Job, concurrent.futures.Future)


def test_importing_lucidity_loads_no_face_until_used():
    code = "import sys, lucidity; print(sorted(m for m in sys.modules if m.startswith('lucidity')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "['lucidity', 'lucidity._version']"
