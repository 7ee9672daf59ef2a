"""The load test: 200 concurrent clients x 5 prompts against a coordinator
over 3 nodes on the tiny model, loopback only, bounded in time.

    .venv/bin/python bench/load.py [--clients 200] [--prompts 5] [--kill-node]

Every reply must arrive whole and once (greedy replies, checked against the
reply a node gives alone).  Afterwards the coordinator and the nodes must
hold no sessions past their timeout, no fids but the coordinator's own, no
extra tasks, and their open files and resident memory must be back near
where they started: both are printed, before and after.  --kill-node kills
one node with SIGKILL in the middle of the load (every request must still
complete).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import click
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, start_coordinator_process, start_node_process, stop_process  # noqa: E402
from coordinator.forwarding import SPARES  # noqa: E402
from styxfs import client, wire  # noqa: E402

PROMPTS = ["Once upon a time", "the king was", "water and people", "café über", "long little words"]
SETTINGS = b"temperature 0\nrepeatpenalty 1\nmaxtokens 8"


def process_figures(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_mb": round(rss, 1)}


async def metrics_of(address: str) -> dict[str, float]:
    async with client.connect(address) as c:
        text = (await c.read_file("metrics")).decode()
        ctl = (await c.read_file("ctl")).decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    values["sessions"] = float(next(l.split()[1] for l in ctl.splitlines() if l.startswith("sessions ")))
    return values


async def ask(c, prompt: str) -> bytes:
    async with await c.open("clone", wire.ORDWR) as ctl:
        number = (await ctl.read()).decode().strip()
        await ctl.fid.write(SETTINGS, 0)
        async with await c.open(f"{number}/data", wire.ORDWR) as f:
            await f.write(prompt)
            reply = await f.read_all()
        await ctl.fid.write(b"close", 0)
    return reply


async def expected_replies(node_address: str) -> dict[str, bytes]:
    async with client.connect(node_address) as c:
        return {p: await ask(c, p) for p in PROMPTS}


async def load(address: str, clients: int, prompts: int, kill=None) -> tuple[list, float]:
    results: list[tuple[str, bytes | Exception]] = []

    async def one_client(i: int):
        try:
            async with client.connect(address) as c:
                for k in range(prompts):
                    prompt = PROMPTS[(i + k) % len(PROMPTS)]
                    try:
                        results.append((prompt, await ask(c, prompt)))
                    except client.ServerError as e:
                        results.append((prompt, e))
        except client.Error as e:
            results.append(("connect", e))

    start = time.perf_counter()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(one_client, i)
            if kill is not None:
                await trio.sleep(1.0)
                kill()
    return results, time.perf_counter() - start


@click.command()
@click.option("--clients", default=200, show_default=True)
@click.option("--prompts", default=5, show_default=True)
@click.option("--kill-node", is_flag=True, help="SIGKILL one node in the middle of the load")
@click.option("--session-timeout", default=2.0, show_default=True)
def main(clients, prompts, kill_node, session_timeout):
    sys.path.insert(0, ROOT)
    from tests.tinymodel import write_tiny_model

    tmp = tempfile.mkdtemp(prefix="llamafs-load-")
    model = str(write_tiny_model(os.path.join(tmp, "tiny.gguf")))
    timeout_flag = ["--session-timeout", str(session_timeout)]
    nodes = [start_node_process(model, threads=1, slots=4, extra=timeout_flag) for _ in range(3)]
    try:
        coordinator, address = start_coordinator_process(
            [a for _, a in nodes], healthCheckInterval=500, sessionTimeout=int(session_timeout * 1000),
            loadBalancing="least-connections", requestTimeout=120000)
    except BaseException:
        for process, _ in nodes:
            stop_process(process)
        raise
    failed = False
    try:
        expected = trio.run(expected_replies, nodes[0][1])
        trio.run(load, address, 10, 1)  # warm up every path once
        time.sleep(session_timeout + 2)
        processes = {"coordinator": coordinator.pid} | {f"node-{i}": p.pid for i, (p, _) in enumerate(nodes)}
        before = {name: process_figures(pid) for name, pid in processes.items()}
        before_metrics = trio.run(metrics_of, address)

        def kill():
            os.kill(nodes[2][0].pid, signal.SIGKILL)
            print("killed node-2 during the load")

        results, seconds = trio.run(load, address, clients, prompts, kill if kill_node else None)
        errors = [r for r in results if isinstance(r[1], Exception)]
        exact = sum(1 for p, r in results if not isinstance(r, Exception) and r == expected[p])
        doubled = sum(1 for p, r in results if not isinstance(r, Exception) and r.count(expected[p]) > 1)
        empty = sum(1 for p, r in results if not isinstance(r, Exception) and not r)
        print(f"{len(results)} replies of {clients * prompts} in {seconds:.1f} s "
              f"({len(results) / seconds:.1f} replies/s): {exact} exactly as expected, {len(errors)} errors, "
              f"{empty} empty, {doubled} doubled")
        for e in errors[:5]:
            print("  error:", e)
        time.sleep(session_timeout + 2)
        if kill_node:
            processes.pop("node-2")
        after = {name: process_figures(pid) for name, pid in processes.items()}
        after_metrics = trio.run(metrics_of, address)
        print(f"{'process':<12} {'fds before':>10} {'after':>6} {'rss MB before':>14} {'after':>7}")
        for name in processes:
            print(f"{name:<12} {before[name]['fds']:>10} {after[name]['fds']:>6} "
                  f"{before[name]['rss_mb']:>14} {after[name]['rss_mb']:>7}")
        keys = ("sessions", "llamafs_fids", "llamafs_tasks", "llamafs_outstanding_requests", "llamafs_connections")
        print("coordinator " + ", ".join(f"{k.replace('llamafs_', '')} {before_metrics.get(k, 0):g}"
                                         f" -> {after_metrics.get(k, 0):g}" for k in keys))
        for i, (_, node_address) in enumerate(nodes):
            if kill_node and i == 2:
                continue
            m = trio.run(metrics_of, node_address)
            print(f"node-{i}      sessions {m['sessions']:g}, fids {m['llamafs_fids']:g}, tasks {m['llamafs_tasks']:g}")
            failed |= m["sessions"] > SPARES  # the coordinator's spare sessions, made ahead
        failed |= bool(errors) or empty > 0 or doubled > 0 or len(results) != clients * prompts
        failed |= after_metrics["sessions"] > 0 or after_metrics["llamafs_tasks"] > before_metrics["llamafs_tasks"] + 2
        if not kill_node:
            failed |= exact != clients * prompts
        print("FAILED" if failed else "ok: every reply arrived, whole and once; nothing left behind")
    finally:
        coordinator.send_signal(signal.SIGINT)
        try:
            coordinator.wait(30)
        except subprocess.TimeoutExpired:
            coordinator.kill()
        for process, _ in nodes:
            stop_process(process)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
