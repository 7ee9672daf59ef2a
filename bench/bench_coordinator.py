"""What a coordinator adds: time to first byte and total time of a short
greedy reply through a coordinator versus straight to a node, on the tiny
model, median and p99 over 200 requests each (alternating).  The goal: at
most 2 ms more at the median.

    .venv/bin/python bench/bench_coordinator.py [--requests 200] [--maxtokens 8] [--gap MS]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    ROOT, machine_line, new_session, start_coordinator_process, start_node_process, stop_process)
from styxfs import client, wire  # noqa: E402


async def one(c, maxtokens: int) -> tuple[float, float]:
    """A reply on a fresh session: (time to first byte, total), from the write."""
    async with new_session(c, f"temperature 0\nmaxtokens {maxtokens}") as (ctl, n):
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            start = time.perf_counter()
            await f.write("Once upon a time")
            first = None
            async for _ in f.stream():
                first = first or time.perf_counter() - start
            total = time.perf_counter() - start
        await ctl.fid.write(b"close", 0)
    return first or total, total


def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


@click.command()
@click.option("--requests", default=200, show_default=True)
@click.option("--maxtokens", default=8, show_default=True)
@click.option("--gap", default=0.0, show_default=True,
              help="ms between requests; with 20 or so, neither path is timed during the other's "
                   "aftermath (the coordinator makes a spare session after a turn)")
def main(requests: int, maxtokens: int, gap: float) -> None:
    sys.path.insert(0, ROOT)
    from tests.tinymodel import write_tiny_model

    model = str(write_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny.gguf")))
    node, node_address = start_node_process(model, threads=1, slots=4)
    coordinator = None
    try:
        coordinator, coordinator_address = start_coordinator_process([node_address])

        async def run():
            figures = {"node": ([], []), "coordinator": ([], [])}
            async with client.connect(node_address) as direct, client.connect(coordinator_address) as via:
                for _ in range(10):  # warm up both paths
                    await one(direct, maxtokens)
                    await one(via, maxtokens)
                for _ in range(requests):
                    for name, c in (("node", direct), ("coordinator", via)):
                        await trio.sleep(gap / 1000)
                        ttfb, total = await one(c, maxtokens)
                        figures[name][0].append(ttfb)
                        figures[name][1].append(total)
            return figures

        figures = trio.run(run)
    finally:
        if coordinator is not None:
            stop_process(coordinator)
        stop_process(node)
    print(machine_line())
    print(f"{requests} requests each, {maxtokens} greedy tokens, tiny model, 1 node, {gap:g} ms apart")
    print(f"{'path':<12} {'ttfb p50':>10} {'ttfb p99':>10} {'total p50':>10} {'total p99':>10}")
    for name, (ttfb, total) in figures.items():
        print(f"{name:<12} {statistics.median(ttfb) * 1000:>8.2f}ms {p99(ttfb) * 1000:>8.2f}ms "
              f"{statistics.median(total) * 1000:>8.2f}ms {p99(total) * 1000:>8.2f}ms")
    added = [statistics.median(figures["coordinator"][i]) - statistics.median(figures["node"][i]) for i in (0, 1)]
    print(f"the coordinator adds {added[0] * 1000:.2f} ms to the first byte and {added[1] * 1000:.2f} ms "
          f"to the whole reply at the median (goal: at most 2 ms)")


if __name__ == "__main__":
    main()
