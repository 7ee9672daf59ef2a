"""Drafting policies compared without the machine's noise: the greedy
replies of bench_speculate.py's workloads are recorded once, then each
policy is replayed over them, and its drafts are scored against what the
model said next.

    .venv/bin/python bench/replay_speculate.py [--tokens 200] [--record FILE] [--replies FILE]

A greedy reply is the same whatever was drafted, so a policy's drafts,
kept prefixes and steps follow from the reply's tokens alone; a step's
time is taken from a curve measured here (one llama_decode of k tokens of
one sequence, each with its logits, against one token).  Policies:
  llamafs        the engine's drafting as it is (speculate.py: Drafter,
                 KeptRates, StepCosts knowing the curve, the user's Memory)
  ngram-simple, ngram-map-k, ngram-map-k4v, ngram-mod
                 llama-server's n-gram drafts at their defaults, as read in
                 llama.cpp's common/ngram-map.cpp and ngram-mod.cpp
Figures: modelled speed over no drafts (tokens over their steps' time in
one-token steps, the prompt's step counted as one), drafted and kept
tokens, tokens a step.  Run against bench_speculate.py's measured draft
counts, the replay of ngram-map-k4v and ngram-mod drafts what they drafted
there (e.g. 94 of 94 kept against 93 of 93 on the first plain question).
What it leaves out is what bench_speculate.py measures: prompt steps, HTTP,
and the node's time between steps.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import click
import httpx2 as httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_speculate import TASKS, bodies  # noqa: E402
from bench.common import machine_line, stop_process  # noqa: E402
from bench.llama_server import find_or_build  # noqa: E402
from bench.suite import start_llama_server  # noqa: E402
from styxfs.llama import speculate  # noqa: E402

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 33, 48, 65)


# ---- recording ----------------------------------------------------------------------------


def record(model: str, tokens: int) -> dict:
    """{workload: [{"prompt": tokens, "reply": tokens}]}: greedy, from llama-server."""
    process, port = start_llama_server(find_or_build(), model, 2, 1, [])
    out: dict = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            for workload in TASKS:
                out[workload] = []
                for body in bodies(workload, tokens):
                    prompt = client.post("/apply-template", json={"messages": body["messages"]}).json()["prompt"]
                    ids = client.post("/tokenize", json={"content": prompt, "add_special": True,
                                                         "parse_special": True}).json()["tokens"]
                    reply = client.post("/completion", json={"prompt": ids, "n_predict": tokens, "temperature": 0,
                                                             "return_tokens": True, "cache_prompt": False}).json()
                    out[workload].append({"prompt": ids, "reply": reply["tokens"]})
    finally:
        stop_process(process)
    return out


def measure_costs(model: str, rounds: int = 3) -> dict[int, float]:
    """{k: seconds of a decode of k tokens of one sequence / of one token}, medians."""
    from styxfs.llama.llamacpp import LlamaModel
    from styxfs.llama.model import ModelSettings

    llama = LlamaModel(ModelSettings(path=model, threads=2), slots=1)
    seconds: dict[int, list[float]] = {k: [] for k in SIZES}
    try:
        llama.decode([(0, 100 + i % 50, i, False) for i in range(300)])  # a context to attend to
        for _ in range(rounds):  # the sizes interleaved, so that drift hits them all alike
            for k in SIZES:
                for _ in range(4):
                    started = time.perf_counter()
                    llama.decode([(0, 200 + i, 300 + i, True) for i in range(k)])
                    seconds[k].append(time.perf_counter() - started)
                    llama.trim_seq(0, 300)
    finally:
        llama.close()
    one = statistics.median(seconds[1])
    return {k: statistics.median(v) / one for k, v in seconds.items()}


def interpolate(curve: dict[int, float], k: int) -> float:
    sizes = sorted(curve)
    if k in curve:
        return curve[k]
    lower = max(s for s in sizes if s < k)
    upper = min(s for s in sizes if s > k)
    return curve[lower] + (curve[upper] - curve[lower]) * (k - lower) / (upper - lower)


# ---- replaying ----------------------------------------------------------------------------


def replay(policy, replies: list[dict], cost) -> dict:
    """One policy over replies, in order (policies that learn across requests do)."""
    total = {"tokens": 0, "time": 0.0, "drafted": 0, "kept": 0, "steps": 0}
    for one in replies:
        prompt, reply = one["prompt"], one["reply"]
        policy.begin(prompt)
        history = list(prompt)
        i, spent = 0, 1.0  # reply[i] sampled, not yet decoded; the prompt's step made reply[0]
        while i < len(reply) - 1:
            draft = policy.draft(history, reply[i])[:len(reply) - 1 - i]  # never past maxtokens
            kept = 0
            while kept < len(draft) and draft[kept] == reply[i + 1 + kept]:
                kept += 1
            spent += cost(1 + len(draft))
            if draft:
                policy.verified(len(draft), kept)
            total["drafted"] += len(draft)
            total["kept"] += kept
            total["steps"] += 1
            history += reply[i:i + 1 + kept]
            i += 1 + kept
        policy.done(history + reply[len(history) - len(prompt):])  # the reply's last token, if not decoded
        total["tokens"] += len(reply)
        total["time"] += spent
    return total


class Llamafs:
    """The engine's drafting for one greedy session (engine.Engine._draft)."""

    def __init__(self, curve: dict[int, float]):
        self.costs = speculate.StepCosts()
        for _ in range(64):  # as a node that has measured every size often: averages settled on the curve
            for k in range(1, speculate.SPECULATE_AUTO + 2):
                self.costs.record(k, interpolate(curve, k))
        self.kept = speculate.KeptRates()
        self.memories = speculate.Memories()

    def begin(self, prompt):
        self.drafter = speculate.Drafter(*speculate.mode_limit("auto", True, False), self.kept)

    def draft(self, history, last):
        return self.drafter.draft(history, last, self.drafter.most, self.memories.get("user"), self.costs, 1, 1.0)

    def verified(self, drafted, kept):
        self.drafter.verified(drafted, kept)

    def done(self, tokens):
        self.memories.learn("user", tokens)


