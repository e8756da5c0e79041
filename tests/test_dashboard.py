"""The web dashboard (`lucidity control --dashboard`) in a real browser, against a real CLI cluster.

Headless Chromium (Debian's chromium and chromedriver, driven by selenium; no driver download) loads the
page the control node serves; the test reads the DOM with deadlines while the cluster works. The access
rules are checked with plain HTTP: a loopback dashboard refuses foreign Host headers, one beyond loopback
needs the cluster secret and the token it prints at start.

With LUCIDITY_DOCS_IMAGES=1, the screenshot also goes to docs/images/dashboard.png.
"""

from __future__ import annotations

import http.client
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
import urllib.parse
from typing import Any, Iterator

import psutil
import pytest

import lucidity
from lucidity.errors import WorkerCrashed

from helpers import WAIT, CliCluster, Rendezvous, free_port, hold, stop_process, wait_until
from tasks import pid_of, sleep_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DOCS_IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images")
URL_LINE = re.compile(r"dashboard at (http://\S+)")


def start_control(cluster: CliCluster, *options: str) -> tuple["subprocess.Popen[bytes]", str]:
    """Start the cluster's control node with `options`, as CliCluster does but reading its stderr for the
    dashboard's URL; the process is the cluster's to stop. Returns it and the URL (None: it printed none)."""
    proc = subprocess.Popen([sys.executable, "-m", "lucidity", "--log-level", "WARNING", "control", "--bind",
                             cluster.address, *options], env=cluster.env, stderr=subprocess.PIPE,
                            start_new_session=True)
    cluster.processes["control"] = proc
    assert proc.stderr is not None
    printed = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + WAIT
        while b"\n" not in printed and time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                printed += chunk
    found = URL_LINE.search(printed.decode())
    if found is None:
        raise AssertionError(f"the control node printed no dashboard URL: {printed!r}")
    return proc, found.group(1)


