"""Faults: killed nodes under load, vanished clients, a restarted coordinator,
a node without its model.  (SIGSTOP and a node killed mid-reply are in
test_coordinator.py.)"""

from __future__ import annotations

import signal

import pytest
import trio

from coordinator import DeploymentManager
from styxfs import client, wire

from .fakemodel import StepGate
from .support import (config_for, deploy, run_turn, session, start_node_process, stop_process, streaming_from,
                      wait_until)

PROMPTS = ["Once upon a time", "the king was", "water and people"]
GREEDY = ("temperature 0", "repeatpenalty 1", "maxtokens 8")


async def test_node_killed_during_load_every_request_completes_once(nursery, nodes):
    mgr = await deploy(nursery, config_for(nodes))
    async with client.connect(nodes[0][2]) as direct:
        expected = {p: (await run_turn(direct, await session(direct, *GREEDY), p))[0] for p in PROMPTS}
    results = []

    async def one_client(i):
        async with client.connect(mgr.address) as c:
            for k in range(4):
                prompt = PROMPTS[(i + k) % 3]
                results.append((prompt, *(await run_turn(c, await session(c, *GREEDY), prompt))))

    async with trio.open_nursery() as load:
        for i in range(30):
            load.start_soon(one_client, i)
        await streaming_from(mgr, "node-1")  # killed while a reply streams from it
        nodes[1][1].send_signal(signal.SIGKILL)
    assert len(results) == 120
    assert mgr.sessions.failovers >= 1  # what ran on node-1 moved
    assert all(status["state"] == "done" for _, _, status in results)
    assert all(reply for _, reply, _ in results)
    assert not any(reply.count(expected[p]) > 1 for p, reply, _ in results)  # none twice
    exact = sum(reply == expected[p] for p, reply, _ in results)
    assert exact >= 100, exact  # the rest moved mid-reply, re-tokenised on another node
    assert mgr.pool.get("node-1").state == "down"


async def test_client_that_vanishes_mid_generation_frees_its_slot(start_fake_node):
    gate = StepGate()
    address, node = await start_fake_node(gate=gate, slots=2)
    c_stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit("!", 1)[1]))
    c = client.Client(c_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c._reader)
        await c.version()
        await c.attach("glenda")
        f = await c.open("new/data", wire.ORDWR)
        await f.write("Once upon a time")
        gate.allow(3)
        assert await f.read()  # it is generating
        c.stop()
    await c_stream.aclose()  # gone, without a clunk
    [session_] = node.tree.table.sessions.values()
    await wait_until(lambda: not node.server.connections, "the node to let go of the vanished client", timeout=5)
    gate.open()  # the generation would run on, were it not cancelled
    with trio.fail_after(5):
        await session_.reply.wait()
    assert not node.engine.generating()
    assert session_.reply.state == "cancelled" and session_.reply.tokens_out < 50
    assert node.server.fid_count() == 0


async def test_coordinator_restarted_reconnects(nursery, fake_nodes):
    first = await deploy(nursery, config_for(fake_nodes))
    assert (await first.evaluate("Once upon a time", maxtokens=4)).strip()
    await first.shutdown()  # the nodes were not started by it: they keep running
    assert all(process.poll() is None for _, process, _ in fake_nodes)
    second = await deploy(nursery, config_for(fake_nodes))
    assert (await second.evaluate("Once upon a time", maxtokens=4)).strip()
    assert len(second.pool.healthy()) == 3


async def test_node_without_its_model_reports_it_and_gets_no_traffic(nursery, fake_nodes, tmp_path):
    process, address = start_node_process(str(tmp_path / "missing.gguf"), threads=1, extra=["--no-model"])
    try:
        async with client.connect(address) as c:
            with pytest.raises(client.ServerError, match="no such model file: missing.gguf"):
                await c.write_file("ctl", "load missing.gguf")
            ctl = (await c.read_file("ctl")).decode()
            assert "state unloaded" in ctl and "error no such model file: missing.gguf" in ctl
        mgr = DeploymentManager({**config_for(fake_nodes[:2]), "nodes": config_for(fake_nodes[:2])["nodes"] + [
            {"id": "empty", "address": "127.0.0.1", "port": int(address.rsplit("!", 1)[1])}]}, seed=1)
        async with trio.open_nursery() as n:
            with pytest.raises(RuntimeError, match=r"empty \(model not loaded: no such model file"):
                await mgr.deploy(n, timeout=3)  # all nodes must come up: this one never does
        mgr = DeploymentManager(config_for(fake_nodes[:2]), seed=1)
        await mgr.deploy(nursery, timeout=30)
        async with client.connect(mgr.address) as c:
            await c.write_file("ctl", f"add empty {address}")

            async def checked() -> bool:  # no event: the node is down from the start
                return "model not loaded" in (await c.read_file("nodes/empty/health")).decode()

            await wait_until(checked, "the empty node's health check", timeout=10, interval=0.05)
            health = (await c.read_file("nodes/empty/health")).decode()
            assert "state down" in health and "no such model file" in health
            for _ in range(6):
                _, status = await run_turn(c, await session(c, "maxtokens 2"), "Once upon a time")
                assert status["node"] != "empty"
    finally:
        stop_process(process)



def test_serve_with_a_model_that_is_not_there_stops_with_the_reason(tmp_path):
    import subprocess

    from .support import LLAMAFS, ROOT

    done = subprocess.run(LLAMAFS + ["serve", "--model", str(tmp_path / "no.gguf"), "--listen", "tcp!127.0.0.1!0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "model not loaded: no such model file: no.gguf" in done.stderr
