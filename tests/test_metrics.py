"""`--metrics HOST:PORT` on both daemons, read by a real Prometheus server (docs/monitoring.md).

A CLI cluster (control and one node, each with --metrics on loopback) is scraped every second by the
`prometheus` binary (Debian's package), started here with a temporary config and storage and reaped by pid.
A run of tasks with known outcomes (values, exceptions, a worker that exits, a task the watchdog kills over
its memory cap) must come out in Prometheus' own query API as exactly those numbers. The text each daemon
serves passes `promtool check metrics`, the Grafana dashboard in deploy/grafana queries only metric names a
live daemon serves, and /health answers 200 or 503 as the docs say.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

import lucidity
from helpers import WAIT, CliCluster, Rendezvous, WaitTimeout, free_port, hold, stop_process, wait_until
from lucidity import addresses
from lucidity.node.metrics import Exporter

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "lucidity.json"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
#: The node's cap, and what the task the watchdog must kill maps: MAP_SHARED memory, which RLIMIT_DATA does
#: not count, so only the watchdog (a kill, reason "memory") can stop it.
CAP = "200MB"
OVER_CAP = 400_000_000
#: Prometheus begins scraping a few seconds after it is ready (its discovery updates are throttled to 5 s).
SCRAPE_WAIT = 60.0
#: Of the tasks in the run: how many raise.
TASKS, FAILING = 20, 5


def fails_on_multiples_of_four(x: int) -> int:
    if x % 4 == 0:
        raise ValueError(f"{x} is a multiple of four")
    return x


def take_shared(size: int = OVER_CAP) -> str:
    region = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    for offset in range(0, size, mmap.PAGESIZE):
        region[offset] = 1
    return "survived"


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """Status and body of a GET (an HTTP error status is returned, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric_names(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


class MetricsCluster(CliCluster):
    """A CLI cluster whose control node and node n1 serve metrics on loopback ports."""

    def __init__(self) -> None:
        super().__init__()
        self.control_metrics = f"127.0.0.1:{free_port()}"
        self.node_metrics = f"127.0.0.1:{free_port()}"

    def scrape(self, where: str, path: str = "/metrics") -> tuple[int, str]:
        return get(f"http://{where}{path}")


@pytest.fixture
def cluster() -> Iterator[MetricsCluster]:
    with MetricsCluster() as cluster:
        cluster.start_control("--metrics", cluster.control_metrics)
        cluster.start_node("n1", 2, "--memory-limit", CAP, "--metrics", cluster.node_metrics)
        cluster.wait_for(1, 2)
        yield cluster


class Prometheus:
    """The real server, scraping `targets` ({job: HOST:PORT}) every second; stopped and reaped by `close`."""

    def __init__(self, directory: Path, targets: dict[str, str]) -> None:
        jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
                       for job, target in targets.items())
        config = directory / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n{jobs}")
        self.address = f"127.0.0.1:{free_port()}"
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address={self.address}"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return get(f"http://{self.address}/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def query(self, expression: str) -> dict[str, float]:
        """An instant query: each series' value, keyed by its labels other than job and instance."""
        status, body = get(f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", body
        found = {}
        for series in answer["data"]["result"]:
            labels = {k: v for k, v in series["metric"].items() if k not in ("job", "instance", "__name__")}
            found[",".join(f"{k}={v}" for k, v in sorted(labels.items()))] = float(series["value"][1])
        return found

    def close(self) -> None:
        stop_process(self.process)


@pytest.fixture
def prometheus(cluster: MetricsCluster, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, {"lucidity-control": cluster.control_metrics, "lucidity-nodes": cluster.node_metrics})
    try:
        wait_until(server.ready, WAIT, "prometheus to be ready")
        yield server
    finally:
        server.close()


@pytest.mark.timeout(120)
def test_prometheus_scrapes_the_outcomes_of_a_run_from_both_daemons(cluster: MetricsCluster,
                                                                    prometheus: Prometheus) -> None:
    with lucidity.Pool(address=cluster.address) as pool:
        results = [pool.apply_async(fails_on_multiples_of_four, (x,)) for x in range(TASKS)]
        errors = 0
        for result in results:
            try:
                result.get(WAIT)
            except ValueError:
                errors += 1
        assert errors == FAILING
        with pytest.raises(lucidity.MemoryLimitExceeded):
            pool.apply(take_shared)
        with pytest.raises(lucidity.WorkerCrashed):
            pool.apply(os._exit, (3,))
        assert pool.apply(abs, (-1,)) == 1, "the pool still serves"
    expected = {"outcome=ok": TASKS - FAILING + 1, "outcome=error": FAILING, "outcome=memory": 1,
                "outcome=crashed": 1, "outcome=timeout": 0, "outcome=cpu": 0, "outcome=lost": 0}
    seen: dict[str, Any] = {}

    def scraped() -> bool:
        seen["tasks"] = prometheus.query("lucidity_tasks_total")
        seen["kills"] = prometheus.query("lucidity_limit_kills_total")
        seen["durations"] = prometheus.query("lucidity_task_duration_seconds_count")
        seen["up"] = prometheus.query("count(up == 1)")
        return (seen["tasks"] == expected and seen["kills"].get("reason=memory") == 1
                and seen["durations"] == {"": TASKS + 1} and seen["up"] == {"": 2})

    try:
        wait_until(scraped, SCRAPE_WAIT, f"Prometheus to scrape {expected}")
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}; it saw {seen}") from None
    assert prometheus.query('lucidity_cluster_nodes{state="idle"} + ignoring(state) '
                            'lucidity_cluster_nodes{state="busy"}') == {"": 1}
    assert prometheus.query("sum(lucidity_cluster_workers)") == {"": 2}
    assert prometheus.query("lucidity_workers_started_total")[""] >= 4, "two replacements"
    assert prometheus.query("lucidity_worker_received_bytes_total")[""] > 0
    assert prometheus.query("lucidity_worker_sent_bytes_total")[""] > 0
    caps = prometheus.query("lucidity_worker_memory_limit_bytes")
    assert caps == {"position=0": 200e6, "position=1": 200e6}
    assert prometheus.query('lucidity_daemon_info{daemon="control"}') != {}


@pytest.mark.timeout(60)
def test_each_daemons_text_passes_promtool_and_the_dashboard_queries_only_served_metrics(
        cluster: MetricsCluster) -> None:
    served: set[str] = set()
    for where in (cluster.control_metrics, cluster.node_metrics):
        status, text = cluster.scrape(where)
        assert status == 200
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
            f"promtool on {where}: {check.stdout}{check.stderr}")
        served |= metric_names(text)
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 8
    for expression in expressions:
        used = set(re.findall(r"\blucidity_[a-z_]+", expression))
        assert used, f"a panel queries no lucidity metric: {expression}"
        families = {re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith("lucidity_task_duration")
                    else name for name in used}
        assert families <= served, f"{expression} queries {families - served}, which no daemon serves"


