"""Code shipping: a node that has never seen a module runs functions from it, and sees edits."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import lucidity

from helpers import CliCluster


@pytest.fixture
def bare_cluster(tmp_path):
    """A control node and one node started from an empty directory, without the tests on their path."""
    empty = tmp_path / "node-home"
    empty.mkdir()
    with CliCluster() as cluster:
        cluster.env.pop("PYTHONPATH", None)
        cluster.cwd = str(empty)
        cluster.start_control()
        cluster.start_node("bare", 1)
        cluster.wait_for(1, workers_per_node=1)
        yield cluster


@pytest.fixture
def client_dir(tmp_path, monkeypatch):
    """A directory on this process's sys.path only: modules written there exist on the client alone."""
    home = tmp_path / "client-only"
    home.mkdir()
    monkeypatch.syspath_prepend(str(home))
    yield home
    for name in [m for m in sys.modules if m.startswith(("onlyhere", "shippedpkg", "lazyuser", "fakeext"))]:
        del sys.modules[name]


def write(path, text):
    path.write_text(textwrap.dedent(text))
    importlib.invalidate_caches()


def test_a_module_only_the_client_has_runs_on_the_node_and_edits_take_effect(bare_cluster, client_dir):
    write(client_dir / "onlyhere.py", """
        import os
        VERSION = 1
        def where(x):
            return VERSION, x * 2, os.getcwd()
    """)
    import onlyhere

    with lucidity.Pool(address=bare_cluster.address) as pool:
        version, value, cwd = pool.apply(onlyhere.where, (21,))
        assert (version, value) == (1, 42)
        assert cwd != os.getcwd() and cwd.endswith("node-home")
        write(client_dir / "onlyhere.py", """
            VERSION = 2
            def where(x):
                return VERSION, x * 3, None
        """)
        assert pool.apply(onlyhere.where, (21,))[:2] == (2, 63)
        assert pool.map(onlyhere.where, [1, 2])[1][:2] == (2, 6)


def test_a_lazy_import_inside_a_task_is_shipped_too(bare_cluster, client_dir):
    write(client_dir / "lazyuser.py", """
        def compute(x):
            import shippedpkg.helpers
            return shippedpkg.helpers.triple(x)
    """)
    (client_dir / "shippedpkg").mkdir()
    write(client_dir / "shippedpkg" / "__init__.py", "")
    write(client_dir / "shippedpkg" / "helpers.py", "def triple(x):\n    return 3 * x\n")
    import lazyuser

    with lucidity.Pool(address=bare_cluster.address) as pool:
        assert pool.map(lazyuser.compute, range(5)) == [0, 3, 6, 9, 12]


def test_ship_sends_named_packages_up_front(bare_cluster, client_dir):
    (client_dir / "shippedpkg").mkdir()
    write(client_dir / "shippedpkg" / "__init__.py", "from .helpers import triple\n")
    write(client_dir / "shippedpkg" / "helpers.py", "def triple(x):\n    return 3 * x\n")
    import shippedpkg

    with lucidity.Pool(address=bare_cluster.address, ship=["shippedpkg"]) as pool:
        # Gone from the client's disk after the pool started: only the up-front copy can serve the node.
        shutil.rmtree(client_dir / "shippedpkg")
        importlib.invalidate_caches()
        assert pool.apply(shippedpkg.triple, (5,)) == 15


def test_ship_refuses_what_cannot_be_shipped(client_dir):
    with pytest.raises(ImportError, match="no_such_package"):
        lucidity.Pool(address="tcp://127.0.0.1:9", ship=["no_such_package"], connect_timeout=1)


def test_a_compiled_module_is_not_shipped_and_the_error_says_how_to_fix_it(bare_cluster, client_dir):
    # An extension module the client "has" (a file with an extension suffix) but the node does not.
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (client_dir / f"fakeext{suffix}").write_bytes(b"not really compiled")
    write(client_dir / "onlyhere.py", """
        def use_ext():
            import fakeext
            return fakeext
    """)
    import onlyhere

    with lucidity.Pool(address=bare_cluster.address) as pool:
        with pytest.raises(ModuleNotFoundError) as caught:
            pool.apply(onlyhere.use_ext)
        message = str(caught.value)
        assert "fakeext" in message and "node bare" in message and "compiled extension" in message
        assert "Install it on the node" in message and "ship" in message
        assert isinstance(pool.apply(os.getpid), int)  # the worker still serves


def test_functions_of_main_lambdas_and_closures_travel_by_value(bare_cluster, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import lucidity, math
        OFFSET = 10
        def shifted(x):
            return math.floor(x) + OFFSET
        def make_adder(n):
            return lambda x: x + n
        class Point:
            def __init__(self, x):
                self.x = x
        if __name__ == "__main__":
            with lucidity.Pool(address={bare_cluster.address!r}) as pool:
                print(pool.map(shifted, [1.5, 2.5]), pool.apply(make_adder(5), (1,)),
                      pool.apply(lambda p: p.x * 2, (Point(4),)))
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[11, 12] 6 8"
