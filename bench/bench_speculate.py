"""Speculative decoding: one session on the default model, llamafs against
llama-server at its default and with each of its n-gram drafts.

    .venv/bin/python bench/bench_speculate.py [--rounds 5] [--tokens 200] [--workloads repeat,plain]
                                              [--spec-types ...]

Two workloads, each a few chats of one user message, greedy, `--tokens`
tokens at most, sent one after the other through POST /v1/chat/completions
(not streamed: each request is timed whole, as a user waits for it):
  repeat  replies that repeat their input: copy a ~900-token passage, quote
          its sentences about one thing, rewrite it with a word changed;
  plain   plain questions: stories, explanations, lists (eight of them, as
          their speed differs by the reply and the machine is noisy).
Servers, fresh for each round, all up at once; each request is asked of
each server in turn, the order turning request by request and round by
round:
  llamafs                      a node at its defaults (`speculate auto`), through its API
  llama-server                 at its defaults (no drafts)
  llama-server ngram-simple    ... and with each --spec-type of n-gram drafts
Figures: tokens/s of a workload (its completion tokens over its requests'
time), medians over rounds; llamafs / each, as the ratio of the medians and
as the median of each round's ratio; for llamafs, the drafted tokens and the
share kept (from its metrics).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time

import click
import httpx2 as httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_api import start_api_node  # noqa: E402
from bench.common import machine_line, stop_process, turned  # noqa: E402
from bench.llama_server import find_or_build  # noqa: E402
from bench.suite import start_llama_server  # noqa: E402
from styxfs import metrics  # noqa: E402

SPEC_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")

PASSAGE = """\
The river Wend rises in a peat bog high on the moor, where three springs meet under a stone that shepherds call the Anvil.
For its first few miles it is no wider than a lane, and it runs fast and brown over slabs of gritstone polished by the water.
Below the village of Harrowby the valley opens, and the river slows among water meadows that flood every February.
The meadows were cut for hay until the war, when the farmers ploughed them for wheat and lost half of the crop to the floods.
A mill stood at Cobb's Weir from the thirteenth century until 1921, grinding oats and later driving a small sawmill.
Its wheel was undershot, and the millers complained in every century that the weir upstream stole their head of water.
The old packhorse bridge at Lydgate has five arches, and the second from the east bank was rebuilt after a flood in 1771.
Travellers paid a toll of a halfpenny to cross it, collected by a keeper who lived in the cottage that is now a tea room.
Kingfishers nest in the sandy banks below the bridge, and otters returned to this stretch of the river about twenty years ago.
Anglers say that the best trout lie in the deep pool under the alders, where the current turns against the far bank.
At Marston the river meets the canal, which crosses it on a stone aqueduct of seven arches built by a engineer from Leeds.
The aqueduct leaked for its first ten years, and the company lined it with puddled clay carried up the valley by barge.
Below Marston the Wend is tidal, and at spring tides the water backs up as far as the railway viaduct at Fenny Stratton.
Salt marsh lines both banks from there to the sea, and in winter thousands of geese feed on the grass between the creeks.
The town of Wendmouth grew up where the river reaches the estuary, trading in wool, coal and salted herring.
Its harbour silted up in the eighteenth century, and the merchants built a new quay a mile downstream on deeper water.
Today the old quay is a car park, but the customs house still stands, with the royal arms carved above its door.
A ferry crosses the estuary every half hour in summer, carrying walkers to the coastal path on the southern shore.
The lifeboat station at the harbour mouth was founded in 1866 after a collier went down with all hands on the bar.
Its crews have saved more than four hundred lives, and the names of the boats are painted on a board inside the station.
"""

TASKS = {
    "repeat": ["Copy the passage above exactly, line by line.",
               "Quote, word for word, every sentence of the passage above that mentions the river.",
               "Rewrite the passage above exactly, but write 'stream' wherever it says 'river'."],
    "plain": ["Write a short story about a fox who keeps a diary.",
              "Explain how a refrigerator keeps food cold.",
              "List ten fruits, each with its colour and the country it grows in.",
              "Write a letter to a friend about a walk by the sea.",
              "Explain why the sky is blue, for a child.",
              "Give five tips for learning to play the piano.",
              "Describe a busy market in the morning.",
              "Explain what a database index is and when to use one."],
}


def bodies(workload: str, tokens: int) -> list[dict]:
    prefix = PASSAGE + "\n" if workload == "repeat" else ""
    return [{"messages": [{"role": "user", "content": prefix + task}], "max_tokens": tokens, "temperature": 0}
            for task in TASKS[workload]]


def ask(client: httpx.Client, body: dict) -> tuple[int, float]:
    """One chat request timed whole: (completion tokens, seconds)."""
    start = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{client.base_url}: {response.status_code} {response.text[:300]}")
    return response.json()["usage"]["completion_tokens"], elapsed


def draft_counts(base: str) -> dict[str, float]:
    """A node's draft figures and steps, from its metrics."""
    samples = metrics.parse(httpx.get(f"{base}/metrics", timeout=10).text)
    return {"drafted": metrics.value(samples, "llamafs_draft_tokens_total"),
            "accepted": metrics.value(samples, "llamafs_draft_tokens_accepted_total"),
            "out": metrics.value(samples, "llamafs_tokens_out_total"),
            "steps": metrics.value(samples, "llamafs_decode_steps_total")}