class NgramMap:
    """llama-server's ngram-simple, ngram-map-k and ngram-map-k4v (defaults: a key
    of 12 tokens, the last one just sampled; a value of the 48 after it)."""

    def __init__(self, kind: str, n: int = 12, m: int = 48):
        self.kind, self.n, self.m = kind, n, m

    def begin(self, prompt):
        self.keys: dict = {}  # key -> {"values": {value: [count, drafted at most]}, "upto": index}
        self.used = None

    def _latest(self, tokens, key, last_start):
        for j in range(last_start, 0, -1):
            if tuple(tokens[j:j + self.n]) == key:
                return j
        return 0

    def draft(self, tokens, last):
        n, m, cur = self.n, self.m, len(tokens)
        self.used = None
        key = tuple(tokens[cur - n + 1:]) + (last,)
        if self.kind == "ngram-simple":  # the latest earlier occurrence, at least n tokens after it
            if cur <= n + m + 1:
                return []
            at = self._latest(tokens, key, cur - n - 1)
            count = min(m, cur - (at + n)) if at else 0
            return tokens[at + n:at + n + count] if count >= n else []
        if cur < 2 * n + m:
            return []
        at = self._latest(tokens, key, cur - n - m - 1)  # with m tokens after it, all known
        if not at:
            return []
        entry = self.keys.setdefault(key, {"values": {}, "upto": 0})
        if self.kind == "ngram-map-k":
            self.used = entry["values"].setdefault(None, [0, m])
            return tokens[at + n:at + n + min(m, self.used[1])]
        values = entry["values"]  # k4v: up to 4 values after the key, counted
        for j in range(entry["upto"], at + 1):
            if tuple(tokens[j:j + n]) == key:
                value = tuple(tokens[j + n:j + n + m])
                if value in values:
                    values[value][0] += 1
                elif len(values) < 4:
                    values[value] = [1, m]
        entry["upto"] = at
        counts = sorted((v[0] for v in values.values()), reverse=True)
        if len(counts) > 1 and counts[0] < 2 * sum(counts[1:]):
            return []  # no value clearly the most frequent
        self.used = max(values.values(), key=lambda v: v[0])
        return tokens[at + n:at + n + min(m, self.used[1])]

    def verified(self, drafted, kept):
        if self.used is not None:
            self.used[1] = kept  # the next draft from this value goes as far as this one was kept

    def done(self, tokens):
        pass


