"""The benchmark suite: llamafs against its peers, on the default model.

    .venv/bin/python bench/suite.py [--tokens 128] [--runs 3] [--rounds 3] [--json bench/results/suite.json]

a. one session: tokens/s through the 9P data file vs llama-cpp-python directly
b. 1, 2, 4, 8, 16 concurrent sessions of 128 tokens: aggregate tokens/s and
   p50/p99 time to first token: llamafs (a node with --slots N), llama-server
   (--parallel N, built from the same llama.cpp by bench/llama_server.py) and
   `python -m llama_cpp.server`, in rounds, each level of each round with
   fresh processes, and llamafs / llama-server per level (--no-peers: llamafs
   alone)
c. a coordinator over 2 nodes vs 1 node at 8 concurrent sessions
d. a node's resident memory, idle and at 8 sessions
and the ceiling on b: llama_decode alone, N tokens a step against one
(bench/bench_decode.py), which bounds any server's gain from batching

It installs what it needs (llama-cpp-python's [server] extra, no rebuild),
prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_decode import decode_ceiling  # noqa: E402
from bench.bench_decode import report as report_ceiling  # noqa: E402
from bench.bench_node import direct, through_9p  # noqa: E402
from bench.llama_server import find_or_build  # noqa: E402
from bench.common import (  # noqa: E402
    ROOT,
    at_once,
    free_port,
    greedy,
    machine_line,
    new_session,
    start_coordinator_process,
    start_node_process,
    stop_process,
    wait_for_port,
)
from styxfs import client, wire  # noqa: E402
from styxfs.llama.reply import parse_status  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
SERVER_EXTRAS = ["uvicorn>=0.22.0", "fastapi>=0.100.0", "pydantic-settings>=2.0.1", "sse-starlette>=1.6.1",
                 "starlette-context>=0.3.6,<0.4", "PyYAML>=5.1"]


def setup() -> None:
    try:
        import fastapi, sse_starlette, starlette_context, uvicorn  # noqa: F401, E401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q"] + SERVER_EXTRAS, check=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# ---- llamafs clients ------------------------------------------------------------------


async def llamafs_one(c, tokens: int, results: list) -> None:
    async with new_session(c, greedy(tokens)) as (ctl, n):
        start = time.perf_counter()
        first = None
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            async for _ in f.stream():
                if first is None:
                    first = time.perf_counter() - start
        elapsed = time.perf_counter() - start
        status = (await c.read_file(f"{n}/status")).decode()
        await ctl.fid.write(b"close", 0)
    out = int(parse_status(status)[1]["tokens_out"])
    results.append((out, first or elapsed, elapsed))


async def llamafs_concurrent(address: str, sessions: int, tokens: int, probe_metrics: bool = False) -> dict:
    """`sessions` clients at once, each a session of `tokens` tokens.  With
    probe_metrics, one more client reads `metrics` every 50 ms meanwhile and
    the figures say how long those reads took."""
    results: list = []
    probes: list[float] = []

    async def one():
        async with client.connect(address) as c:
            await llamafs_one(c, tokens, results)

    async def probe():
        async with client.connect(address) as c:
            while True:
                t = time.perf_counter()
                await c.read_file("metrics")
                probes.append(time.perf_counter() - t)
                await trio.sleep(0.05)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        if probe_metrics:
            nursery.start_soon(probe)
        async with trio.open_nursery() as clients:
            for _ in range(sessions):
                clients.start_soon(one)
        wall = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    figures = summarise(results, wall)
    if probe_metrics:
        figures |= {"metrics_read_p50": percentile(probes, 0.5), "metrics_read_p99": percentile(probes, 0.99)}
    return figures


def summarise(results: list, wall: float) -> dict:
    total = sum(r[0] for r in results)
    ttfts = [r[1] for r in results]
    return {"tokens": total, "seconds": wall, "aggregate_tps": total / wall,
            "ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99), "ttfts": ttfts}


def combine(runs: list[dict]) -> dict:
    """Rounds of one server at one level: the median aggregate, TTFTs pooled."""
    ttfts = [t for r in runs for t in r["ttfts"]]
    return {"aggregate_tps": statistics.median(r["aggregate_tps"] for r in runs),
            "runs_tps": [r["aggregate_tps"] for r in runs],
            "ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99)}


class PeakRSS:
    """The largest resident size of a process while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch)

    def watch(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.1)

    def __enter__(self) -> "PeakRSS":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


