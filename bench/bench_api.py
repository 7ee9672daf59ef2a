"""The OpenAI-compatible API against llama-server's, and against llamafs's own 9P.

    .venv/bin/python bench/bench_api.py [--rounds 5] [--clients 1,4,8,16] [--tokens 128] [--part all|speed|prefix]

speed: at each level N of each round, N clients at once, each a streaming
chat of one user message answered with `--tokens` greedy tokens, through
  llamafs-http   a fresh node's POST /v1/chat/completions (--slots N),
  llama-server   a fresh llama-server's own /v1/chat/completions (--parallel N,
                 2048 tokens a slot as the node's --ctx, continuous batching),
  llamafs-9P     the same node through 9P: a chat session per client, made,
                 set, written, read and closed as the API makes it
                 (api_session.TreeTurn over the wire), with the same settings.
Each level of each round starts a node and a llama-server, both up at once,
and runs the three paths one after another and then again in the reverse
order (ABC CBA, the first turning by round), so that the machine's drift in
speed falls on all alike; the second pass words its prompts otherwise, so
that no server finds them in its cache.  The HTTP and 9P paths share the
node process, as different users, so neither finds the other's prompts.
llamafs has no ignore-EOS, so neither server is asked to ignore it: the
prompts are stories that run past --tokens, and the tokens generated are
shown.  Aggregate tok/s is completion tokens / the level's wall time (both
passes'); TTFT is the time from a client's start (its connection included)
to its first content.  Each HTTP client is made before the clock starts, as
an application holds its SDK's client: making one (httpx's TLS context)
costs 20-40 ms of CPU in the client program, which on a small machine is
taken from the servers measured.

prefix: a 5-turn chat about a 1,000-token document, sent statelessly (each
request the whole conversation so far), on a node and on a coordinator over
two nodes balanced by prefix-affinity: TTFT of each turn, turn 5 / turn 1, and
usage.prompt_tokens_details.cached_tokens.

Gemma 3 270M is a base model with no chat template: both servers get Gemma
3's own (the instruction-tuned model's, text only) from a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import click
import httpx2 as httpx
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_prefix import QUESTIONS, make_prefix  # noqa: E402
from bench.common import (  # noqa: E402
    ROOT, free_port, machine_line, start_coordinator_process, start_node_process, stop_process, turned)
from bench.llama_server import find_or_build  # noqa: E402
from bench.suite import percentile, start_llama_server, wait_ready  # noqa: E402
from styxfs import client  # noqa: E402
from styxfs.llama import api_models  # noqa: E402
from styxfs.llama.api_session import TreeTurn  # noqa: E402

SUBJECTS = ["a lighthouse keeper who finds a message in a bottle", "a dragon who learns to bake bread",
            "a clockmaker whose clocks run backwards", "a girl who maps an underground river",
            "a ship's cat on its last voyage", "a village that forgets its own name",
            "two astronomers who argue about a comet", "a baker's apprentice in a city of bridges",
            "a fox who keeps a diary", "a mountain railway in winter", "a librarian who collects lost letters",
            "the last wolf of an old forest", "a robot gardener on the moon", "a market that opens at midnight",
            "a violin that remembers every song", "a boy who builds a boat from doors"]
PATHS = ("llamafs-http", "llama-server", "llamafs-9P")

# Gemma 3's chat template (the instruction-tuned model's), text only.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = "" -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
{{- message['content'] | trim }}
{{- '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\\n' }}
{%- endif -%}
"""


def template_options(model: str, template: str | None) -> list[str]:
    """The --chat-template-file both servers take: the one given; none for a
    model with its own; Gemma 3's for a Gemma 3 model without."""
    from llama_cpp import Llama

    if template:
        return ["--chat-template-file", template]
    metadata = Llama(model, vocab_only=True, verbose=False).metadata
    if metadata.get("tokenizer.chat_template"):
        return []
    if metadata.get("general.architecture") != "gemma3":
        raise click.UsageError(f"{os.path.basename(model)} has no chat template: give one with --chat-template-file")
    path = os.path.join(tempfile.mkdtemp(prefix="llamafs-bench-"), "gemma3.jinja")
    with open(path, "w") as f:
        f.write(GEMMA3_TEMPLATE)
    return ["--chat-template-file", path]


