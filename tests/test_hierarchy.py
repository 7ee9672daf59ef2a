"""A coordinator over coordinators, as deployed: two "datacenters", each a
`llamafs deploy start` with two nodes of its own, behind a top coordinator
that reaches them over a slow link (tests/relay.py)."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import trio

from styxfs import client

from .relay import DelayRelay
from .support import (LLAMAFS, PROMPT, deploy, greedy, node_state, run_turn, session, start_ready, stop_processes,
                      streaming_from)


def start_datacenter(name: str, model: str, tmp_path) -> tuple[subprocess.Popen, str]:
    """`llamafs deploy start` of two nodes; (process, the coordinator's address).
    Every port is the OS's choice (port 0), told back (styxfs.llama.ready)."""
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({
        "name": name, "modelPath": model, "model": {"threads": 1},
        "network": {"listen": "tcp!127.0.0.1!0", "healthCheckInterval": 300},
        "nodes": [{"id": f"{name}-a", "port": 0}, {"id": f"{name}-b", "port": 0}]}))
    return start_ready(LLAMAFS + ["deploy", "start", "--config", str(config)], tmp_path / f"{name}.log")


@pytest.fixture
def datacenters(tiny_model, tmp_path):
    started = []
    try:
        for name in ("dc-0", "dc-1"):
            started.append(start_datacenter(name, tiny_model, tmp_path))
        yield started
    finally:
        stop_processes([process for process, _ in started], signal.SIGINT, 30)  # their nodes stop with them


async def test_a_coordinator_of_coordinators_survives_a_datacenter(nursery, datacenters):
    relays = [await nursery.start(DelayRelay(address, delay=0.005).run) for _, address in datacenters]
    top = await deploy(nursery, {
        "name": "top", "network": {"loadBalancing": "round-robin", "healthCheckInterval": 300,
                                   "requestTimeout": 30000, "listen": "tcp!127.0.0.1!0"},
        "nodes": [{"id": f"dc-{i}", "address": "127.0.0.1", "port": int(r.address.rsplit("!", 1)[1])}
                  for i, r in enumerate(relays)]})
    async with client.connect(top.address) as c:
        await greedy(c, maxtokens=40)
        want, status = await run_turn(c, await session(c), PROMPT)
        assert want and status["state"] == "done" and status["node"] in ("dc-0", "dc-1")
        # nodes/ID of the top is a datacenter's own tree: its nodes are there too.
        assert {d.name for d in await c.listdir("nodes/dc-0/nodes")} == {"dc-0-a", "dc-0-b"}
        results = []

        async def one_client():
            async with client.connect(top.address) as mine:
                for _ in range(4):
                    results.append(await run_turn(mine, await session(mine), PROMPT))

        async with trio.open_nursery() as load:
            for _ in range(8):
                load.start_soon(one_client)
            await streaming_from(top, "dc-1")  # the whole datacenter dies while it answers
            datacenters[1][0].send_signal(signal.SIGKILL)
        assert len(results) == 32 and all(s["state"] == "done" and r for r, s in results), results
        assert top.sessions.failovers >= 1
        assert not any(r.count(want[:30]) > 1 for r, _ in results)  # no reply restarted
        await node_state(top, "dc-1", "down", timeout=10)
        assert "state down" in (await c.read_file("nodes/dc-1/health")).decode()
        metrics = (await c.read_file("metrics")).decode()
        assert 'llamafs_node_up{node="dc-1"} 0' in metrics and 'llamafs_node_up{node="dc-0"} 1' in metrics
        # ...and the top goes on answering through the datacenter that is left.
        _, status = await run_turn(c, await session(c), PROMPT)
        assert status["state"] == "done" and status["node"] == "dc-0"