# ---- llama_cpp.server (OpenAI-style HTTP) clients ------------------------------------


def http_one(port: int, tokens: int, results: list, lock: threading.Lock) -> None:
    body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "repeat_penalty": 1.0,
                       "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first, count = None, 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"][0].get("text"):
            count += 1
            if first is None:
                first = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    conn.close()
    with lock:
        results.append((count, first or elapsed, elapsed))


def http_concurrent(port: int, sessions: int, tokens: int) -> dict:
    results: list = []
    lock = threading.Lock()
    wall = at_once([lambda: http_one(port, tokens, results, lock) for _ in range(sessions)])
    return summarise(results, wall)


def start_peer(model: str, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_ctx", "2048",
                                "--n_threads", str(threads), "--n_threads_batch", str(threads),
                                "--port", str(port), "--host", "127.0.0.1",
                                "--interrupt_requests", "False"],  # else a new request cuts the running one short
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process=process)
    return process, port


def start_llama_server(binary: str, model: str, threads: int, parallel: int,
                       extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    """llama-server with a slot per session and 2048 tokens a slot, as a node with --slots N;
    extra: more of its options."""
    port = free_port()
    process = subprocess.Popen([binary, "-m", model, "-c", str(2048 * parallel), "-t", str(threads),
                                "-tb", str(threads), "--parallel", str(parallel), "--port", str(port),
                                "--host", "127.0.0.1", *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process=process)
    wait_ready(port)
    return process, port


def wait_ready(port: int, timeout: float = 120) -> None:
    """llama-server listens before its model is loaded: /health says 200 when it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise TimeoutError("llama-server did not become ready")


# ---- the suite ---------------------------------------------------------------------------


@click.command()
@click.option("--tokens", default=128, show_default=True)
@click.option("--runs", default=3, show_default=True, help="alternating runs for part a")
@click.option("--threads", default=os.cpu_count() or 2, show_default=True)
@click.option("--model", default=None, help="default: Gemma 3 270M")
@click.option("--json", "json_path", default=os.path.join(ROOT, "bench", "results", "suite.json"), show_default=True)
@click.option("--sessions", default="1,2,4,8,16", show_default=True)
@click.option("--rounds", default=5, show_default=True, help="rounds of part b, each with fresh processes")
@click.option("--no-peers", is_flag=True, help="llamafs alone in part b (no llama-server, no llama_cpp.server)")
@click.option("--speed-only", is_flag=True,
              help="part b alone, llamafs against llama-server only: the speed goal's table")
def main(tokens, runs, threads, model, json_path, sessions, rounds, no_peers, speed_only):
    from styxfs.llama.models import model_path

    setup()
    model = model or str(model_path("gemma3-270m"))
    levels = [int(s) for s in sessions.split(",")]
    figures: dict = {"machine": machine_line(), "model": os.path.basename(model), "tokens": tokens,
                     "threads": threads}
    if speed_only:
        figures["b"], _ = concurrency_figures(model, threads, tokens, levels, rounds, find_or_build(), False)
        report_speed(figures)
        return
    figures["a"], figures["rss_idle_mb"] = one_session_figures(model, threads, tokens, runs)
    # b. concurrency, in rounds: at each level each server runs in turn, so the
    # drift of this machine's speed (often 15% within minutes) hits all alike.
    server = None if no_peers else find_or_build()
    figures["b"], peaks = concurrency_figures(model, threads, tokens, levels, rounds, server, not no_peers)
    for level, peak in peaks.items():
        figures[f"rss_{level}_sessions_mb"] = peak
    figures["metrics_while_busy"] = metrics_while_busy(model, threads, tokens, max(levels))
    # c. a coordinator over 2 nodes vs 1 node, 8 sessions
    figures["c"] = coordinator_figures(model, threads, tokens, max(levels))
    # What batching can give at most here: llama.cpp alone, N tokens a step.
    figures["ceiling"] = decode_ceiling(model, threads, levels)
    report(figures)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"figures written to {json_path}")


def one_session_figures(model: str, threads: int, tokens: int, runs: int) -> tuple[dict, float]:
    """Part a: one session through the 9P data file, alternating with
    llama-cpp-python directly; and the node's resident MB, idle."""
    from llama_cpp import Llama

    node, address = start_node_process(model, threads=threads, slots=1)
    try:
        idle = rss_mb(node.pid)
        llm = Llama(model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
        trio.run(through_9p, address, 8)
        direct(llm, 8)
        a9, ad = [], []
        for _ in range(runs):
            n, t = trio.run(through_9p, address, tokens)
            a9.append(n / t)
            n, t = direct(llm, tokens)
            ad.append(n / t)
        del llm
        a = {"llamafs_tps": statistics.median(a9), "direct_tps": statistics.median(ad),
             "ratio": statistics.median(a9) / statistics.median(ad)}
        return a, idle
    finally:
        stop_process(node)


def concurrency_figures(model: str, threads: int, tokens: int, levels: list[int], rounds: int,
                        llama_server: str | None, python_peer: bool) -> tuple[dict, dict]:
    """Part b: per round and level, a node with --slots N for N sessions and
    llama-server with --parallel N, each started afresh (one process can run
    10% faster or slower than the next), one after the other so that the
    drift of this machine's speed hits both alike; and per round one
    llama_cpp.server (it answers one request at a time whatever N).
    ({server: {level: figures}}, {level: the node's peak resident MB})."""
    names = ["llamafs"] + (["llama-server"] if llama_server else []) + (["llama_cpp.server"] if python_peer else [])
    runs: dict = {name: {level: [] for level in levels} for name in names}
    peaks: dict = {}
    for _ in range(rounds):
        peer, port = start_peer(model, threads) if python_peer else (None, 0)
        try:
            if peer:
                http_concurrent(port, 1, 8)  # warm up
            for level in levels:
                node, address = start_node_process(model, threads=threads, slots=level)
                try:
                    with PeakRSS(node.pid) as rss:
                        trio.run(through_9p, address, 8)  # warm up
                        runs["llamafs"][level].append(trio.run(llamafs_concurrent, address, level, tokens))
                finally:
                    stop_process(node)
                peaks[level] = max(peaks.get(level, 0.0), rss.peak)
                if llama_server:
                    process, server_port = start_llama_server(llama_server, model, threads, level)
                    try:
                        http_concurrent(server_port, 1, 8)  # warm up
                        runs["llama-server"][level].append(http_concurrent(server_port, level, tokens))
                    finally:
                        stop_process(process)
                if peer:
                    runs["llama_cpp.server"][level].append(http_concurrent(port, level, tokens))
        finally:
            if peer:
                stop_process(peer)
    return {name: {level: combine(r) for level, r in by_level.items()} for name, by_level in runs.items()}, peaks


def metrics_while_busy(model: str, threads: int, tokens: int, sessions: int) -> dict:
    """How long a read of `metrics` takes while the node is saturated (a run of
    its own: the reads would cost the throughput runs some CPU)."""
    node, address = start_node_process(model, threads=threads, slots=sessions)
    try:
        trio.run(through_9p, address, 8)
        figures = trio.run(llamafs_concurrent, address, sessions, tokens, True)
    finally:
        stop_process(node)
    return {"sessions": sessions, "p50": figures["metrics_read_p50"], "p99": figures["metrics_read_p99"]}


def coordinator_figures(model: str, threads: int, tokens: int, sessions: int) -> dict:
    """The coordinator in a process of its own (`llamafs deploy start`), as deployed."""
    out = {}
    for count in (1, 2):
        per_node = max(1, threads // count)
        processes = [start_node_process(model, threads=per_node, slots=sessions) for _ in range(count)]
        try:
            coordinator, address = start_coordinator_process([a for _, a in processes],
                                                              loadBalancing="least-connections")
            try:
                out[f"{count}_nodes"] = trio.run(llamafs_concurrent, address, sessions, tokens)
            finally:
                stop_process(coordinator)
        finally:
            for process, _ in processes:
                stop_process(process)
    out["ratio"] = out["2_nodes"]["aggregate_tps"] / out["1_nodes"]["aggregate_tps"]
    out["sessions"] = sessions
    return out


def report_speed(f: dict) -> None:
    """llamafs / llama-server per level, every round: the speed goal."""
    peer = f["b"].get("llama-server")
    if not peer:
        return
    print(f"{f['machine']}\n   llamafs / llama-server (goal >= 1.0 at every level; TTFT p50 no worse):")
    for level, ours in f["b"]["llamafs"].items():
        theirs = peer[level]
        rounds = [a / b for a, b in zip(ours["runs_tps"], theirs["runs_tps"])]
        print(f"   {level:>3} sessions: {ours['aggregate_tps']:.1f} / {theirs['aggregate_tps']:.1f} tok/s ="
              f" {ours['aggregate_tps'] / theirs['aggregate_tps']:.2f} (rounds {', '.join(f'{r:.2f}' for r in rounds)}),"
              f" TTFT p50 {ours['ttft_p50']:.3f}s vs {theirs['ttft_p50']:.3f}s")


def report(f: dict) -> None:
    print(f["machine"])
    print(f"model {f['model']}, {f['tokens']} tokens a session, {f['threads']} threads")
    a = f["a"]
    print(f"\na. one session: llamafs {a['llamafs_tps']:.1f} tok/s, direct {a['direct_tps']:.1f} tok/s, "
          f"ratio {a['ratio']:.3f} (goal >= 0.98)")
    print("\nb. sessions  server             aggregate tok/s  ttft p50   ttft p99")
    for name, rows in f["b"].items():
        if not isinstance(rows, dict):
            print(f"   -         {name:<18} {rows}")
            continue
        for level, r in rows.items():
            print(f"   {level:<9} {name:<18} {r['aggregate_tps']:>15.1f}  {r['ttft_p50']:>7.3f}s  {r['ttft_p99']:>7.3f}s")
    print("   (aggregate: the median of the rounds; time to first token: over all rounds' sessions)")
    report_speed(f)
    busy = f["metrics_while_busy"]
    print(f"   reading metrics while {busy['sessions']} sessions generate: p50 {busy['p50'] * 1000:.1f} ms, "
          f"p99 {busy['p99'] * 1000:.1f} ms")
    print("\n   the ceiling: llama_decode alone, N tokens a step against 1 (bench/bench_decode.py)")
    report_ceiling(f["ceiling"])
    c = f["c"]
    print(f"\nc. coordinator at {c['sessions']} sessions: 1 node {c['1_nodes']['aggregate_tps']:.1f} tok/s, "
          f"2 nodes {c['2_nodes']['aggregate_tps']:.1f} tok/s, ratio {c['ratio']:.2f}")
    top = max(f["b"]["llamafs"])
    print(f"\nd. node resident memory: idle {f['rss_idle_mb']:.0f} MB, at {top} sessions "
          f"{f[f'rss_{top}_sessions_mb']:.0f} MB")


if __name__ == "__main__":
    main()
