"""HTTP beside 9P: /metrics as Prometheus reads it, /api/status as the
files say it, the token, the dashboard in a real browser, `llamafs top` in
a real terminal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request

import pytest
import trio
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from coordinator.cli import main as llamafs_command
from styxfs import client
from styxfs.llama.web import http_token
from styxfs.metrics import Histogram, exposition, merge

from .support import LLAMAFS, ROOT, config_for, deploy, greedy, run_turn, session, wait_until

ARTIFACTS = os.environ.get("LLAMAFS_ARTIFACTS", os.path.join(ROOT, "tests", "artifacts"))


def get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


async def aget(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, str, bytes]:
    return await trio.to_thread.run_sync(get, url, headers, method)


def families(text: str) -> dict[str, list]:
    """Prometheus's own parser's reading: family name -> samples.  It
    raises on what Prometheus would refuse."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def promtool_check(text: str) -> None:
    """`promtool check metrics`, where promtool is installed (Debian: prometheus)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


# ---- the exposition, without I/O ------------------------------------------------------


def test_a_histogram_is_cumulative_with_sum_and_count():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 0.7, 3.0):
        h.observe(v)
    text = exposition(h.samples("x_seconds", "a test"))
    [family] = text_string_to_metric_families(text)
    assert family.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert buckets == {"0.1": 1, "1.0": 3, "+Inf": 4}
    assert {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")} == \
        {"x_seconds_sum": pytest.approx(4.25), "x_seconds_count": 4}
    promtool_check(text)


def test_merged_texts_give_each_family_once_with_the_node_label():
    own = exposition([("llamafs_connections", "gauge", "9P connections open", {}, 2),
                      ("llamafs_node_up", "gauge", "up", {"node": "a"}, 1)])
    node = exposition([("llamafs_connections", "gauge", "9P connections open", {}, 1),
                       ("llamafs_replies_total", "counter", "replies", {"reason": "stop"}, 5)]
                      + Histogram((1.0,)).samples("llamafs_time_to_first_token_seconds", "ttft"))
    text = merge(own, [({"node": "a"}, node), ({"node": "b"}, node)])
    assert text.count("# TYPE llamafs_connections gauge") == 1
    found = families(text)
    assert [s.labels for s in found["llamafs_connections"]] == [{}, {"node": "a"}, {"node": "b"}]
    assert found["llamafs_replies"][1].labels == {"node": "b", "reason": "stop"}
    assert {s.labels["node"] for s in found["llamafs_time_to_first_token_seconds"]} == {"a", "b"}
    promtool_check(text)


# ---- a node -------------------------------------------------------------------------------


async def test_a_nodes_http_says_what_its_files_say(start_fake_node):
    address, node = await start_fake_node(http="tcp!127.0.0.1!0")
    base = f"http://127.0.0.1:{node.http_port}"
    async with client.connect(address) as c:
        await greedy(c)
        number = await session(c, "maxtokens 6")
        _, status = await run_turn(c, number, "Once upon a time")
        metrics_9p = (await c.read_file("metrics")).decode()
        ctl = (await c.read_file("ctl")).decode()

        code, kind, body = await aget(f"{base}/metrics")
        assert code == 200 and kind.startswith("text/plain; version=0.0.4")
        over_http, over_9p = families(body.decode()), families(metrics_9p)
        assert over_http.keys() == over_9p.keys()
        for name in ("llamafs_requests", "llamafs_tokens_out", "llamafs_time_to_first_token_seconds",
                     "llamafs_reply_tokens_per_second"):
            assert over_http[name] == over_9p[name], name
        assert over_http["llamafs_time_to_first_token_seconds"][-1].value == 1  # _count: the one turn
        promtool_check(body.decode())

        code, kind, body = await aget(f"{base}/api/status")
        assert code == 200 and kind == "application/json"
        state = json.loads(body)
        [me] = [s for s in state["sessions"] if str(s["number"]) == number]
        assert me["state"] == "done" and me["reason"] == "length"
        assert me["tokens_out"] == int(status["tokens_out"]) == 6 and me["tokens_in"] == int(status["tokens_in"])
        assert "Once" not in body.decode()  # figures, never text
        [row] = state["nodes"]
        assert row["state"] == "up" and row["sessions"] == int(dict(
            line.split(" ", 1) for line in ctl.splitlines())["sessions"])
        assert state["deployment"]["requests_total"] == 1

    code, kind, body = await aget(f"{base}/")
    assert code == 200 and kind.startswith("text/html") and b"/dashboard.js" in body
    for name in ("dashboard.js", "dashboard.css", "chart.js"):
        assert (await aget(f"{base}/{name}"))[0] == 200
    assert (await aget(f"{base}/nonesuch"))[0] == 404
    assert (await aget(f"{base}/api/status", method="POST"))[0] == 405
    assert (await aget(f"{base}/../styxfs/llama/web.py"))[0] == 404


async def test_with_a_secret_http_asks_for_the_token(start_fake_node, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("a shared secret\n")
    address, node = await start_fake_node(http="tcp!127.0.0.1!0", auth_secret_file=str(secret_file))
    base = f"http://127.0.0.1:{node.http_port}"
    printed = CliRunner().invoke(llamafs_command, ["http-token", "--auth-secret-file", str(secret_file)])
    assert printed.exit_code == 0, printed.output
    token = printed.output.strip()
    assert token == http_token(b"a shared secret") and "secret" not in token
    for path in ("/metrics", "/api/status"):
        code, _, body = await aget(base + path)
        assert code == 401 and b"llamafs http-token" in body
        assert (await aget(base + path, {"Authorization": "Bearer " + "0" * 64}))[0] == 401
        assert (await aget(base + path, {"Authorization": "Bearer " + token}))[0] == 200
        assert (await aget(base + path, {"Cookie": f"theme=dark; llamafs_token={token}"}))[0] == 200
    assert (await aget(base + "/"))[0] == 200  # the page itself, which asks for the token


# ---- a deployment -------------------------------------------------------------------------


async def test_a_coordinators_metrics_are_one_exposition_with_its_nodes_labelled(nursery, fake_nodes):
    mgr = await deploy(nursery, config_for(fake_nodes, http="tcp!127.0.0.1!0"))
    async with client.connect(mgr.address) as c:
        await greedy(c)
        for _ in range(3):
            number = await session(c, "maxtokens 4")
            await run_turn(c, number, "Once upon a time")
    code, _, body = await aget(f"http://127.0.0.1:{mgr.http_port}/metrics")
    text = body.decode()
    assert code == 200
    promtool_check(text)
    found = families(text)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            assert text.count(line) == 1, line
    served = {s.labels["node"]: s.value for s in found["llamafs_requests"] if "node" in s.labels}
    assert set(served) == {"node-0", "node-1", "node-2"} and sum(served.values()) == 3  # round robin
    [count] = [s.value for s in found["llamafs_coordinator_time_to_first_token_seconds"]
               if s.name.endswith("_count")]
    assert count == 3
    code, _, body = await aget(f"http://127.0.0.1:{mgr.http_port}/api/status")
    state = json.loads(body)
    assert [n["id"] for n in state["nodes"]] == ["node-0", "node-1", "node-2"]
    assert all(n["state"] == "up" for n in state["nodes"])
    assert sorted(s["node"] for s in state["sessions"]) == ["node-0", "node-1", "node-2"]


def chromium_and_driver() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no Chromium and ChromeDriver: apt-get install chromium chromium-driver")
    return browser, driver


@pytest.fixture
def browser():
    browser, driver = chromium_and_driver()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1100,900"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    b = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield b
    finally:
        b.quit()


async def rows_in_browser(browser) -> dict[str, str]:
    script = "return [...document.querySelectorAll('#nodes tbody tr')].map(r => [r.dataset.node, r.dataset.state])"
    return dict(await trio.to_thread.run_sync(browser.execute_script, script))


async def test_the_dashboard_shows_every_node_and_a_node_going_down(nursery, fake_nodes, browser):
    interval_ms = 300
    mgr = await deploy(nursery, config_for(fake_nodes, interval_ms=interval_ms, http="tcp!127.0.0.1!0"))
    async with client.connect(mgr.address) as c:
        await greedy(c)
        number = await session(c, "maxtokens 8")
        await run_turn(c, number, "Once upon a time")
        await trio.to_thread.run_sync(browser.get, f"http://127.0.0.1:{mgr.http_port}/")

        async def all_up() -> bool:
            return await rows_in_browser(browser) == {"node-0": "up", "node-1": "up", "node-2": "up"}

        await wait_until(all_up, "the page to show the three nodes up", timeout=20, interval=0.1)
        shown = await trio.to_thread.run_sync(browser.execute_script,
                                              "return document.querySelector('#sessions tbody').innerText")
        assert number in shown and "length" in shown
        os.makedirs(ARTIFACTS, exist_ok=True)
        await trio.to_thread.run_sync(browser.save_screenshot, os.path.join(ARTIFACTS, "dashboard.png"))

        _, process, _ = fake_nodes[1]
        os.kill(process.pid, signal.SIGKILL)
        killed = trio.current_time()

        async def node_1_down() -> bool:
            return (await rows_in_browser(browser)).get("node-1") == "down"

        await wait_until(node_1_down, "the page to show node-1 down", timeout=15, interval=0.1)
        # Down within the health interval (and the health timeout, and the page's one-second poll).
        assert trio.current_time() - killed < mgr.pool.health_timeout + interval_ms / 1000 + 2
        assert (await rows_in_browser(browser))["node-0"] == "up"
        await trio.to_thread.run_sync(browser.save_screenshot, os.path.join(ARTIFACTS, "dashboard-node-down.png"))
        # On a phone's width the page does not overflow sideways (its tables scroll in their boxes).
        await trio.to_thread.run_sync(browser.set_window_size, 390, 844)
        widths = await trio.to_thread.run_sync(browser.execute_script,
                                               "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
        await trio.to_thread.run_sync(browser.save_screenshot, os.path.join(ARTIFACTS, "dashboard-phone.png"))
    assert os.path.getsize(os.path.join(ARTIFACTS, "dashboard.png")) > 10_000


async def test_llamafs_top_shows_the_nodes_in_a_terminal_and_quits_on_q(nursery, fake_nodes, tmp_path):
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("no tmux: apt-get install tmux")
    mgr = await deploy(nursery, config_for(fake_nodes))
    name = f"llamafs-top-{os.getpid()}"

    def run(*args: str) -> str:
        return subprocess.run([tmux, *args], capture_output=True, text=True, timeout=10).stdout

    exited = tmp_path / "exit-status"
    command = " ".join([*LLAMAFS, "top", "--addr", f"'{mgr.address}'"]) + f"; echo $? > {exited}"
    run("new-session", "-d", "-s", name, "-x", "80", "-y", "24", "-c", ROOT, command)
    try:
        run("set-option", "-t", name, "remain-on-exit", "on")
        screen = ""

        async def every_node_shown() -> bool:
            nonlocal screen
            screen = await trio.to_thread.run_sync(run, "capture-pane", "-p", "-t", name)
            return all(f"node-{i}" in screen for i in range(3))

        await wait_until(every_node_shown, "llamafs top to show the three nodes", timeout=30, interval=0.1)
        assert "up" in screen and "q quits" in screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        run("send-keys", "-t", name, "q")
        await wait_until(lambda: exited.exists() and exited.read_text().strip(), "llamafs top to exit", interval=0.1)
        assert exited.read_text().strip() == "0"
    finally:
        run("kill-session", "-t", name)


def test_a_status_line_of_a_session_is_parsed_back():
    from styxfs.llama.status import parse_sessions

    line = "7 glenda done reason=stop tokens_in=5 tokens_out=12 elapsed=0.300 tokens_per_sec=40.0 ttft=0.050 node=n1 idle=2.5"
    assert parse_sessions(line + "\n") == [{"number": 7, "owner": "glenda", "state": "done", "reason": "stop",
                                            "tokens_in": 5, "tokens_out": 12, "elapsed": 0.3,
                                            "tokens_per_sec": 40.0, "ttft": 0.05, "node": "n1", "idle": 2.5}]


def test_network_http_in_a_config_is_checked():
    from coordinator.config import ConfigError, DeploymentConfig

    base = {"name": "x", "nodes": [{"id": "a", "port": 9001}]}
    config = DeploymentConfig.from_dict({**base, "network": {"http": "tcp!127.0.0.1!9650"}})
    assert config.network.http == "tcp!127.0.0.1!9650"
    assert DeploymentConfig.from_dict({**base, "network": {"http": "127.0.0.1"}}).network.http == "tcp!127.0.0.1!9640"
    for bad, words in (("unix!/tmp/s", "tcp only"), ("tcp!h!port", "not a number"), (5, "string")):
        with pytest.raises(ConfigError, match="network.http") as raised:
            DeploymentConfig.from_dict({**base, "network": {"http": bad}})
        assert words in str(raised.value)
