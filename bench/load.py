"""The load test: 200 concurrent clients x 5 prompts against a coordinator
over 3 nodes on the tiny model, loopback only, bounded in time.

    .venv/bin/python bench/load.py [--clients 200] [--prompts 5] [--kill-node] [--plan9]
    .venv/bin/python bench/load.py --one-connection 2000 [--max-sessions 16]

--plan9: the clients use the tree the Plan 9 way and never write `close`
(clone, write N/data, read N/reply, clunk), with the default caps and idle
timeout, so the coordinator and the nodes must reclaim idle sessions.
--one-connection N: N prompts in a row through one connection to a node
(`new/data`, then `reply`), the node capped at --max-sessions.

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

from bench.common import ROOT, greedy, new_session, start_coordinator_process, start_node_process, stop_process  # noqa: E402
from styxfs import client, metrics, wire  # noqa: E402
from styxfs.llama.settings import SPARES  # noqa: E402

PROMPTS = ["Once upon a time", "the king was", "water and people", "café über", "long little words"]
SETTINGS = greedy(8)


def process_figures(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_mb": round(rss, 1)}


async def metrics_of(address: str) -> dict[str, float]:
    async with client.connect(address) as c:
        text = (await c.read_file("metrics")).decode()
        ctl = (await c.read_file("ctl")).decode()
    values = {name: value for (name, labels), value in metrics.parse(text).items() if not labels}
    values["sessions"] = float(next(l.split()[1] for l in ctl.splitlines() if l.startswith("sessions ")))
    return values


async def ask(c, prompt: str) -> bytes:
    async with new_session(c, SETTINGS) as (ctl, number):
        async with await c.open(f"{number}/data", wire.ORDWR) as f:
            await f.write(prompt)
            reply = await f.read_all()
        await ctl.fid.write(b"close", 0)
    return reply


async def ask_plan9(c, prompt: str) -> bytes:
    """clone, settings, N/data, N/reply; never close: the server reclaims it."""
    async with new_session(c, SETTINGS) as (_, number):
        pass
    await c.write_file(f"{number}/data", prompt)
    return await c.read_file(f"{number}/reply")


async def one_connection_of(address: str, prompts: int) -> tuple[int, int, float]:
    """prompts in a row through new/data and reply: (whole, wrong, seconds)."""
    async with client.connect(address) as c:
        await c.write_file("ctl", b"".join(b"defaults " + line + b"\n" for line in SETTINGS.split(b"\n")))
        expected = {p: await ask(c, p) for p in PROMPTS}
        start = time.perf_counter()
        whole = wrong = 0
        for i in range(prompts):
            prompt = PROMPTS[i % len(PROMPTS)]
            await c.write_file("new/data", prompt)
            if await c.read_file("reply") == expected[prompt]:
                whole += 1
            else:
                wrong += 1
        return whole, wrong, time.perf_counter() - start


async def expected_replies(node_address: str) -> dict[str, bytes]:
    async with client.connect(node_address) as c:
        return {p: await ask(c, p) for p in PROMPTS}


async def load(address: str, clients: int, prompts: int, kill=None, way=ask) -> tuple[list, float]:
    results: list[tuple[str, bytes | Exception]] = []

    async def one_client(i: int):
        try:
            async with client.connect(address) as c:
                for k in range(prompts):
                    prompt = PROMPTS[(i + k) % len(PROMPTS)]
                    try:
                        results.append((prompt, await way(c, prompt)))
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
@click.option("--session-timeout", default=2.0, show_default=True, help="(not with --plan9: the defaults)")
@click.option("--plan9", is_flag=True, help="never write close; the default caps and idle timeout")
@click.option("--one-connection", type=int, help="N prompts through one connection to a node, then stop")
@click.option("--max-sessions", default=16, show_default=True, help="the node's cap, with --one-connection")
def main(clients, prompts, kill_node, session_timeout, plan9, one_connection, max_sessions):
    sys.path.insert(0, ROOT)
    from tests.tinymodel import write_tiny_model

    tmp = tempfile.mkdtemp(prefix="llamafs-load-")
    model = str(write_tiny_model(os.path.join(tmp, "tiny.gguf")))
    if one_connection:
        node, node_address = start_node_process(model, threads=1, slots=4, extra=["--max-sessions", str(max_sessions)])
        try:
            before = process_figures(node.pid)
            whole, wrong, seconds = trio.run(one_connection_of, node_address, one_connection)
            after = process_figures(node.pid)
            m = trio.run(metrics_of, node_address)
        finally:
            stop_process(node)
        print(f"{whole}/{one_connection} replies whole through one connection in {seconds:.1f} s, {wrong} wrong; "
              f"node: sessions {m['sessions']:g} (cap {max_sessions}), reclaimed "
              f"{m['llamafs_sessions_reclaimed_total']:g}, fds {before['fds']} -> {after['fds']}, "
              f"rss {before['rss_mb']} -> {after['rss_mb']} MB")
        sys.exit(0 if whole == one_connection else 1)
    if plan9:
        session_timeout = 600.0  # the default: sessions are reclaimed at the caps, not by time
    timeout_flag = [] if plan9 else ["--session-timeout", str(session_timeout)]
    nodes = [start_node_process(model, threads=1, slots=4, extra=timeout_flag) for _ in range(3)]
    try:
        network = {} if plan9 else {"sessionTimeout": int(session_timeout * 1000)}
        coordinator, address = start_coordinator_process(
            [a for _, a in nodes], healthCheckInterval=500, loadBalancing="least-connections",
            requestTimeout=120000, **network)
    except BaseException:
        for process, _ in nodes:
            stop_process(process)
        raise
    failed = False
    try:
        expected = trio.run(expected_replies, nodes[0][1])
        trio.run(load, address, 10, 1)  # warm up every path once
        time.sleep(2 if plan9 else session_timeout + 2)
        processes = {"coordinator": coordinator.pid} | {f"node-{i}": p.pid for i, (p, _) in enumerate(nodes)}
        before = {name: process_figures(pid) for name, pid in processes.items()}
        before_metrics = trio.run(metrics_of, address)

        def kill():
            os.kill(nodes[2][0].pid, signal.SIGKILL)
            print("killed node-2 during the load")

        results, seconds = trio.run(load, address, clients, prompts, kill if kill_node else None,
                                    ask_plan9 if plan9 else ask)
        errors = [r for r in results if isinstance(r[1], Exception)]
        exact = sum(1 for p, r in results if not isinstance(r, Exception) and r == expected[p])
        doubled = sum(1 for p, r in results if not isinstance(r, Exception) and r.count(expected[p]) > 1)
        empty = sum(1 for p, r in results if not isinstance(r, Exception) and not r)
        print(f"{len(results)} replies of {clients * prompts} in {seconds:.1f} s "
              f"({len(results) / seconds:.1f} replies/s): {exact} exactly as expected, {len(errors)} errors, "
              f"{empty} empty, {doubled} doubled")
        for e in errors[:5]:
            print("  error:", e)
        time.sleep(2 if plan9 else session_timeout + 2)
        if kill_node:
            processes.pop("node-2")
        after = {name: process_figures(pid) for name, pid in processes.items()}
        after_metrics = trio.run(metrics_of, address)
        print(f"{'process':<12} {'fds before':>10} {'after':>6} {'rss MB before':>14} {'after':>7}")
        for name in processes:
            print(f"{name:<12} {before[name]['fds']:>10} {after[name]['fds']:>6} "
                  f"{before[name]['rss_mb']:>14} {after[name]['rss_mb']:>7}")
        keys = ("sessions", "llamafs_coordinator_sessions_reclaimed_total",
                "llamafs_coordinator_node_sessions_released_total", "llamafs_fids", "llamafs_tasks", "llamafs_outstanding_requests", "llamafs_connections")
        print("coordinator " + ", ".join(f"{k.replace('llamafs_', '')} {before_metrics.get(k, 0):g}"
                                         f" -> {after_metrics.get(k, 0):g}" for k in keys))
        for i, (_, node_address) in enumerate(nodes):
            if kill_node and i == 2:
                continue
            m = trio.run(metrics_of, node_address)
            print(f"node-{i}      sessions {m['sessions']:g}, reclaimed {m['llamafs_sessions_reclaimed_total']:g}, "
                  f"fids {m['llamafs_fids']:g}, tasks {m['llamafs_tasks']:g}")
            if not plan9:  # the Plan 9 way leaves idle sessions, up to the caps, for their next turn
                failed |= m["sessions"] > SPARES  # the coordinator's spare sessions, made ahead
        failed |= bool(errors) or empty > 0 or doubled > 0 or len(results) != clients * prompts
        failed |= after_metrics["llamafs_tasks"] > before_metrics["llamafs_tasks"] + 2
        failed |= after_metrics["sessions"] > (1024 if plan9 else 0)
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
