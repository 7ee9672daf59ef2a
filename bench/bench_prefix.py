"""Shared prefixes: 8 sessions whose prompts begin with the same 1,000
tokens and end with different questions, all arriving together, after one
warm-up request with that prefix ("warm") and without ("cold").  Time to
first token p50 and aggregate tokens/s of:

- a llamafs node with reuse (the 8 sessions are one user's, who may share),
- the same node without (8 users, who may not: each evaluates the prefix),
- llama-server (--parallel 8, `cache_prompt`, the same llama.cpp),
- a coordinator over 2 nodes with two prefixes, 4 sessions each, balanced
  by prefix-affinity against round-robin.

Goal: TTFT with reuse <= 0.25 x without, and below llama-server's.

    .venv/bin/python bench/bench_prefix.py [--rounds 2] [--tokens 32]
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import threading
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    at_once, greedy, machine_line, new_session, start_coordinator_process, start_node_process, stop_process)
from bench.llama_server import find_or_build  # noqa: E402
from bench.suite import percentile, start_llama_server  # noqa: E402
from styxfs import client, wire  # noqa: E402
from styxfs.llama.reply import parse_status  # noqa: E402

SESSIONS = 8
QUESTIONS = ["What is the main idea?", "Who is the keeper?", "Where is the lighthouse?", "What did the bottle hold?",
             "How does it end?", "Name the ship.", "What season is it?", "Why did the light fail?"]
SENTENCES = ["The keeper of the northern light kept a log of every ship that passed the rocks.",
             "In the winter of that year the storms came early and the supply boat was late.",
             "He trimmed the wick at dusk, wound the clockwork, and polished the great lens.",
             "A bottle washed up on the shingle one morning, sealed with red wax and string.",
             "Inside it was a letter written in a careful hand, in a language he half knew.",
             "The village below the cliff had forgotten him, or so he believed, until spring."]


def make_prefix(model: str, tokens: int, label: str = "") -> str:
    """Text of about `tokens` tokens of the model's vocabulary (and a label
    at its start, to make a second, different prefix)."""
    from llama_cpp import Llama

    vocab = Llama(model, vocab_only=True, verbose=False)
    text, i = f"Document {label}.\n", 0
    while len(vocab.tokenize(text.encode())) < tokens:
        text += SENTENCES[i % len(SENTENCES)] + f" ({i})\n"
        i += 1
    return text + "Answer the question about the document above.\n"


# ---- clients -------------------------------------------------------------------------------


async def llamafs_turn(address: str, uname: str, prompt: str, tokens: int, results: list) -> None:
    async with client.connect(address, uname=uname) as c:
        async with new_session(c, greedy(tokens, "mode raw")) as (ctl, n):
            start, first = time.perf_counter(), None
            async with await c.open(f"{n}/data", wire.ORDWR) as f:
                await f.write(prompt)
                async for _ in f.stream():
                    first = first or time.perf_counter() - start
            elapsed = time.perf_counter() - start
            status = (await c.read_file(f"{n}/status")).decode()
            await ctl.fid.write(b"close", 0)
    _, fields = parse_status(status)
    results.append((int(fields["tokens_out"]), first or elapsed, elapsed, int(fields.get("tokens_cached", 0))))


async def llamafs_burst(address: str, unames: list[str], prompts: list[str], tokens: int, warm: str | None) -> dict:
    if warm is not None:
        await llamafs_turn(address, unames[0], warm, 1, [])
    results: list = []
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for uname, prompt in zip(unames, prompts):
            nursery.start_soon(llamafs_turn, address, uname, prompt, tokens, results)
    return figures(results, time.perf_counter() - start)


def server_turn(port: int, prompt: str, tokens: int, results: list, lock: threading.Lock) -> None:
    body = json.dumps({"prompt": prompt, "n_predict": tokens, "temperature": 0, "repeat_penalty": 1.0,
                       "cache_prompt": True, "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start, first, count, cached = time.perf_counter(), None, 0, 0
    conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
    for line in conn.getresponse():
        if not line.startswith(b"data: "):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("content"):
            count += 1
            first = first or time.perf_counter() - start
        if chunk.get("stop"):
            cached = chunk.get("timings", {}).get("cache_n", 0)  # prompt tokens it found in the slot
    elapsed = time.perf_counter() - start
    conn.close()
    with lock:
        results.append((count, first or elapsed, elapsed, cached))


def server_burst(port: int, prompts: list[str], tokens: int, warm: str | None) -> dict:
    lock = threading.Lock()
    if warm is not None:
        server_turn(port, warm, 1, [], lock)
    results: list = []
    wall = at_once([lambda p=p: server_turn(port, p, tokens, results, lock) for p in prompts])
    return figures(results, wall)


def figures(results: list, wall: float) -> dict:
    ttfts = [r[1] for r in results]
    return {"ttft_p50": percentile(ttfts, 0.5), "tps": sum(r[0] for r in results) / wall,
            "cached": sum(r[3] for r in results)}


# ---- the runs ------------------------------------------------------------------------------


def node_runs(model: str, threads: int, prefix: str, tokens: int, rounds: int, binary: str | None) -> dict:
    prompts = [prefix + q for q in QUESTIONS[:SESSIONS]]
    warmup = prefix + "What is this?"
    out: dict = {}
    for r in range(rounds):
        for scene, warm in (("cold", None), ("warm", warmup)):
            # Each kind with a fresh server, so that nothing is left from the one before.
            for kind in ("llamafs reuse", "llamafs no reuse", "llama-server"):
                if kind == "llama-server":
                    if binary is None:
                        continue
                    process, port = start_llama_server(binary, model, threads, SESSIONS)
                    try:
                        got = server_burst(port, prompts, tokens, warm)
                    finally:
                        stop_process(process)
                else:
                    process, address = start_node_process(model, threads=threads, slots=SESSIONS)
                    unames = ["alice"] * SESSIONS if kind == "llamafs reuse" else [f"user{i}" for i in range(SESSIONS)]
                    try:
                        got = trio.run(llamafs_burst, address, unames, prompts, tokens, warm)
                    finally:
                        stop_process(process)
                out.setdefault((scene, kind), []).append(got)
                print(f"round {r + 1} {scene} {kind:17s}: TTFT p50 {got['ttft_p50']:.3f} s, {got['tps']:6.1f} tok/s,"
                      f" {got['cached']} prompt tokens from the cache", flush=True)
    return out


def coordinator_runs(model: str, threads: int, prefixes: list[str], tokens: int, rounds: int) -> dict:
    prompts = [prefixes[i % 2] + QUESTIONS[i] for i in range(SESSIONS)]
    warmups = [p + "What is this?" for p in prefixes]
    out: dict = {}
    for r in range(rounds):
        for strategy in ("prefix-affinity", "round-robin"):
            nodes = [start_node_process(model, threads=max(1, threads // 2), slots=SESSIONS // 2) for _ in range(2)]
            coordinator, address = start_coordinator_process([a for _, a in nodes], loadBalancing=strategy,
                                                             healthCheckInterval=1000)

            async def run():
                for w in warmups:
                    await llamafs_turn(address, "alice", w, 1, [])
                return await llamafs_burst(address, ["alice"] * SESSIONS, prompts, tokens, None)

            try:
                got = trio.run(run)
            finally:
                stop_process(coordinator)
                for p, _ in nodes:
                    stop_process(p)
            out.setdefault(strategy, []).append(got)
            print(f"round {r + 1} 2 nodes {strategy:15s}: TTFT p50 {got['ttft_p50']:.3f} s, {got['tps']:6.1f} tok/s,"
                  f" {got['cached']} prompt tokens from the cache", flush=True)
    return out


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


@click.command()
@click.option("--rounds", default=2, show_default=True)
@click.option("--tokens", default=32, show_default=True, help="tokens each answer")
@click.option("--prefix-tokens", default=1000, show_default=True)
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=2, show_default=True)
@click.option("--no-peers", is_flag=True, help="without llama-server")
@click.option("--part", type=click.Choice(["all", "node", "coordinator"]), default="all", show_default=True)
def main(rounds, tokens, prefix_tokens, model, threads, no_peers, part):
    from styxfs.llama.models import model_path

    model = model or str(model_path("gemma3-270m"))
    binary = None if no_peers or part == "coordinator" else find_or_build()
    node = coord = {}
    if part in ("all", "node"):
        node = node_runs(model, threads, make_prefix(model, prefix_tokens), tokens, rounds, binary)
    if part in ("all", "coordinator"):
        coord = coordinator_runs(model, threads, [make_prefix(model, prefix_tokens, label) for label in "AB"],
                                 tokens, rounds)
    print(machine_line())
    print(f"\n{SESSIONS} sessions, a {prefix_tokens}-token prefix, {tokens} tokens each; medians of {rounds} rounds")
    print(f"{'':27s} {'TTFT p50':>9s} {'tok/s':>7s}")
    for (scene, kind), runs in node.items():
        print(f"{scene + ' ' + kind:27s} {median_of(runs, 'ttft_p50'):8.3f}s {median_of(runs, 'tps'):7.1f}")
    for scene in ("cold", "warm") if node else ():
        reuse = median_of(node[(scene, "llamafs reuse")], "ttft_p50")
        without = median_of(node[(scene, "llamafs no reuse")], "ttft_p50")
        line = f"{scene}: TTFT reuse / no reuse = {reuse / without:.2f} (goal <= 0.25)"
        if (scene, "llama-server") in node:
            line += f", reuse / llama-server = {reuse / median_of(node[(scene, 'llama-server')], 'ttft_p50'):.2f}" \
                    " (goal < 1)"
        print(line)
    for strategy, runs in coord.items():
        print(f"{'2 nodes ' + strategy:27s} {median_of(runs, 'ttft_p50'):8.3f}s {median_of(runs, 'tps'):7.1f}")


if __name__ == "__main__":
    main()
