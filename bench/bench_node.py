"""One session's generation speed: through the 9P data file of a node
versus llama-cpp-python called directly, same model and settings,
alternating runs.  The goal is a ratio of at least 0.98.

    .venv/bin/python bench/bench_node.py [--runs 5] [--tokens 128] [--model PATH]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import greedy, machine_line, new_session, start_node_process, stop_process  # noqa: E402
from styxfs import client, wire  # noqa: E402
from styxfs.llama.reply import parse_status  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


async def through_9p(address: str, tokens: int) -> tuple[int, float]:
    async with client.connect(address) as c:
        async with new_session(c, greedy(tokens)) as (ctl, n):
            start = time.perf_counter()
            async with await c.open(f"{n}/data", wire.ORDWR) as f:
                await f.write(PROMPT)
                await f.read_all()
            elapsed = time.perf_counter() - start
            status = (await c.read_file(f"{n}/status")).decode()
            await ctl.fid.write(b"close", 0)
    out = int(parse_status(status)[1]["tokens_out"])
    return out, elapsed


def direct(llm, tokens: int) -> tuple[int, float]:
    llm.reset()  # no prompt cache: the node evaluates the prompt too
    start = time.perf_counter()
    result = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, repeat_penalty=1.0)
    return result["usage"]["completion_tokens"], time.perf_counter() - start


@click.command()
@click.option("--runs", default=5, show_default=True)
@click.option("--tokens", default=128, show_default=True)
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=2, show_default=True)
def main(runs: int, tokens: int, model: str | None, threads: int) -> None:
    from llama_cpp import Llama

    from styxfs.llama.models import model_path

    model = model or str(model_path("gemma3-270m"))
    node, address = start_node_process(model, threads=threads, slots=1)
    try:
        llm = Llama(model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
        rates_9p, rates_direct = [], []
        trio.run(through_9p, address, 8)  # warm up both
        direct(llm, 8)
        for run in range(runs):
            n, t = trio.run(through_9p, address, tokens)
            rates_9p.append(n / t)
            n2, t2 = direct(llm, tokens)
            rates_direct.append(n2 / t2)
            print(f"run {run + 1}: 9P {n} tokens {n / t:6.1f} tok/s   direct {n2} tokens {n2 / t2:6.1f} tok/s")
        a, b = statistics.median(rates_9p), statistics.median(rates_direct)
        print(machine_line())
        print(f"median: 9P {a:.1f} tok/s, direct {b:.1f} tok/s, ratio {a / b:.3f} (goal >= 0.98)")
    finally:
        stop_process(node)


if __name__ == "__main__":
    main()
