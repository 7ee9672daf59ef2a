"""Where a step's time goes, in llamafs and in llama-server, at the same
load: N sessions of 128 greedy tokens at once, a fresh server each.

llamafs: `llamafs_step_seconds_total{phase}` (schedule: before llama_decode;
decode; sample: after it) and the steps, from the node's metrics.
llama-server (`--metrics`): its decode calls (`llamacpp:n_decode_total`)
and the seconds its slots spent on prompt and generation.  Both: wall time,
tokens, and the time per step outside llama_decode.

    .venv/bin/python bench/bench_steps.py [--sessions 1,2,8,16] [--rounds 2]
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import free_port, machine_line, start_node_process, stop_process, wait_for_port  # noqa: E402
from bench.llama_server import find_or_build  # noqa: E402
from bench.suite import http_concurrent, llamafs_concurrent, wait_ready  # noqa: E402
from bench.bench_node import through_9p  # noqa: E402
from styxfs import client, metrics  # noqa: E402


async def node_metrics(address: str) -> dict:
    async with client.connect(address) as c:
        return metrics.parse((await c.read_file("metrics")).decode())


def llamafs_run(model: str, threads: int, sessions: int, tokens: int) -> dict:
    node, address = start_node_process(model, threads=threads, slots=sessions)
    try:
        trio.run(through_9p, address, 8)
        before = trio.run(node_metrics, address)
        figures = trio.run(llamafs_concurrent, address, sessions, tokens)
        after = trio.run(node_metrics, address)
    finally:
        stop_process(node)

    def delta(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.value(after, name, labels) - metrics.value(before, name, labels)

    steps = delta("llamafs_decode_steps_total")
    phases = {p: delta("llamafs_step_seconds_total", {"phase": p}) for p in ("schedule", "decode", "sample")}
    return {"tps": figures["aggregate_tps"], "wall": figures["seconds"], "steps": steps,
            "decode_ms": 1000 * phases["decode"] / steps, "outside_ms": 1000 * (phases["schedule"] + phases["sample"]) / steps,
            "schedule_ms": 1000 * phases["schedule"] / steps, "sample_ms": 1000 * phases["sample"] / steps,
            "idle_ms": 1000 * (figures["seconds"] - sum(phases.values())) / steps}


def server_metrics(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return metrics.parse(text)


def server_run(binary: str, model: str, threads: int, sessions: int, tokens: int) -> dict:
    port = free_port()
    process = subprocess.Popen([binary, "-m", model, "-c", str(2048 * sessions), "-t", str(threads), "-tb",
                                str(threads), "--parallel", str(sessions), "--port", str(port), "--host",
                                "127.0.0.1", "--metrics"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        wait_ready(port)
        http_concurrent(port, 1, 8)
        before = server_metrics(port)
        figures = http_concurrent(port, sessions, tokens)
        time.sleep(0.2)
        after = server_metrics(port)
    finally:
        stop_process(process)

    def delta(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.value(after, name, labels) - metrics.value(before, name, labels)

    steps = delta("llamacpp:n_decode_total")
    busy = delta("llamacpp:prompt_seconds_total") + delta("llamacpp:tokens_predicted_seconds_total")
    return {"tps": figures["aggregate_tps"], "wall": figures["seconds"], "steps": steps,
            "busy_slot_ms": 1000 * busy / steps if steps else 0.0,
            "wall_ms": 1000 * figures["seconds"] / steps if steps else 0.0}


@click.command()
@click.option("--sessions", default="1,2,8,16", show_default=True)
@click.option("--rounds", default=2, show_default=True)
@click.option("--tokens", default=128, show_default=True)
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=2, show_default=True)
def main(sessions: str, rounds: int, tokens: int, model: str | None, threads: int) -> None:
    from styxfs.llama.models import model_path

    model = model or str(model_path("gemma3-270m"))
    binary = find_or_build()
    levels = [int(s) for s in sessions.split(",")]
    for level in levels:
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(llamafs_run(model, threads, level, tokens))
            theirs.append(server_run(binary, model, threads, level, tokens))
        o = {k: statistics.median(r[k] for r in ours) for k in ours[0]}
        t = {k: statistics.median(r[k] for r in theirs) for k in theirs[0]}
        print(f"{level:2d} sessions: llamafs {o['tps']:6.1f} tok/s, {o['steps']:.0f} steps, a step: "
              f"{o['wall'] * 1000 / o['steps']:.1f} ms wall = decode {o['decode_ms']:.1f} + schedule "
              f"{o['schedule_ms']:.2f} + sample {o['sample_ms']:.2f} + between {o['idle_ms']:.2f} ms", flush=True)
        print(f"             llama-server {t['tps']:6.1f} tok/s, {t['steps']:.0f} decodes, a decode: "
              f"{t['wall_ms']:.1f} ms wall; ratio {o['tps'] / t['tps']:.2f}", flush=True)
    print(machine_line())


if __name__ == "__main__":
    main()