def scraped_value(text: str, sample: str) -> Optional[float]:
    """The value of one sample line (``name{labels}``) of a scrape, or None if it is not there."""
    found = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.rsplit(" ", 1)[0] == sample]
    return float(found[0]) if found else None


@pytest.mark.timeout(60)
def test_running_tasks_of_a_client_that_terminates_count_as_lost(cluster: MetricsCluster) -> None:
    def lost() -> Optional[float]:
        return scraped_value(cluster.scrape(cluster.node_metrics)[1], 'lucidity_tasks_total{outcome="lost"}')

    with Rendezvous() as rendezvous:
        pool = lucidity.Pool(address=cluster.address)
        try:
            for tag in range(6):
                pool.apply_async(hold, (rendezvous.address, str(tag)))
            rendezvous.started(2)  # both workers run one; the others wait in the workers' queues
        finally:
            pool.terminate()  # cancels what waits, and the node stops the two that run
        # Still held: released before the node has stopped them, they would return and count as ok.
        wait_until(lambda: (lost() or 0) >= 2, WAIT, "the two running tasks counted as lost")
    text = cluster.scrape(cluster.node_metrics)[1]
    assert (scraped_value(text, 'lucidity_tasks_total{outcome="lost"}') or 0) <= 6, "each task at most once"
    assert scraped_value(text, 'lucidity_tasks_total{outcome="ok"}') == 0
    assert scraped_value(text, 'lucidity_tasks_total{outcome="crashed"}') == 0, "stopped for its client: no crash"


