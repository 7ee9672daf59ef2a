"""What runs in the worker process: atheris (libFuzzer) or the plain
mutation loop over a target; and repro.  Imported only once atheris, if it
is the engine, instruments styxfs's imports (cli.load_engines)."""

from __future__ import annotations

import ctypes
import os
import random
import sys
import tempfile
import time
import traceback

from . import mutate
from .inputs import seeds_for
from .runner import Runner


def run_random(runner: Runner, seconds: float, seed: int, runs: int = 0, max_len: int = 4096) -> None:
    rng = random.Random(seed)
    corpus = seeds_for(runner.target)
    deadline = time.monotonic() + seconds
    for s in corpus:
        runner(s)
    n, last_stats = 0, time.monotonic()
    while time.monotonic() < deadline and (not runs or n < runs):
        parent = rng.choice(corpus)
        if runner.target == "server":
            runner(mutate.mutate_server(parent, max_len, rng.getrandbits(32)))
        else:
            runner(mutate.mutate_bytes(rng, parent, corpus, max_len))
        n += 1
        if time.monotonic() - last_stats > 2:
            runner.write_stats()
            last_stats = time.monotonic()
    runner.write_stats()


def run_atheris(runner: Runner, args, corpus_dir: str) -> None:
    import atheris

    last = [time.monotonic()]

    def one(data: bytes) -> None:
        runner(data)
        if time.monotonic() - last[0] > 2:
            runner.write_stats()
            last[0] = time.monotonic()

    # libFuzzer ends the process with exit(): write the stats from a C atexit handler.
    at_exit = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: runner.write_stats())
    runner._at_exit = at_exit  # keep it alive
    ctypes.CDLL(None).__cxa_atexit(at_exit, None, None)
    os.makedirs(runner.findings_dir, exist_ok=True)
    argv = [sys.argv[0], corpus_dir, f"-max_total_time={int(args.seconds)}", "-print_final_stats=1",
            f"-timeout={int(args.timeout) + 5}", f"-rss_limit_mb={args.rss_limit_mb}", f"-max_len={args.max_len}",
            f"-artifact_prefix={runner.findings_dir}/{runner.target}-", f"-seed={args.seed}"]
    if args.runs:
        argv.append(f"-runs={args.runs}")
    if runner.target == "server":
        argv.append("-len_control=0")  # the mutator makes long frames on purpose
        atheris.Setup(argv, one, custom_mutator=lambda data, max_size, seed: mutate.mutate_server(data, max_size, seed, atheris.Mutate))
    else:
        atheris.Setup(argv, one)
    atheris.Fuzz()


def work(args) -> None:
    """The worker: fuzz one target with one engine, its stats to args.stats."""
    runner = Runner(args.target, args.findings, args.timeout, args.stop_on_finding)
    runner.stats_path = args.stats
    runner.stats["engine"] = args.engine
    if args.engine != "atheris":
        run_random(runner, args.seconds, args.seed, args.runs, args.max_len)
        return
    corpus_dir = args.corpus or tempfile.mkdtemp(prefix=f"styxfs-fuzz-{args.target}-")
    os.makedirs(corpus_dir, exist_ok=True)
    for i, seed in enumerate(seeds_for(args.target)):
        path = os.path.join(corpus_dir, f"seed-{i:03d}")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(seed)
    run_atheris(runner, args, corpus_dir)


def repro(target: str, paths: list[str], times: int = 10) -> int:
    """Each input again, `times` times (its tasks' interleaving may differ)."""
    runner = Runner(target, findings_dir=tempfile.mkdtemp(prefix="styxfs-repro-"), quiet=True)
    bad = 0
    try:
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            try:
                for _ in range(times):
                    runner.run_one(data)
                print(f"{path}: ok ({times} times)")
            except Exception as e:
                bad += 1
                print(f"{path}: {''.join(traceback.format_exception(e))}")
    finally:
        runner.close()
    return 1 if bad else 0
