"""What TLS between machines costs: tokens/s through a coordinator over two
nodes dialled over TLS (network.tls; the nodes `serve --listen tls!...`),
side by side with the same over plain TCP, in one run.  The goal: TLS costs
at most 5 % of the tokens/s.

    .venv/bin/python bench/bench_tls.py [--model PATH] [--sessions 4] [--tokens 64] [--rounds 3]

Four node processes (two plain, two behind TLS with a certificate of a CA
made for the run) and two coordinators (`llamafs deploy start`), one over
each pair; each round runs `sessions` greedy replies of `tokens` tokens at
once through one coordinator, then through the other (which goes first
alternates).  Clients reach both coordinators over plain TCP on loopback:
what differs is only the links to the nodes.  Default model: Gemma 3 270M.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_hierarchy import one_session  # noqa: E402
from bench.common import free_port, machine_line, start_coordinator_process, start_node_process, stop_process  # noqa: E402
from tests.testca import TestCA  # noqa: E402


async def measure(address: str, sessions: int, tokens: int) -> float:
    """Aggregate tokens/s of sessions replies at once."""
    results: list[tuple[float, int]] = []

    async def run():
        results.append(await one_session(address, tokens))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(run)
    return sum(r[1] for r in results) / (time.perf_counter() - started)


def start_nodes(model: str, threads: int, slots: int, tls_files: tuple[str, str] | None) -> list:
    nodes = []
    for _ in range(2):
        port = free_port()
        extra = ["--listen", f"tls!127.0.0.1!{port}", "--tls-cert", tls_files[0], "--tls-key", tls_files[1]] \
            if tls_files else []
        nodes.append(start_node_process(model, threads=threads, slots=slots, port=port, extra=extra))
    return nodes


@click.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="default: Gemma 3 270M")
@click.option("--sessions", default=4, show_default=True)
@click.option("--tokens", default=64, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--threads", default=1, show_default=True, help="per node")
def main(model, sessions, tokens, rounds, threads):
    if model is None:
        from styxfs.llama.models import model_path

        model = str(model_path("gemma3-270m"))
    ca = TestCA(Path(tempfile.mkdtemp(prefix="llamafs-bench-tls-")), "llamafs bench CA")
    node_files = ca.issue("node", ["127.0.0.1"])
    processes = []
    try:
        plain = start_nodes(model, threads, sessions, None)
        secure = start_nodes(model, threads, sessions, node_files)
        processes += [p for p, _ in plain + secure]
        paths = {}
        for name, nodes, network in [("tcp", plain, {}), ("tls", secure, {"tls": {"ca": ca.path}})]:
            process, address = start_coordinator_process([a for _, a in nodes], **network)
            processes.append(process)
            paths[name] = address
        for address in paths.values():  # warm: each node's spare sessions made, paths taken once
            trio.run(measure, address, 2, 4)
        figures: dict[str, list[float]] = {name: [] for name in paths}
        for i in range(rounds):
            for name in (("tcp", "tls") if i % 2 == 0 else ("tls", "tcp")):
                figures[name].append(trio.run(measure, paths[name], sessions, tokens))
    finally:
        for process in processes:
            stop_process(process)
    print(machine_line())
    print(f"model {os.path.basename(model)}, {sessions} sessions x {tokens} greedy tokens, client -> coordinator -> "
          f"2 nodes, {threads} thread(s) each; {rounds} rounds, alternating")
    print(f"{'links to the nodes':<20} {'tok/s p50':>10}  rounds")
    for name, rates in figures.items():
        print(f"{name:<20} {statistics.median(rates):>10.1f}  {' '.join(f'{r:.1f}' for r in rates)}")
    cost = 1 - statistics.median(figures["tls"]) / statistics.median(figures["tcp"])
    print(f"TLS costs {cost * 100:.1f} % of the tokens/s (goal: at most 5 %)")


if __name__ == "__main__":
    main()
