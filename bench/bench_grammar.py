"""What a JSON schema costs: tokens/s of 4 sessions whose replies follow a
JSON schema against 4 without, in llamafs (a node's HTTP API, which is the
tree's sessions with N/schema written) and in llama-server (its own
/v1/chat/completions, the same `response_format`), side by side in one run,
in rounds that alternate which goes first, each server fresh.  Goals:
constrained >= 0.8 x unconstrained, and llamafs >= 1.0 x llama-server
constrained.  For llamafs, where each shape's steps went (its metrics:
milliseconds a step in llama_decode and in sampling, tokens a step).

    .venv/bin/python bench/bench_grammar.py [--rounds 3] [--sessions 4] [--tokens 128] [--model PATH]
                                            [--speculate auto|off]
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import click
import httpx2 as httpx
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_api import SUBJECTS, WARM_UP_BODY, level_run, over_http, start_api_node, template_options  # noqa: E402
from bench.common import machine_line, stop_process  # noqa: E402
from bench.llama_server import find_or_build  # noqa: E402
from bench.suite import start_llama_server  # noqa: E402
from styxfs import client, metrics  # noqa: E402

# A story as JSON: free text inside, structure around it.  The story's minLength holds every
# reply to max_tokens, as the free ones run: a reply that closed early would leave the batch
# emptier and measure that, not what the constraint costs.
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 60},
    "mood": {"enum": ["happy", "sad", "strange", "calm"]},
    "characters": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 30}, "role": {"enum": ["hero", "friend", "villain"]}},
        "required": ["name", "role"]}},
    "story": {"type": "string", "minLength": 1000}},
    "required": ["title", "mood", "characters", "story"]}
SHAPES = ("json-schema", "free")
SERVERS = ("llamafs", "llama-server")


def body(i: int, tokens: int, shaped: bool) -> dict:
    ask = f"Write a long story about {SUBJECTS[i % len(SUBJECTS)]}" + (", as JSON." if shaped else ".")
    out = {"messages": [{"role": "user", "content": ask}], "max_tokens": tokens, "temperature": 0,
           "stream": True, "stream_options": {"include_usage": True}}
    if shaped:
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA}}
    return out


def run_server(server: str, binary: str, model: str, threads: int, sessions: int, template: list[str],
               tokens: int, speculate: str) -> dict:
    """Both shapes on one fresh server: {shape: figures}."""
    if server == "llamafs":
        process, address, base = start_api_node(model, threads, sessions, template)
        trio.run(write_root_ctl, address, f"defaults speculate {speculate}")
    else:
        process, port = start_llama_server(binary, model, threads, sessions, template)
        base = f"http://127.0.0.1:{port}"
    try:
        trio.run(over_http, base, WARM_UP_BODY)
        trio.run(over_http, base, body(0, 8, True))  # a grammar's first use too
        out = {}
        for shape in SHAPES:
            before = step_figures(base) if server == "llamafs" else {}
            out[shape] = trio.run(level_run, over_http, base,
                                  [body(i, tokens, shape == "json-schema") for i in range(sessions)])
            if before:
                after = step_figures(base)
                out[shape]["steps"] = {k: after[k] - before[k] for k in after}
        return out
    finally:
        stop_process(process)


async def write_root_ctl(address: str, line: str) -> None:
    async with client.connect(address) as c:
        await c.write_file("ctl", line.encode())


def step_figures(base: str) -> dict[str, float]:
    """A node's steps so far: their number, tokens out, seconds by phase."""
    samples = metrics.parse(httpx.get(f"{base}/metrics", timeout=10).text)
    out = {"steps": metrics.value(samples, "llamafs_decode_steps_total"),
           "tokens": metrics.value(samples, "llamafs_tokens_out_total")}
    for phase in ("schedule", "decode", "sample"):
        out[phase] = metrics.value(samples, "llamafs_step_seconds_total", {"phase": phase})
    return out


@click.command()
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1), help="each with fresh processes")
@click.option("--sessions", default=4, show_default=True, type=click.IntRange(1), help="at once, a slot each")
@click.option("--tokens", default=128, show_default=True, type=click.IntRange(1), help="max_tokens a request")
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=2, show_default=True)
@click.option("--chat-template-file", "template", default=None, help="for a model without one")
@click.option("--speculate", default="auto", show_default=True, type=click.Choice(["auto", "off"]),
              help="llamafs's default: auto drafts for the free replies (greedy, no grammar), not the shaped")
def main(rounds: int, sessions: int, tokens: int, model: str | None, threads: int, template: str | None,
         speculate: str) -> None:
    from styxfs.llama.models import model_path

    model = model or str(model_path("gemma3-270m"))
    options = template_options(model, template)
    binary = find_or_build(lambda text: print(text, file=sys.stderr))
    runs = {(server, shape): [] for server in SERVERS for shape in SHAPES}
    for r in range(rounds):
        for server in SERVERS if r % 2 == 0 else SERVERS[::-1]:
            for shape, figures in run_server(server, binary, model, threads, sessions, options, tokens,
                                                speculate).items():
                runs[server, shape].append(figures)
                print(f"round {r + 1}: {server:12s} {shape:11s} {figures['tps']:6.1f} tok/s "
                      f"({min(figures['tokens'])}-{max(figures['tokens'])} tokens a session, first tokens "
                      f"{min(figures['ttfts']):.2f}-{max(figures['ttfts']):.2f} s)", flush=True)
    tps = {key: statistics.median(f["tps"] for f in figures) for key, figures in runs.items()}
    print(machine_line())
    print(f"\n{sessions} sessions at once, {tokens} greedy tokens asked; tok/s medians of {rounds} rounds; "
          f"llamafs with speculate {speculate}")
    print("| server | json-schema tok/s | free tok/s | json-schema / free |")
    print("|---|---|---|---|")
    for server in SERVERS:
        shaped, free = tps[server, "json-schema"], tps[server, "free"]
        print(f"| {server} | {shaped:.1f} | {free:.1f} | {shaped / free:.2f} |")
    ratio = tps["llamafs", "json-schema"] / tps["llama-server", "json-schema"]
    print(f"llamafs / llama-server, json-schema: {ratio:.2f}")
    for shape in SHAPES:
        total = {k: sum(f["steps"][k] for f in runs["llamafs", shape]) for k in runs["llamafs", shape][0]["steps"]}
        per = 1000 / total["steps"]
        print(f"llamafs {shape}: a step {total['decode'] * per:.1f} ms in llama_decode, "
              f"{total['sample'] * per:.2f} ms sampling, {total['schedule'] * per:.2f} ms scheduling; "
              f"{total['tokens'] / total['steps']:.2f} tokens a step")
    print("goals: json-schema / free >= 0.8; llamafs / llama-server json-schema >= 1.0")
    print("schema:", json.dumps(SCHEMA))


if __name__ == "__main__":
    main()
