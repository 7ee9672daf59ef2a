"""What a slow link between layers costs: a top coordinator over a
datacenter's coordinator (`llamafs deploy start` over one node), the two
joined by a relay that delays each byte by 0, 20 or 50 ms each way.

    .venv/bin/python bench/bench_hierarchy.py [--model PATH] [--sessions 4] [--tokens 64] [--rounds 2]

Each round runs every delay in turn with a fresh top coordinator; printed:
time to first byte (p50, through the top) and aggregate tokens/s of
`sessions` greedy replies of `tokens` tokens at once.  Default model: Gemma
3 270M (2 threads).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import greedy, machine_line, new_session, start_coordinator_process, start_node_process, stop_process  # noqa: E402
from coordinator import DeploymentManager  # noqa: E402
from styxfs import client, wire  # noqa: E402
from styxfs.llama.reply import parse_status  # noqa: E402
from tests.relay import DelayRelay  # noqa: E402

PROMPT = "Once upon a time, in a land far away, there lived a king who"


async def one_session(address: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first byte, tokens out) of one greedy reply."""
    async with client.connect(address) as c:
        async with new_session(c, greedy(tokens)) as (ctl, n):
            async with await c.open(f"{n}/data", wire.ORDWR) as f:
                started = time.perf_counter()
                await f.write(PROMPT)
                first = None
                async for _ in f.stream():
                    first = first or time.perf_counter() - started
            status = (await c.read_file(f"{n}/status")).decode()
            await ctl.fid.write(b"close", 0)
    tokens_out = int(parse_status(status)[1]["tokens_out"])
    return first or 0.0, tokens_out


async def measure(dc_address: str, delay: float, sessions: int, tokens: int) -> tuple[float, float]:
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(DelayRelay(dc_address, delay).run)
        top = DeploymentManager({"name": "top", "network": {"listen": "tcp!127.0.0.1!0", "healthCheckInterval": 2000},
                                 "nodes": [{"id": "dc", "address": "127.0.0.1",
                                            "port": int(relay.address.rsplit("!", 1)[1])}]})
        await top.deploy(nursery, timeout=60)
        await one_session(top.address, 4)  # warm: spare sessions made, paths taken once
        results = []
        started = time.perf_counter()
        async def run():
            results.append(await one_session(top.address, tokens))

        async with trio.open_nursery() as load:
            for _ in range(sessions):
                load.start_soon(run)
        wall = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    ttft = statistics.median(r[0] for r in results)
    return ttft, sum(r[1] for r in results) / wall


@click.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="default: Gemma 3 270M")
@click.option("--sessions", default=4, show_default=True)
@click.option("--tokens", default=64, show_default=True)
@click.option("--rounds", default=2, show_default=True)
@click.option("--threads", default=2, show_default=True)
def main(model, sessions, tokens, rounds, threads):
    if model is None:
        from styxfs.llama.models import model_path

        model = str(model_path("gemma3-270m"))
    node, node_address = start_node_process(model, threads=threads, slots=sessions)
    dc, dc_address = start_coordinator_process([node_address])
    delays = (0.0, 0.020, 0.050)
    figures: dict[float, list[tuple[float, float]]] = {d: [] for d in delays}
    try:
        for _ in range(rounds):
            for delay in delays:
                figures[delay].append(trio.run(measure, dc_address, delay, sessions, tokens))
    finally:
        stop_process(dc)
        stop_process(node)
    print(machine_line())
    print(f"model {os.path.basename(model)}, {sessions} sessions x {tokens} greedy tokens, top -> link -> "
          f"datacenter coordinator -> 1 node; medians of {rounds} rounds")
    print(f"{'link delay each way':>20} {'TTFT p50':>10} {'tok/s':>8}")
    for delay in delays:
        ttft = statistics.median(f[0] for f in figures[delay])
        rate = statistics.median(f[1] for f in figures[delay])
        print(f"{delay * 1000:>17.0f} ms {ttft * 1000:>7.0f} ms {rate:>8.1f}")


if __name__ == "__main__":
    main()
