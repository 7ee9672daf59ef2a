"""The command line, and the parent: a worker process per target, watched
(RSS, time), its libFuzzer log and stats read into one result."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from . import FINDINGS_DIR, ROOT, TARGETS
from . import __doc__ as OVERVIEW


def load_engines(instrument: bool):
    """bench.fuzz.engines, and with it styxfs: under atheris inside
    instrument_imports, so that libFuzzer sees styxfs's coverage."""
    if not instrument:
        from . import engines

        return engines
    import atheris

    with atheris.instrument_imports(include=["styxfs"]):
        from . import engines
    return engines


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _watch(cmd: list[str], log_path: str, limit: float):
    """Run the worker; (its exit code, its rusage, RSS samples, whether it was killed)."""
    start = time.monotonic()
    samples: list[tuple[float, float]] = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        killed = False
        while True:  # wait4 rather than poll(): the child's own peak RSS comes with it
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status), usage, samples, killed, time.monotonic() - start
            time.sleep(0.25)
            rss = _rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.monotonic() - start, rss))
            if not killed and time.monotonic() - start > limit:
                proc.kill()
                killed = True


def _growth(samples: list[tuple[float, float]]) -> float:
    """Whether the last fifth of the run sits well above the second fifth
    (medians: one input may allocate much and free it, a leak stays)."""
    if len(samples) < 10:
        return 0.0
    total = samples[-1][0]
    early = [r for t, r in samples if total * 0.2 <= t < total * 0.4]
    late = [r for t, r in samples if t >= total * 0.8]
    return statistics.median(late) - statistics.median(early) if early and late else 0.0


def run_target(target: str, args) -> dict:
    engine = args.engine if args.engine != "auto" else ("atheris" if have_atheris() else "random")
    fd, stats_path = tempfile.mkstemp(prefix=f"styxfs-fuzz-{target}-", suffix=".json")
    os.close(fd)
    os.unlink(stats_path)
    cmd = [sys.executable, "-m", "bench.fuzz", "_worker", target, "--engine", engine,
           "--seconds", str(args.seconds), "--stats", stats_path, "--findings", args.findings,
           "--timeout", str(args.timeout), "--rss-limit-mb", str(args.rss_limit_mb),
           "--max-len", str(args.max_len or (70000 if target == "server" else 4096)), "--seed", str(args.seed), "--runs", str(args.runs)]
    if args.corpus:
        cmd += ["--corpus", os.path.join(args.corpus, target)]
    if args.stop_on_finding:
        cmd.append("--stop-on-finding")
    log_path = stats_path[:-5] + ".log"
    before = set(os.listdir(args.findings)) if os.path.isdir(args.findings) else set()
    limit = (args.seconds if not args.runs else 3600) + args.timeout + 60
    returncode, usage, samples, killed, elapsed = _watch(cmd, log_path, limit)
    with open(log_path, errors="replace") as f:
        log_text = f.read()
    try:
        with open(stats_path) as f:
            stats = json.load(f)
        os.unlink(stats_path)
    except (OSError, ValueError):
        stats = {"cases": 0, "findings": {}, "kinds": {}}
    findings = dict(stats.get("findings", {}))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log_text)
    corp = re.findall(r"corp: (\d+)/", log_text)
    done = re.search(r"stat::number_of_executed_units: (\d+)", log_text)
    cases = int(done.group(1)) if done else stats.get("cases", 0)
    run_seconds = stats.get("elapsed") or elapsed
    # libFuzzer's own verdicts: timeout, out of memory, a crash it caught.
    for kind, pattern in (("libFuzzer timeout", r"ERROR: libFuzzer: timeout"), ("libFuzzer out of memory", r"ERROR: libFuzzer: out-of-memory"),
                          ("libFuzzer: deadly signal", r"ERROR: libFuzzer: deadly signal"), ("uncaught Python exception", r"Uncaught Python exception")):
        if re.search(pattern, log_text):
            findings.setdefault(kind, {"count": 1, "files": []})
    if killed:
        findings.setdefault("worker overran its time and was killed", {"count": 1, "files": []})
    if returncode != 0 and not findings:
        findings["worker exited with status %d" % returncode] = {"count": 1, "files": []}
    if os.path.isdir(args.findings):
        for name in sorted(set(os.listdir(args.findings)) - before):
            if re.match(rf"{target}-(crash|timeout|oom|leak|slow-unit)-", name):
                findings.setdefault(f"libFuzzer artifact {name.split('-')[1]}", {"count": 1, "files": []})["files"].append(os.path.join(args.findings, name))
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    growth = _growth(samples)
    if growth > args.max_growth_mb:
        findings.setdefault("memory grows", {"count": 1, "files": [], "detail": f"{growth:.0f} MB over the run"})
    if peak > args.rss_limit_mb:
        findings.setdefault("memory over the limit", {"count": 1, "files": [], "detail": f"peak {peak:.0f} MB"})
    result = {
        "target": target, "engine": engine, "cases": cases, "seconds": round(run_seconds, 1),
        "cases_per_second": round(cases / run_seconds, 1) if run_seconds else 0.0,
        "cov": int(cov[-1][0]) if cov else None, "ft": int(cov[-1][1]) if cov else None,
        "corpus": int(corp[-1]) if corp else None, "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(growth, 1),
        "reply_kinds" if target == "server" else "message_kinds": stats.get("kinds", {}),
        "findings": findings, "returncode": returncode, "log": log_path,
    }
    if not findings and returncode == 0 and not args.keep_log:
        os.unlink(log_path)
        result["log"] = None
    return result