class NgramMod:
    """llama-server's ngram-mod: one table of every request's 24-grams and the token
    after each; a draft chains lookups, 48 tokens at least, 64 at most; five
    drafts in a row kept less than a quarter empty the table."""

    def __init__(self, n: int = 24, least: int = 48, most: int = 64):
        self.n, self.least, self.most = n, least, most
        self.table: dict = {}
        self.low = 0

    def _add(self, tokens, start, end):
        for i in range(start, end):
            self.table[tuple(tokens[i:i + self.n])] = tokens[i + self.n]

    def begin(self, prompt):
        self._add(prompt, 0, len(prompt) - self.n)
        self.added = max(0, len(prompt) - self.n)

    def draft(self, tokens, last):
        n, cur = self.n, len(tokens)
        if cur < n:
            return []
        if self.added + 32 < cur:  # new n-grams go in 32 at a time
            self._add(tokens, self.added, cur - n)
            self.added = cur - n
        context = tokens[cur - n + 1:] + [last]
        out = []
        while len(out) < self.most:
            token = self.table.get(tuple(context[-n:]))
            if token is None:
                return out if len(out) >= self.least else []
            out.append(token)
            context.append(token)
        return out

    def verified(self, drafted, kept):
        self.low = self.low + 1 if kept < drafted / 4 else 0
        if self.low >= 5:
            self.table.clear()
            self.low = self.added = 0

    def done(self, tokens):
        pass


POLICIES = {"llamafs": Llamafs, "ngram-simple": lambda c: NgramMap("ngram-simple"),
            "ngram-map-k": lambda c: NgramMap("ngram-map-k"), "ngram-map-k4v": lambda c: NgramMap("ngram-map-k4v"),
            "ngram-mod": lambda c: NgramMod()}


@click.command()
@click.option("--tokens", default=200, show_default=True)
@click.option("--model", default=None, help="a .gguf (default: the default model)")
@click.option("--replies", default=None, help="replay these recorded replies (JSON) instead of recording")
@click.option("--record", "record_path", default=None, help="keep the recorded replies here")
def main(tokens, model, replies, record_path):
    from styxfs.llama.models import model_path

    model = str(model_path(model))
    print(machine_line())
    if replies:
        with open(replies) as f:
            recorded = json.load(f)
    else:
        recorded = record(model, tokens)
        if record_path:
            with open(record_path, "w") as f:
                json.dump(recorded, f)
    curve = measure_costs(model)
    print(f"{os.path.basename(model)}: a step of k tokens / of one: "
          + ", ".join(f"{k}: {c:.2f}" for k, c in curve.items()))
    for workload, turns in recorded.items():
        print(f"\n{workload} ({len(turns)} replies)    speed vs no drafts   drafted   kept   tokens a step")
        for name, make in POLICIES.items():
            t = replay(make(curve), turns, lambda k: interpolate(curve, k))
            kept = f"{t['kept'] / t['drafted']:.0%}" if t["drafted"] else "-"
            print(f"  {name:16s} {t['tokens'] / t['time']:18.3f} {t['drafted']:9d} {kept:>6s} "
                  f"{t['tokens'] / (t['steps'] + len(turns)):14.2f}")


if __name__ == "__main__":
    main()