def get(url: str, host: "str | None" = None) -> tuple[int, bytes]:
    """GET `url` over plain HTTP, optionally with another Host header; (status, body)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=WAIT)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", path, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium under chromedriver; quit, and every process of both reaped, at the end."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromedriver are not installed (CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver_process = psutil.Process(service.process.pid)
    try:
        yield driver
    finally:
        processes = [driver_process] + driver_process.children(recursive=True)
        try:
            driver.quit()
        finally:
            _, alive = psutil.wait_procs(processes, timeout=10)
            for process in alive:
                process.kill()
            psutil.wait_procs(alive, timeout=10)


def text_of(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def count_of(driver: Any, selector: str) -> int:
    from selenium.webdriver.common.by import By

    return len(driver.find_elements(By.CSS_SELECTOR, selector))


def number(driver: Any, selector: str) -> float:
    text = text_of(driver, selector)
    return float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else -1.0


@pytest.mark.timeout(240)
def test_the_page_shows_the_cluster_and_its_numbers_move_with_the_work(browser: Any, rendezvous: Rendezvous,
                                                                       tmp_path: Any) -> None:
    with CliCluster() as cluster:
        _, url = start_control(cluster, "--dashboard", f"127.0.0.1:{free_port()}")
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        for name in ("n1", "n2"):
            cluster.start_node(name, 2, "--memory-limit", "512MiB")
        report = cluster.wait_for(2, workers_per_node=2)
        pids = [w["pid"] for n in report["nodes"] for w in n["workers"]]

        browser.get(url)
        wait_until(lambda: count_of(browser, "section.node[data-name=n1]") and
                   count_of(browser, "section.node[data-name=n2]"), WAIT, "both nodes on the page")
        wait_until(lambda: all(count_of(browser, f"tr.worker[data-pid='{pid}']") for pid in pids), WAIT,
                   "all four workers on the page")
        assert text_of(browser, "#total-workers") == "4"
        assert all("/ 512.0 MiB" in text_of(browser, f"tr.worker[data-pid='{pid}']") for pid in pids)

        with lucidity.Pool(address=cluster.address) as pool:
            wait_until(lambda: len(set(pool.map(pid_of, range(40), chunksize=1))) == 4, WAIT, "all four workers")
            with pytest.raises(WorkerCrashed):
                pool.apply_async(os._exit, (3,)).get(WAIT)  # one failure for the page's list
            # The crash, with the text its client got (the node lists it in its status).
            wait_until(lambda: "crashed: worker" in text_of(browser, "#failures")
                       and "exited with code 3" in text_of(browser, "#failures"), WAIT, "the crash among failures")
            done_before = wait_until(lambda: number(browser, "#total-done") >= 40 and number(browser, "#total-done"),
                                     WAIT, "the warm-up's tasks counted")
            held = []
            for index in range(3):  # one at a time: each goes to an idle worker
                held.append(pool.apply_async(hold, (rendezvous.address, f"held-{index}")))
                rendezvous.started()
            work = pool.map_async(sleep_for, [0.01] * 1500, chunksize=1)  # the fourth worker's, while held
            wait_until(lambda: number(browser, "#total-busy") == 4, WAIT, "four busy workers on the page")
            wait_until(lambda: number(browser, "#total-rate") > 0, WAIT, "tasks per second above zero")
            wait_until(lambda: len(browser.find_element("id", "chart-line").get_attribute("points").split()) > 3,
                       WAIT, "the chart of tasks per second")
            browser.save_screenshot(str(tmp_path / "dashboard.png"))
            if os.environ.get("LUCIDITY_DOCS_IMAGES"):
                os.makedirs(DOCS_IMAGES, exist_ok=True)
                browser.save_screenshot(os.path.join(DOCS_IMAGES, "dashboard.png"))
            rendezvous.release()
            assert sorted(r.get(WAIT) for r in held) == [f"held-{i}" for i in range(3)]
            work.get(WAIT)
        wait_until(lambda: number(browser, "#total-done") >= done_before + 1503, WAIT, "every task counted")
        wait_until(lambda: number(browser, "#total-rate") == 0 and number(browser, "#total-busy") == 0, WAIT,
                   "the page at rest again")
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_beyond_loopback_the_dashboard_needs_the_secret_and_then_its_token(tmp_path: Any) -> None:
    with CliCluster() as cluster:
        refused = subprocess.run([sys.executable, "-m", "lucidity", "control", "--bind", cluster.address,
                                  "--dashboard", f"0.0.0.0:{free_port()}"], env=cluster.env, capture_output=True,
                                 text=True, timeout=WAIT)
        assert refused.returncode == 2 and "needs the cluster secret" in refused.stderr

        secret_file = str(tmp_path / "secret")
        subprocess.run([sys.executable, "-m", "lucidity", "secret", secret_file], check=True, capture_output=True,
                       timeout=WAIT)
        control, url = start_control(cluster, "--secret-file", secret_file, "--dashboard", f"0.0.0.0:{free_port()}")
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        port = urllib.parse.urlsplit(url).port
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/")[0] == 403
        assert get(f"{base}/api/status")[0] == 403
        assert get(f"{base}/api/status?token={token[:-1]}")[0] == 403
        assert get(f"{base}/api/status?token={token}x")[0] == 403
        status, page = get(f"{base}/?token={token}")
        assert status == 200 and b"<title>lucidity dashboard</title>" in page
        # The dashboard asks the daemons with the secret: the control node's own status comes through.
        snapshot = wait_until(lambda: (lambda s: s if b'"role": "control"' in s[1] else None)(
            get(f"{base}/api/status?token={token}")), WAIT, "a sample of the secured cluster")
        assert snapshot[0] == 200
        assert stop_process(cluster.processes.pop("control")) == 0
        assert control.returncode == 0


def test_a_loopback_dashboard_answers_only_to_loopback_names() -> None:
    with CliCluster() as cluster:
        _, url = start_control(cluster, "--dashboard", f"127.0.0.1:{free_port()}")
        port = urllib.parse.urlsplit(url).port
        assert get(url)[0] == 200
        assert get(url, host=f"localhost:{port}")[0] == 200
        assert get(url, host=f"[::1]:{port}")[0] == 200
        # A page elsewhere that rebinds its own name to 127.0.0.1 sends its own name: refused.
        assert get(url, host=f"attacker.example:{port}")[0] == 403
        assert get(f"{url}nothing-here")[0] == 404
