"""What watching costs a busy node: tokens/s with the dashboard open and
Prometheus scraping (GET /api/status and GET /metrics, each once a second,
as the page and a 1 s scrape interval ask), against without, in windows
that alternate on one load of one node process; and the node's CPU time a
request costs.  The goal: at most 2 % less.

    .venv/bin/python bench/bench_http.py [--windows 16] [--window 10] [--sessions 4]
"""

from __future__ import annotations

import http.client
import os
import statistics
import sys
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    free_port, greedy, machine_line, new_session, start_node_process, stop_process, wait_for_port)
from styxfs import client, metrics, wire  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def tokens_out(text: str) -> float:
    return metrics.parse(text)[("llamafs_tokens_out_total", frozenset())]


async def generate(address: str, tokens: int) -> None:
    """One session, turn after turn, until cancelled."""
    async with client.connect(address) as c:
        async with new_session(c, greedy(tokens)) as (ctl, n):
            while True:
                async with await c.open(f"{n}/data", wire.ORDWR) as f:
                    await f.write(PROMPT)
                    await f.read_all()
                await ctl.fid.write(b"reset", 0)


class Poller:
    """GETs over one kept-alive connection, as a browser and Prometheus make them."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=10)

    def get(self, path: str) -> None:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        response.read()
        assert response.status == 200, response.status


async def watch(base: str, counts: list[int]) -> None:
    """The dashboard's poll and a Prometheus scrape, once a second each."""
    page, prometheus = Poller(base), Poller(base)
    while True:
        started = trio.current_time()
        await trio.to_thread.run_sync(page.get, "/api/status")
        await trio.to_thread.run_sync(prometheus.get, "/metrics")
        counts[0] += 2
        await trio.sleep_until(started + 1.0)


def cpu_seconds(pid: int | str = "self") -> float:
    """User and system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(address: str, base: str, pid: int, windows: int, seconds: float, sessions: int,
                  tokens: int) -> list[dict]:
    """One load, running throughout; windows alternate plain and watched in
    ABBA order (plain, watched, watched, plain, ...), so that a drift of the
    load over time falls on both alike."""
    out = []
    async with client.connect(address) as c, trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(generate, address, tokens)
        await trio.sleep(5)  # every session generating before the first window
        for i in range(windows):
            watched = i % 4 in (1, 2)
            counts = [0]
            watching = trio.CancelScope()
            if watched:
                nursery.start_soon(_watch_in, watching, base, counts)
            before, t0 = tokens_out((await c.read_file("metrics")).decode()), time.perf_counter()
            node_cpu, own_cpu = cpu_seconds(pid), cpu_seconds()
            await trio.sleep(seconds)
            after, t1 = tokens_out((await c.read_file("metrics")).decode()), time.perf_counter()
            node_cpu, own_cpu = cpu_seconds(pid) - node_cpu, cpu_seconds() - own_cpu
            watching.cancel()
            out.append({"watched": watched, "tps": (after - before) / (t1 - t0), "requests": counts[0],
                        "node_cpu": node_cpu / (t1 - t0), "own_cpu": own_cpu / (t1 - t0)})
            w = out[-1]
            print(f"window {i + 1:2d} {'watched' if watched else 'plain  '}: {w['tps']:6.1f} tok/s, CPU: node "
                  f"{w['node_cpu']:.3f}, clients {w['own_cpu']:.3f} cores"
                  + (f"  ({w['requests']} HTTP requests)" if watched else ""), flush=True)
        nursery.cancel_scope.cancel()
    return out


async def _watch_in(scope: trio.CancelScope, base: str, counts: list[int]) -> None:
    with scope:
        await watch(base, counts)


async def http_cost(base: str, pid: int, n: int = 100) -> dict[str, float]:
    """The node's CPU milliseconds a request, each path alone (an idle node)."""
    out = {}
    for path in ("/api/status", "/metrics"):
        poller = Poller(base)
        before = cpu_seconds(pid)
        for _ in range(n):
            await trio.to_thread.run_sync(poller.get, path)
            await trio.sleep(0.6)  # past the status reading's reuse, as a page once a second
        out[path] = (cpu_seconds(pid) - before) / n * 1000
    return out


@click.command()
@click.option("--windows", default=16, show_default=True, help="windows measured, half of them watched")
@click.option("--window", "seconds", default=10.0, show_default=True, help="seconds a window")
@click.option("--sessions", default=4, show_default=True)
@click.option("--tokens", default=128, show_default=True, help="tokens a turn")
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=2, show_default=True)
def main(windows: int, seconds: float, sessions: int, tokens: int, model: str | None, threads: int) -> None:
    from styxfs.llama.models import model_path

    model = model or str(model_path("gemma3-270m"))
    http = free_port()
    node, address = start_node_process(model, threads=threads, slots=sessions,
                                       extra=["--http", f"tcp!127.0.0.1!{http}"])
    base = f"http://127.0.0.1:{http}"
    wait_for_port(http)
    try:
        cost = trio.run(http_cost, base, node.pid, 30)
        print("node CPU a request, idle: " + ", ".join(f"{p} {ms:.1f} ms" for p, ms in cost.items()), flush=True)
        got = trio.run(measure, address, base, node.pid, windows, seconds, sessions, tokens)
        plain = [w["tps"] for w in got if not w["watched"]]
        watched = [w["tps"] for w in got if w["watched"]]
        pairs = [got[i + 1]["tps"] / got[i]["tps"] if got[i + 1]["watched"] else got[i]["tps"] / got[i + 1]["tps"]
                 for i in range(0, len(got) - 1, 2)]  # each window with its neighbour of the other kind
        print(machine_line())
        ratio = statistics.mean(watched) / statistics.mean(plain)
        print(f"plain {statistics.mean(plain):.1f} tok/s (sd {statistics.stdev(plain):.1f}), watched "
              f"{statistics.mean(watched):.1f} tok/s (sd {statistics.stdev(watched):.1f}): watched / plain {ratio:.3f};"
              f" pairs {', '.join(f'{x:.3f}' for x in pairs)}, median {statistics.median(pairs):.3f}"
              " (goal: cost <= 2 %, ratio >= 0.98)")
    finally:
        stop_process(node)


if __name__ == "__main__":
    main()
