"""`llamafs top` with nodes down: every node keeps its row, its state and
its error there; the header fits 80 columns.  Rendered to a string, then
in a real terminal (tmux)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
import trio
from rich.console import Console

from styxfs.llama.top import render

from .support import LLAMAFS, ROOT, config_for, deploy, node_state, wait_until

REFUSED = "cannot connect to tcp!127.0.0.1!31201: [Errno 111] Connection refused"


def node(i: int, state: str = "up", error: str = "") -> dict:
    return {"id": f"node-{i}", "address": f"tcp!127.0.0.1!3120{i}", "state": state, "error": error, "weight": 1.0,
            "latency_ms": 1.25, "failures": 7 if error else 0, "restarts": 3 if state == "failed" else 0,
            "sessions": 12, "inflight": 4, "queue": 2, "generating": 4, "slots": 4, "tokens_out_total": 10,
            "tokens_per_second": 123.4}


def reading(nodes: list[dict]) -> dict:
    return {"deployment": {"role": "coordinator", "name": "a-long-deployment-name-for-the-header", "version": "0.1",
                           "state": "loaded", "strategy": "least-connections", "model": "", "nodes": len(nodes),
                           "healthy": sum(n["state"] == "up" for n in nodes), "sessions": 1000,
                           "maxsessions": 1024, "tokens_per_second": 12345.6, "ttft_recent": 0.1234,
                           "requests_total": 1234567},
            "nodes": nodes, "sessions": []}


def screen(status: dict, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=False)
    console.print(render(status, height))
    return console.file.getvalue().splitlines()


def test_nodes_down_keep_their_rows_with_state_and_error_and_the_header_is_one_line():
    lines = screen(reading([node(0), node(1, "down", REFUSED), node(2, "failed", "exited (status -9): oom")]))
    assert all(len(line) <= 80 for line in lines)
    assert "nodes 1/3" in lines[0] and lines[0].rstrip().endswith("prompts 1234567")  # the figures, whole
    assert lines[1].strip() == ""  # no second line of header
    rows = {line.split()[0]: line for line in lines if line.startswith("node-")}
    assert rows["node-0"].split()[1] == "up"
    assert rows["node-1"].split()[1] == "down" and "cannot connect" in rows["node-1"]
    assert rows["node-2"].split()[1] == "failed" and "exited (status" in rows["node-2"]
    assert rows["node-2"].split()[8:10] == ["3", "exited"]  # RST, then ERROR
    head = next(line for line in lines if line.startswith("NODE"))
    assert head.split() == ["NODE", "STATE", "SESS", "FLIGHT", "QUEUE", "TOK/S", "CHECK", "FAIL", "RST", "ERROR"]


def test_a_wider_terminal_shows_more_of_the_error():
    rows = [line for line in screen(reading([node(0, "down", REFUSED)]), width=140) if line.startswith("node-0")]
    assert REFUSED in rows[0]


async def test_top_in_a_terminal_with_a_node_down(nursery, fake_nodes, tmp_path):
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("no tmux: apt-get install tmux")
    mgr = await deploy(nursery, config_for(fake_nodes))
    _, process, _ = fake_nodes[1]
    process.terminate()  # a node given by address: it stays down, and top must show it so
    await node_state(mgr, "node-1", "down")
    name = f"llamafs-top-down-{os.getpid()}"

    def run(*args: str) -> str:
        return subprocess.run([tmux, *args], capture_output=True, text=True, timeout=10).stdout

    command = " ".join([*LLAMAFS, "top", "--addr", f"'{mgr.address}'"])
    run("new-session", "-d", "-s", name, "-x", "80", "-y", "24", "-c", ROOT, command)
    try:
        shown = ""

        async def node_down_shown() -> bool:
            nonlocal shown
            shown = await trio.to_thread.run_sync(run, "capture-pane", "-p", "-t", name)
            return any(line.startswith("node-1") and "down" in line and "cannot connect" in line
                       for line in shown.splitlines())

        await wait_until(node_down_shown, "llamafs top to show node-1 down with its error", timeout=30, interval=0.1)
        lines = shown.splitlines()
        assert all(len(line) <= 80 for line in lines)
        assert "nodes 2/3" in lines[0] and lines[1].strip() == ""
        assert sum(1 for line in lines if line.startswith("node-")) == 3
        run("send-keys", "-t", name, "q")
    finally:
        run("kill-session", "-t", name)