def print_result(r: dict) -> None:
    cov = f"cov {r['cov']} ft {r['ft']} corpus {r['corpus']}" if r["cov"] is not None else "coverage n/a (not atheris)"
    print(f"{r['target']:8} {r['engine']:8} cases {r['cases']:>9}  {r['cases_per_second']:>9.1f}/s  {cov}  "
          f"peak RSS {r['peak_rss_mb']:.0f} MB (growth {r['rss_growth_mb']:+.0f} MB)  findings {len(r['findings'])}")
    kinds = r.get("reply_kinds") or r.get("message_kinds") or {}
    if kinds:
        print("         seen: " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    for signature, entry in r["findings"].items():
        files = " ".join(entry.get("files", [])) or entry.get("detail", "")
        print(f"   FINDING {signature} (x{entry['count']}) {files}")
    if r["log"]:
        print(f"         worker log: {r['log']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=OVERVIEW.split("\n\n")[0])
    p.add_argument("target", choices=TARGETS + ("all", "repro", "_worker"))
    p.add_argument("rest", nargs="*", help="repro: TARGET FILE...; _worker: TARGET")
    p.add_argument("--seconds", type=float, default=60, help="per target")
    p.add_argument("--runs", type=int, default=0, help="stop after this many inputs (0: no limit)")
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--seed", type=int, default=0, help="libFuzzer's -seed / the random engine's (0: libFuzzer picks)")
    p.add_argument("--corpus", help="keep the corpus in DIR/<target> (default: a fresh temporary one, from the seeds)")
    p.add_argument("--findings", default=FINDINGS_DIR)
    p.add_argument("--timeout", type=float, default=10.0, help="real seconds one input may take")
    p.add_argument("--rss-limit-mb", type=int, default=1024)
    p.add_argument("--max-growth-mb", type=float, default=64.0)
    p.add_argument("--max-len", type=int, help="longest input (default: decoder 4096, server 70000, room for a 64 KiB frame)")
    p.add_argument("--times", type=int, default=10, help="repro: run each input this many times")
    p.add_argument("--stop-on-finding", action="store_true")
    p.add_argument("--keep-log", action="store_true")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--stats", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.target == "_worker":
        args.target = args.rest[0]
        load_engines(args.engine == "atheris").work(args)
        return 0
    if args.target == "repro":
        return load_engines(False).repro(args.rest[0], args.rest[1:], args.times)
    results = [run_target(t, args) for t in (TARGETS if args.target == "all" else (args.target,))]
    for r in results:
        print_result(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["findings"] for r in results) else 0
