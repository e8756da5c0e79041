"""Workers answer the standard library's platform probes themselves (issue 11, item 6).

copy and pickle import ``org.python.core`` to learn whether they run on Jython; subprocess, mimetypes and
platform import ``msvcrt``, ``_winapi``, ``winreg`` and ``java.lang`` to learn whether they run on Windows
or Java. A worker that let these reach its import hook asked the client for each, once per worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lucidity.shipping import INTERPRETER_PROBES

from scripts import run_script

# The client counts the FETCH messages its workers send, by wrapping the decoder it reads them with. The
# function is defined in __main__, so it travels by value; it runs the standard library's probes afresh
# (each module executed again, as a first import would) and imports one module that only the client has,
# which shows that the count sees real fetches.
SCRIPT = """
    import importlib.util, json, os, sys, time
    import lucidity.protocol as protocol
    from multiprocessing import Pool  # lucidity: from lucidity import Pool

    FETCHED = []
    decode = protocol.decode

    def counting_decode(*args, **kwargs):
        message = decode(*args, **kwargs)
        if message.kind is protocol.Kind.FETCH:
            FETCHED.append(message.meta["module"])
        return message

    protocol.decode = counting_decode

    def probe(x):
        found = {}
        for name in ("copy", "pickle", "subprocess", "mimetypes", "platform"):
            module = importlib.util.module_from_spec(importlib.util.find_spec(name))
            module.__spec__.loader.exec_module(module)
            found[name] = module
        import onlyclient
        time.sleep(0.05)  # so that both workers take tasks
        return (os.getpid(), found["pickle"].PyStringMap is None, found["subprocess"]._mswindows,
                found["mimetypes"]._winreg is None, found["platform"].java_ver()[0], onlyclient.VALUE)

    def import_winreg(x):
        import winreg

    if __name__ == "__main__":
        with Pool(2) as pool:
            # Added after the pool started, so that its workers cannot import from here themselves.
            sys.path.insert(0, os.path.abspath("client-only"))
            results = pool.map(probe, range(8), chunksize=1)
            try:
                pool.apply(import_winreg, (0,))
                error = ""
            except ModuleNotFoundError as exc:
                error = f"{exc.name}: {exc}"
        print(json.dumps({"fetched": FETCHED, "results": results, "error": error}))
"""


def test_workers_never_ask_the_client_for_standard_library_probes(tmp_path: Path) -> None:
    (tmp_path / "client-only").mkdir()
    (tmp_path / "client-only" / "onlyclient.py").write_text("VALUE = 42\n")
    run = run_script(SCRIPT, tmp_path, "lucidity").check()
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    workers = {result[0] for result in seen["results"]}
    # Every probe ran on the worker and failed, as it should off Jython and Windows.
    assert [result[1:] for result in seen["results"]] == [[True, False, True, "", 42]] * 8
    # The only fetches: the client-only module, once per worker that ran the function.
    assert sorted(seen["fetched"]) == ["onlyclient"] * len(workers)
    probes = [name for name in seen["fetched"]
              if name.partition(".")[0] in INTERPRETER_PROBES | set(sys.stdlib_module_names)]
    assert probes == []
    # A standard-library module the node's Python lacks is not fetched, and its error says so.
    assert seen["error"].startswith("winreg: No module named 'winreg' on node local")
    assert "belongs to the standard library" in seen["error"]