@pytest.mark.timeout(60)
def test_health_is_200_with_json_while_serving(cluster: MetricsCluster) -> None:
    status, body = cluster.scrape(cluster.node_metrics, "/health")
    assert status == 200
    health = json.loads(body)
    assert health["node"] == "n1" and health["workers_ready"] == 2 and health["state"] == "serving"
    wait_until(lambda: json.loads(cluster.scrape(cluster.node_metrics, "/health")[1])["joined"], WAIT, "joined")
    status, body = cluster.scrape(cluster.control_metrics, "/health")
    assert status == 200 and json.loads(body) == {"daemon": "control", "state": "serving", "nodes": 1, "clients": 0}
    assert cluster.scrape(cluster.node_metrics, "/nothing")[0] == 404


@pytest.mark.timeout(90)
def test_a_node_without_a_live_worker_is_unhealthy(tmp_path: Path) -> None:
    """Every worker of this node exits at start-up (a sitecustomize that only workers run): 503, and it stays."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('LUCIDITY_NODE'):\n    os._exit(7)  # a worker, never its daemon\n")
    with MetricsCluster() as cluster:
        cluster.env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), cluster.env["PYTHONPATH"]])
        cluster.env["LUCIDITY_WORKER_START"] = "exec"  # sitecustomize runs when an interpreter starts, not at a fork
        cluster.start_control()
        cluster.start_node("n1", 1, "--metrics", cluster.node_metrics)

        def restarted() -> bool:
            try:
                text = cluster.scrape(cluster.node_metrics)[1]
            except OSError:
                return False  # not listening yet
            started = re.search(r"^lucidity_workers_started_total (\d+)$", text, re.M)
            return started is not None and int(started.group(1)) >= 3

        wait_until(restarted, WAIT, "the node to start its worker three times")
        status, body = cluster.scrape(cluster.node_metrics, "/health")
        assert status == 503 and json.loads(body)["workers_ready"] == 0


@pytest.mark.timeout(30)
def test_health_is_503_while_stopping_and_when_the_loop_does_not_answer() -> None:
    """The Exporter with a stand-in loop: answered, stuck (no answer), stopping."""
    stopping = threading.Event()
    answering = threading.Event()
    woken = threading.Event()
    exporter = Exporter(addresses.parse("127.0.0.1:0", allow_port_zero=True), "test", woken.set, stopping.is_set)
    url = exporter.start().rsplit("/", 1)[0]
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            if woken.wait(0.05) and answering.is_set():
                woken.clear()
                exporter.answer(lambda: [], lambda: (True, {"daemon": "test"}))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        answering.set()
        assert get(url + "/health") == (200, '{"daemon": "test"}\n')
        assert get(url + "/metrics") == (200, "\n")
        answering.clear()
        status, body = get(url + "/health")
        assert status == 503 and "did not answer" in json.loads(body)["reason"]
        stopping.set()
        assert get(url + "/health") == (503, '{"status": "unavailable", "reason": "stopping"}\n')
        assert get(url + "/metrics")[0] == 503
    finally:
        done.set()
        thread.join(10)
        exporter.close()
    with pytest.raises(OSError):
        get(url + "/health", timeout=2)


@pytest.mark.timeout(30)
def test_metrics_beyond_loopback_need_a_secret() -> None:
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "lucidity", "control", "--bind", f"127.0.0.1:{free_port()}",
                           "--metrics", f"0.0.0.0:{port}"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert "refuses to serve metrics on 0.0.0.0" in done.stderr and "--secret-file" in done.stderr