def start_server(server: str, binary: str, model: str, threads: int):
    """One fresh server: (process, base URL, its draft counts or None)."""
    if server == "llamafs":
        process, _, base = start_api_node(model, threads, 1, [])
        return process, base, lambda: draft_counts(base)
    spec = server.partition(" ")[2]
    process, port = start_llama_server(binary, model, threads, 1, ["--spec-type", spec] if spec else [])
    return process, f"http://127.0.0.1:{port}", None


def one_round(servers: list[str], binary: str, model: str, threads: int, tokens: int,
              chosen: list[str], turn: int = 0) -> dict[str, dict]:
    """{server: {workload: tokens/s, "<workload> counts": ...}}: every server
    fresh and all up at once, each request asked of each in turn, the order
    turning request by request (and round by round: `turn`), so that the
    machine's drifts (tens of seconds here) fall on every server alike; an
    idle server waits on a socket and takes no CPU."""
    with contextlib.ExitStack() as stack:
        clients, counts = {}, {}
        for server in servers:
            process, base, counts[server] = start_server(server, binary, model, threads)
            stack.callback(stop_process, process)
            # made before any request is timed: a new client costs tens of ms of CPU
            clients[server] = stack.enter_context(httpx.Client(base_url=base, timeout=600))
        for server in servers:
            ask(clients[server], {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
                                  "temperature": 0})
        out: dict[str, dict] = {server: {} for server in servers}
        for workload in chosen:
            before = {s: count() for s, count in counts.items() if count}
            done: dict[str, list[tuple[int, float]]] = {server: [] for server in servers}
            for body in bodies(workload, tokens):
                for server in turned(servers, turn):
                    done[server].append(ask(clients[server], body))
                turn += 1
            for server in servers:
                out[server][workload] = sum(t for t, _ in done[server]) / sum(s for _, s in done[server])
                out[server][f"{workload} requests"] = done[server]  # (tokens, seconds) of each, for the JSON
            for server, was in before.items():
                now = counts[server]()
                out[server][f"{workload} counts"] = {k: now[k] - was[k] for k in now}
        return out


@click.command()
@click.option("--rounds", default=5, show_default=True)
@click.option("--tokens", default=200, show_default=True)
@click.option("--model", default=None, help="a .gguf (default: the default model)")
@click.option("--threads", default=2, show_default=True)
@click.option("--workloads", "chosen", default=",".join(TASKS), show_default=True)
@click.option("--spec-types", default=",".join(SPEC_TYPES), show_default=True)
@click.option("--json", "json_path", default=None, help="write the figures here too")
def main(rounds, tokens, model, threads, chosen, spec_types, json_path):
    from styxfs.llama.models import model_path

    chosen = [w for w in chosen.split(",") if w]
    unknown = [w for w in chosen if w not in TASKS]
    if unknown or not chosen:
        raise click.BadParameter(f"{','.join(unknown) or 'none'}: the workloads are {', '.join(TASKS)}",
                                 param_hint="--workloads")
    model = str(model_path(model))
    binary = find_or_build()
    servers = ["llamafs", "llama-server"] + [f"llama-server {s}" for s in spec_types.split(",") if s]
    print(machine_line())
    print(f"{os.path.basename(model)}, {threads} threads, one session, greedy, {tokens} tokens, {rounds} rounds")
    runs: dict[str, list[dict]] = {s: [] for s in servers}
    for r in range(rounds):
        got = one_round(servers, binary, model, threads, tokens, chosen, turn=r)
        for server in servers:
            runs[server].append(got[server])
            print(f"round {r + 1} {server:27s} " + "  ".join(f"{w} {got[server][w]:6.1f} tok/s" for w in chosen),
                  flush=True)
    report(runs, servers, chosen)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"tokens": tokens, "rounds": rounds, "runs": runs}, f, indent=1)


def report(runs: dict, servers: list[str], chosen: list[str]) -> None:
    median = {s: {w: statistics.median(r[w] for r in runs[s]) for w in chosen} for s in servers}
    print(f"\n{'':27s}" + "".join(f"{w:>10s} {'llamafs/':>9s}" for w in chosen))
    for s in servers:
        print(f"{s:27s}" + "".join(f"{median[s][w]:10.1f} {median['llamafs'][w] / median[s][w]:9.2f}" for w in chosen))
    for w in chosen:  # each round's servers answered the same requests side by side: their ratio is less noisy
        for s in servers[1:]:
            ratios = [mine[w] / theirs[w] for mine, theirs in zip(runs["llamafs"], runs[s])]
            print(f"{w}: llamafs / {s}, each round: median {statistics.median(ratios):.2f} "
                  f"({', '.join(f'{x:.2f}' for x in ratios)})")
    for w in chosen:
        best = max((s for s in servers if s != "llamafs"), key=lambda s: median[s][w])
        print(f"{w}: llamafs / llama-server's best ({best}): {median['llamafs'][w] / median[best][w]:.2f}")
    for w in chosen:
        total = {k: sum(r[f"{w} counts"][k] for r in runs["llamafs"]) for k in ("drafted", "accepted", "out", "steps")}
        if total["drafted"]:
            print(f"llamafs drafts, {w}: {total['drafted']:.0f} tokens drafted, {total['accepted'] / total['drafted']:.0%} "
                  f"kept; {total['accepted'] / total['out']:.0%} of its tokens came from drafts, "
                  f"{total['out'] / total['steps']:.2f} tokens a step")


if __name__ == "__main__":
    main()
