"""The ceiling on what continuous batching can give on this machine: one
llama_decode of N tokens (one per sequence, each wanting logits, as in a
node's generation step) against N decodes of one token.  No 9P, no
sampling, no Python between steps: llama.cpp alone.

    .venv/bin/python bench/bench_decode.py [--batches 1,2,4,8] [--steps 20] [--rounds 3]

If 4 tokens in one step cost nearly 4 times one token, no server can get 4
sessions much past one session's rate: that is what bounds llamafs against a
server that answers one request at a time.  "Without logits" shows how much
of a step is the output matrix (Gemma 3's 262,144-token vocabulary).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_line  # noqa: E402


def step_seconds(llama, batch: int, steps: int, logits: bool) -> float:
    """Median seconds of one decode of `batch` tokens, each on its own sequence."""
    for seq in range(batch):
        llama.clear_seq(seq)
    times = []
    for position in range(steps + 3):
        started = time.perf_counter()
        llama.decode([(seq, 100 + seq, position, logits) for seq in range(batch)])
        if position >= 3:  # the first steps warm up
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def decode_ceiling(model: str, threads: int, batches: list[int], steps: int = 20, rounds: int = 3) -> dict:
    """{batch: {"ms_per_step", "tokens_per_s", "vs_one", "ms_without_logits"}}, medians over rounds."""
    from styxfs.llama.llamacpp import LlamaModel
    from styxfs.llama.model import ModelSettings

    llama = LlamaModel(ModelSettings(path=model, threads=threads), slots=max(batches))
    try:
        seconds: dict[tuple[int, bool], list[float]] = {}
        for _ in range(rounds):  # rounds interleave the sizes, so drift hits them all alike
            for batch in batches:
                for logits in (True, False):
                    seconds.setdefault((batch, logits), []).append(step_seconds(llama, batch, steps, logits))
    finally:
        llama.close()
    step = {key: statistics.median(values) for key, values in seconds.items()}
    one = 1 / step[(batches[0], True)] * batches[0]
    return {batch: {"ms_per_step": step[(batch, True)] * 1000,
                    "tokens_per_s": batch / step[(batch, True)],
                    "vs_one": batch / step[(batch, True)] / one,
                    "ms_without_logits": step[(batch, False)] * 1000} for batch in batches}


def report(figures: dict) -> None:
    print("   tokens a step  ms a step  tok/s  vs 1 a step  ms without logits")
    for batch, row in figures.items():
        print(f"   {batch:<13} {row['ms_per_step']:>9.1f} {row['tokens_per_s']:>6.1f} {row['vs_one']:>11.2f}x"
              f" {row['ms_without_logits']:>18.1f}")


@click.command()
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=os.cpu_count() or 2, show_default=True)
@click.option("--batches", default="1,2,4,8", show_default=True)
@click.option("--steps", default=20, show_default=True)
@click.option("--rounds", default=3, show_default=True)
def main(model, threads, batches, steps, rounds):
    from styxfs.llama.models import model_path

    model = model or str(model_path("gemma3-270m"))
    figures = decode_ceiling(model, threads, [int(b) for b in batches.split(",")], steps, rounds)
    print(machine_line())
    print(f"llama_decode alone, {os.path.basename(model)}, {threads} threads, median of {rounds} rounds of {steps} steps")
    report(figures)


if __name__ == "__main__":
    main()