def chat_body(messages: list[dict], tokens: int) -> dict:
    """The one request both HTTP servers get; llama-server's defaults but the temperature."""
    return {"messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


ASKS = ("Write a long story about {}.", "Tell me a long tale of {}.")  # a wording each pass of a level


def story(i: int, tokens: int, wording: int = 0) -> dict:
    return chat_body([{"role": "user", "content": ASKS[wording].format(SUBJECTS[i % len(SUBJECTS)])}], tokens)


WARM_UP_BODY = chat_body([{"role": "user", "content": "Say hello."}], 8)  # none of the stories' prompts


# ---- clients: each returns {tokens, ttft, cached, prompt, text} -------------------------------


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=600)


async def over_http(base: str, body: dict, http: httpx.AsyncClient | None = None) -> dict:
    """One streaming chat request, on a new connection of http (made here if
    not given); its figures from the usage chunk."""
    if http is None:
        async with http_client() as http:
            return await over_http(base, body, http)
    start, first, text, usage = time.perf_counter(), None, [], {}
    async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{base}: {response.status_code} {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                if content := (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter() - start
                    text.append(content)
    return {"tokens": usage.get("completion_tokens", 0), "ttft": first or time.perf_counter() - start,
            "prompt": usage.get("prompt_tokens", 0),
            "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0), "text": "".join(text)}


async def over_9p(address: str, body: dict, http=None) -> dict:
    """The same chat as a session of the tree, set as the API sets it (http: unused)."""
    request = api_models.ChatRequest.model_validate(body)
    start, first = time.perf_counter(), None
    async with client.connect(address) as c, TreeTurn(c) as turn:
        await turn.start({"mode": "chat", **request.settings()}, request.messages[-1].text.encode())
        async for _ in turn.pieces():
            first = first or time.perf_counter() - start
        status = await turn.status()
    return {"tokens": int(status["tokens_out"]), "ttft": first or time.perf_counter() - start,
            "prompt": int(status.get("tokens_in", 0)), "cached": int(status.get("tokens_cached", 0)), "text": ""}


async def level_run(send, target: str, bodies: list[dict]) -> dict:
    """The bodies sent at once; aggregate tok/s over the wall time, TTFTs, tokens a client."""
    results: list[dict] = []
    clients = [http_client() for _ in bodies] if send is over_http else [None] * len(bodies)  # before the clock

    async def one(body, http):
        results.append(await send(target, body, http))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for body, http in zip(bodies, clients):
            nursery.start_soon(one, body, http)
    wall = time.perf_counter() - start
    for http in clients:
        if http is not None:
            await http.aclose()
    tokens = [r["tokens"] for r in results]
    return {"tps": sum(tokens) / wall, "wall": wall, "ttfts": [r["ttft"] for r in results], "tokens": tokens}


def start_api_node(model: str, threads: int, slots: int, extra: list[str]):
    """A node serving the API too, once /health says its model is loaded: (process, 9P address, HTTP base)."""
    http = free_port()
    process, address = start_node_process(model, threads=threads, slots=slots,
                                          extra=["--http", f"tcp!127.0.0.1!{http}", *extra])
    try:
        wait_ready(http)
    except BaseException:
        stop_process(process)
        raise
    return process, address, f"http://127.0.0.1:{http}"


# ---- speed --------------------------------------------------------------------------------


def speed_part(model: str, threads: int, tokens: int, levels: list[int], rounds: int, template: list[str],
               binary: str) -> dict:
    """{path: {level: [each round's figures]}}"""
    runs: dict = {path: {level: [] for level in levels} for path in PATHS}
    for r in range(rounds):
        for level in levels:
            for path, figures in level_round(binary, model, threads, level, template, tokens, r).items():
                runs[path][level].append(figures)
            print(f"round {r + 1}, {level:2d} clients: " +
                  ", ".join(f"{p} {summary(runs[p][level][-1])}" for p in PATHS), flush=True)
    return runs


def level_round(binary: str, model: str, threads: int, level: int, template: list[str], tokens: int,
                turn: int) -> dict:
    """Each path's figures at one level: a fresh node and a fresh llama-server
    up at once, the paths run one after another and then again in the
    reverse order (ABC CBA, the first path turning by round), so that a drift
    of the machine's speed over the level falls on every path alike; an idle
    server waits on a socket.  The second pass words its prompts otherwise,
    so that no server finds them in its cache."""
    with contextlib.ExitStack() as stack:
        node, address, base = start_api_node(model, threads, level, template)
        stack.callback(stop_process, node)
        server, port = start_llama_server(binary, model, threads, level, template)
        stack.callback(stop_process, server)
        targets = {"llamafs-http": (over_http, base), "llama-server": (over_http, f"http://127.0.0.1:{port}"),
                   "llamafs-9P": (over_9p, address)}
        for send, target in targets.values():
            trio.run(send, target, WARM_UP_BODY)
        order = turned(PATHS, turn)
        done: dict = {path: [] for path in PATHS}
        for wording, paths in enumerate((order, order[::-1])):
            bodies = [story(i, tokens, wording) for i in range(level)]
            for path in paths:
                send, target = targets[path]
                done[path].append(trio.run(level_run, send, target, bodies))
        return {path: merged(passes) for path, passes in done.items()}


def merged(passes: list[dict]) -> dict:
    """A path's passes at a level as one: tok/s over their walls together."""
    tokens = [n for p in passes for n in p["tokens"]]
    return {"tps": sum(tokens) / sum(p["wall"] for p in passes), "ttfts": [t for p in passes for t in p["ttfts"]],
            "tokens": tokens, "passes": [p["tps"] for p in passes]}


def summary(run: dict) -> str:
    return (f"{run['tps']:.1f} tok/s (TTFT p50 {percentile(run['ttfts'], 0.5):.3f} s, "
            f"{min(run['tokens'])}-{max(run['tokens'])} tokens a client)")


def ratios(runs: dict, level: int, ours: str, theirs: str) -> list[float]:
    return [a["tps"] / b["tps"] for a, b in zip(runs[ours][level], runs[theirs][level])]


def report_speed(runs: dict, tokens: int) -> None:
    print(f"\nstreaming chat, {tokens} greedy tokens a client asked; tok/s medians of "
          f"{len(runs['llamafs-http'][next(iter(runs['llamafs-http']))])} rounds, TTFT p50 over all rounds' clients")
    print("| clients | llamafs-http tok/s | llama-server tok/s | llamafs-9P tok/s | http / llama-server: median "
          "(each round) | http / 9P: median (each round) | TTFT p50 http / llama-server / 9P | tokens a client |")
    print("|---|---|---|---|---|---|---|---|")
    for level in runs["llamafs-http"]:
        tps = {p: statistics.median(r["tps"] for r in runs[p][level]) for p in PATHS}
        ttft = {p: percentile([t for r in runs[p][level] for t in r["ttfts"]], 0.5) for p in PATHS}
        made = [n for p in PATHS for r in runs[p][level] for n in r["tokens"]]
        cells = []
        for theirs in ("llama-server", "llamafs-9P"):
            each = ratios(runs, level, "llamafs-http", theirs)
            cells.append(f"{statistics.median(each):.2f} ({', '.join(f'{x:.2f}' for x in each)})")
        print(f"| {level} | {tps['llamafs-http']:.1f} | {tps['llama-server']:.1f} | {tps['llamafs-9P']:.1f} | "
              f"{cells[0]} | {cells[1]} | {ttft['llamafs-http']:.3f} / {ttft['llama-server']:.3f} / "
              f"{ttft['llamafs-9P']:.3f} s | {min(made)}-{max(made)} |")
    print("goals: http / llama-server >= 1.0 at every level; http / 9P >= 0.97")


# ---- prefix -------------------------------------------------------------------------------


async def conversation(base: str, document: str, turns: int, tokens: int) -> list[dict]:
    """One chat, each request the whole conversation so far, with the reply added after it."""
    messages: list[dict] = []
    out = []
    async with http_client() as http:  # one, as a chat application holds it
        for i in range(turns):
            messages.append({"role": "user", "content": (document if i == 0 else "") + QUESTIONS[i]})
            out.append(await over_http(base, chat_body(messages, tokens), http))
            messages.append({"role": "assistant", "content": out[-1]["text"]})
    return out


def prefix_part(model: str, threads: int, tokens: int, rounds: int, template: list[str], turns: int) -> dict:
    """{"node" | "coordinator": [each round's turns]}"""
    document = make_prefix(model, 1000)
    runs: dict = {"node": [], "coordinator": []}
    for r in range(rounds):
        process, _, base = start_api_node(model, threads, 4, template)
        try:
            runs["node"].append(trio.run(conversation, base, document, turns, tokens))
        finally:
            stop_process(process)
        nodes = [start_node_process(model, threads=max(1, threads // 2), slots=4, extra=template) for _ in range(2)]
        http = free_port()
        try:
            coordinator, _ = start_coordinator_process([a for _, a in nodes], loadBalancing="prefix-affinity",
                                                       healthCheckInterval=1000, http=f"tcp!127.0.0.1!{http}")
            try:
                wait_ready(http)
                runs["coordinator"].append(trio.run(conversation, f"http://127.0.0.1:{http}", document, turns,
                                                    tokens))
            finally:
                stop_process(coordinator)
        finally:
            for p, _ in nodes:
                stop_process(p)
        for where, got in runs.items():
            print(f"round {r + 1}, {where}: TTFT " + ", ".join(f"{t['ttft']:.3f}" for t in got[-1]) +
                  " s; cached " + ", ".join(f"{t['cached']}/{t['prompt']}" for t in got[-1]), flush=True)
    return runs


def report_prefix(runs: dict, tokens: int) -> None:
    print(f"\na chat sent whole each turn, a 1,000-token document in turn 1, {tokens} tokens a reply; "
          f"medians of {len(runs['node'])} rounds")
    print("| where | turn | prompt tokens | cached tokens | TTFT |")
    print("|---|---|---|---|---|")
    for where, rounds in runs.items():
        for i in range(len(rounds[0])):
            figure = {k: statistics.median(r[i][k] for r in rounds) for k in ("prompt", "cached", "ttft")}
            print(f"| {where} | {i + 1} | {figure['prompt']:.0f} | {figure['cached']:.0f} | {figure['ttft']:.3f} s |")
        last = [r[-1]["ttft"] / r[0]["ttft"] for r in rounds]
        print(f"| {where} | turn {len(rounds[0])} / turn 1 | | | {statistics.median(last):.2f} "
              f"({', '.join(f'{x:.2f}' for x in last)}) |")


# ---- the command --------------------------------------------------------------------------


@click.command()
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1), help="each with fresh processes")
@click.option("--clients", default="1,4,8,16", show_default=True, help="levels of the speed part")
@click.option("--tokens", default=128, show_default=True, type=click.IntRange(1), help="max_tokens a request")
@click.option("--turn-tokens", default=32, show_default=True, type=click.IntRange(1),
              help="max_tokens a turn of the prefix part")
@click.option("--turns", default=5, show_default=True, type=click.IntRange(2, len(QUESTIONS)))
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--threads", default=2, show_default=True)
@click.option("--chat-template-file", "template", type=click.Path(dir_okay=False, exists=True),
              help="for a model without a chat template (default: Gemma 3's, for a Gemma 3 model)")
@click.option("--part", type=click.Choice(["all", "speed", "prefix"]), default="all", show_default=True)
@click.option("--json", "json_path", default=os.path.join(ROOT, "bench", "results", "api.json"), show_default=True)
def main(rounds, clients, tokens, turn_tokens, turns, model, threads, template, part, json_path):
    from styxfs.llama.models import model_path

    try:
        levels = [int(c) for c in clients.split(",")]
    except ValueError:
        raise click.BadParameter(f"a list of numbers such as 1,4,8,16: {clients}", param_hint="--clients") from None
    model = model or str(model_path("gemma3-270m"))
    options = template_options(model, template)
    figures: dict = {"machine": machine_line(), "model": os.path.basename(model), "threads": threads}
    if part in ("all", "speed"):
        figures["speed"] = speed_part(model, threads, tokens, levels, rounds, options, find_or_build())
    if part in ("all", "prefix"):
        figures["prefix"] = prefix_part(model, threads, turn_tokens, rounds, options, turns)
    print(f"\n{figures['machine']}\nmodel {figures['model']}, {threads} threads")
    if "speed" in figures:
        report_speed(figures["speed"], tokens)
    if "prefix" in figures:
        report_prefix(figures["prefix"], turn_tokens)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(figures, f, indent=1, default=str)
    print(f"figures written to {json_path}")


if __name__ == "__main__":
    main()
