"""Across a network against loopback, in one run: apply round trip and map throughput.

    sudo python -m benchmarks.network [--rounds 3]

Two test hosts (network namespaces joined by a bridge, tests/testhosts.py; root and iproute2 needed): a
control daemon and a node of two workers on host a; the client on host a over loopback, then on host b over
the bridge (IPv4 and IPv6). Loopback is measured without and with the cluster secret, since beyond loopback
a secret (CURVE) is required. Each case runs in a fresh client process: `apply` round trips (median and
p99 of 2,000 after a warm-up) and `map` throughput (400,000 trivial tasks with the default chunksize, and
4,000 with chunksize=1). The ratio column divides by loopback with the secret, the fair comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from testhosts import Host, HostCluster, Network  # noqa: E402

CLIENT = """
import json, sys, time
import lucidity

if __name__ == "__main__":
    with lucidity.Pool(address=sys.argv[1]) as pool:
        for _ in range(200):
            pool.apply(abs, (-1,))
        times = []
        for _ in range(2000):
            started = time.perf_counter()
            pool.apply(abs, (-1,))
            times.append(time.perf_counter() - started)
        times.sort()
        started = time.perf_counter()
        pool.map(abs, range(400000))
        bulk = 400000 / (time.perf_counter() - started)
        started = time.perf_counter()
        pool.map(abs, range(4000), chunksize=1)
        single = 4000 / (time.perf_counter() - started)
    print(json.dumps({"apply_p50_us": times[1000] * 1e6, "apply_p99_us": times[1980] * 1e6,
                      "map_per_s": bulk, "map_chunk1_per_s": single}))
"""


def run_case(client_host: Host, cluster: HostCluster, address: str, script: Path, secret: bool) -> dict[str, Any]:
    env = dict(cluster.env)
    if secret and cluster.secret_file is not None:
        env["LUCIDITY_SECRET_FILE"] = str(cluster.secret_file)
    done = client_host.run([sys.executable, str(script), address], timeout=300, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"client failed:\n{done.stderr}\n{cluster.describe_logs()}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def measure(rounds: int) -> dict[str, list[dict[str, Any]]]:
    from lucidity.security import write_secret_file

    workdir = Path(tempfile.mkdtemp(prefix="lucidity-bench-network-"))
    script = workdir / "client.py"
    script.write_text(CLIENT)
    secret = workdir / "secret"
    write_secret_file(str(secret))
    network = Network(f"lb{os.getpid()}", workdir / "network")
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        network.start()
        a, b = network.add_host("a"), network.add_host("b")
        plain = HostCluster(network, workdir / "plain")
        (workdir / "plain").mkdir()
        plain.start_control(a, "tcp://127.0.0.1:3040")
        plain.start_node(a, bind="tcp://127.0.0.1:0", name="plain")
        plain.wait_for(["plain"], workers_per_node=2, timeout=30)
        secured = HostCluster(network, workdir / "secured", secret)
        (workdir / "secured").mkdir()
        secured.start_control(a, "tcp://[::]:3030")
        secured.control_address = f"tcp://{a.ipv4}:3030"
        secured.start_node(a, secured.control_address, bind="tcp://[::]:0", name="secured")
        secured.wait_for(["secured"], workers_per_node=2, timeout=30)
        cases = [
            ("loopback, no secret", a, plain, "tcp://127.0.0.1:3040", False),
            ("loopback, secret", a, secured, "tcp://127.0.0.1:3030", True),
            ("bridge IPv4, secret", b, secured, f"tcp://{a.ipv4}:3030", True),
            ("bridge IPv6, secret", b, secured, f"tcp://[{a.ipv6}]:3030", True),
        ]
        for _ in range(rounds):
            for name, host, cluster, address, with_secret in cases:  # interleaved, so drift hits every case
                results.setdefault(name, []).append(run_case(host, cluster, address, script, with_secret))
        plain.close()
        secured.close()
    finally:
        network.close()
    return results


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    base = {key: statistics.median(r[key] for r in results["loopback, secret"])
            for key in ("apply_p50_us", "map_per_s", "map_chunk1_per_s")}
    lines = ["| case | apply p50 (us) | apply p99 (us) | map (tasks/s) | map chunksize=1 (tasks/s) | "
             "apply ratio | map ratio | chunk1 ratio |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        lines.append(f"| {name} | {med['apply_p50_us']:.0f} | {med['apply_p99_us']:.0f} | {med['map_per_s']:.0f} | "
                     f"{med['map_chunk1_per_s']:.0f} | {med['apply_p50_us'] / base['apply_p50_us']:.2f} | "
                     f"{med['map_per_s'] / base['map_per_s']:.2f} | "
                     f"{med['map_chunk1_per_s'] / base['map_chunk1_per_s']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks.network: needs root to make network namespaces", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(report(measure(args.rounds)))
    print(f"\n{args.rounds} round(s), medians; {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
