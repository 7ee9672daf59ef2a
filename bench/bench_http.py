"""What watching costs a busy node: tokens/s with the dashboard open and
Prometheus scraping (GET /api/status and GET /metrics, each once a second,
as the page and a 1 s scrape interval ask), against without, in
alternating windows on one node process.  The goal: at most 2 % less.

    .venv/bin/python bench/bench_http.py [--rounds 3] [--window 20] [--sessions 4]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import urllib.request

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import free_port, machine_line, start_node_process, stop_process, wait_for_port  # noqa: E402
from styxfs import client, wire  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def tokens_out(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("llamafs_tokens_out_total "):
            return float(line.split()[1])
    raise ValueError("no llamafs_tokens_out_total")


async def generate(address: str, tokens: int) -> None:
    """One session, turn after turn, until cancelled."""
    async with client.connect(address) as c:
        async with await c.open("clone", wire.ORDWR) as ctl:
            n = (await ctl.read()).decode().strip()
            await ctl.fid.write(f"temperature 0\nrepeatpenalty 1\nmaxtokens {tokens}".encode(), 0)
            while True:
                async with await c.open(f"{n}/data", wire.ORDWR) as f:
                    await f.write(PROMPT)
                    await f.read_all()
                await ctl.fid.write(b"reset", 0)


async def watch(base: str, counts: list[int]) -> None:
    """The dashboard's poll and a Prometheus scrape, once a second each."""
    def fetch(path: str) -> None:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            r.read()

    while True:
        started = trio.current_time()
        await trio.to_thread.run_sync(fetch, "/api/status")
        await trio.to_thread.run_sync(fetch, "/metrics")
        counts[0] += 2
        await trio.sleep_until(started + 1.0)


def cpu_seconds(pid: int | str = "self") -> float:
    """User and system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def window(address: str, base: str, watched: bool, seconds: float, sessions: int, tokens: int,
                 pid: int) -> tuple[float, int, float, float]:
    """Tokens/s of the node over one window of busy generation; the HTTP
    requests made; the CPU seconds of the node and of this process."""
    counts = [0]
    async with client.connect(address) as c, trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(generate, address, tokens)
        await trio.sleep(3)  # every session generating before the window opens
        if watched:
            nursery.start_soon(watch, base, counts)
        before, t0 = tokens_out((await c.read_file("metrics")).decode()), time.perf_counter()
        node_cpu, own_cpu = cpu_seconds(pid), cpu_seconds()
        await trio.sleep(seconds)
        after, t1 = tokens_out((await c.read_file("metrics")).decode()), time.perf_counter()
        node_cpu, own_cpu = cpu_seconds(pid) - node_cpu, cpu_seconds() - own_cpu
        nursery.cancel_scope.cancel()
    return (after - before) / (t1 - t0), counts[0], node_cpu / (t1 - t0), own_cpu / (t1 - t0)


@click.command()
@click.option("--rounds", default=3, show_default=True)
@click.option("--window", "seconds", default=20.0, show_default=True, help="seconds measured per window")
@click.option("--sessions", default=4, show_default=True)
@click.option("--tokens", default=128, show_default=True, help="tokens a turn")
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=2, show_default=True)
def main(rounds: int, seconds: float, sessions: int, tokens: int, model: str | None, threads: int) -> None:
    from styxfs.llama.models import model_path

    model = model or str(model_path("gemma3-270m"))
    http = free_port()
    node, address = start_node_process(model, threads=threads, slots=sessions,
                                       extra=["--http", f"tcp!127.0.0.1!{http}"])
    base = f"http://127.0.0.1:{http}"
    wait_for_port(http)
    try:
        ratios = []
        for r in range(rounds):
            order = (False, True) if r % 2 == 0 else (True, False)  # alternate which goes first
            rates = {}
            for watched in order:
                rates[watched], requests, node_cpu, own_cpu = trio.run(window, address, base, watched, seconds,
                                                                       sessions, tokens, node.pid)
                print(f"round {r + 1} {'watched' if watched else 'plain  '}: {rates[watched]:6.1f} tok/s, "
                      f"CPU: node {node_cpu:.3f}, clients {own_cpu:.3f} cores"
                      + (f"  ({requests} HTTP requests)" if watched else ""), flush=True)
            ratios.append(rates[True] / rates[False])
            print(f"round {r + 1}: watched / plain = {ratios[-1]:.3f}", flush=True)
        print(machine_line())
        print(f"watched / plain: median {statistics.median(ratios):.3f}, rounds "
              + ", ".join(f"{x:.3f}" for x in ratios)
              + f", spread {max(ratios) - min(ratios):.3f} (goal: cost <= 2 %, ratio >= 0.98)")
    finally:
        stop_process(node)


if __name__ == "__main__":
    main()
