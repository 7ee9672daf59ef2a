"""Nodes on other machines, across a real network: network namespaces
joined by veth pairs (tests/netns.py), the coordinator in the hub, each
node on a machine of its own.  A link that drops or a node that hangs does
not refuse as a dead process on 127.0.0.1 does: only timeouts tell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import trio

from styxfs import client

from . import netns
from .support import (LLAMAFS, NODE, PROMPT, check_went_on, deploy, lose_mid_reply, node_state, run_turn, session,
                      start_ready, status_fields, stop_processes)

INTERVAL, HEALTH_TIMEOUT, CONNECT_TIMEOUT = 0.3, 1.0, 1.0
GRACE = 3.0  # for the scheduling of two busy cores (a whole suite beside): not part of what is promised


@pytest.fixture
def network():
    why = netns.unavailable()
    if why:
        pytest.skip(f"no network namespaces: {why}")
    net = netns.Network()
    try:
        net.enter_hub()
        yield net
    finally:
        net.close()


def start_node(net: netns.Network, model: str, tmp_path) -> tuple[subprocess.Popen, str]:
    """A node on a machine of its own, serving on its address; once it says it does."""
    address = net.add_machine()
    command = NODE + ["--model", model, "--listen", f"tcp!{address}!5640", "--threads", "1"]
    return start_ready(net.on(len(net.machines) - 1, command), tmp_path / f"{address}.log")


@pytest.fixture
def machines(network, tiny_model, tmp_path):
    """Three nodes on three machines: [(process, address)]."""
    started = []
    try:
        for _ in range(3):
            started.append(start_node(network, tiny_model, tmp_path))
        yield started
    finally:
        stop_processes([process for process, _ in started])


def config(machines) -> dict:
    return {"name": "wide", "network": {
        "loadBalancing": "round-robin", "healthCheckInterval": int(INTERVAL * 1000),
        "healthTimeout": int(HEALTH_TIMEOUT * 1000), "connectTimeout": int(CONNECT_TIMEOUT * 1000),
        "requestTimeout": 30000, "listen": "tcp!127.0.0.1!0"},
        "nodes": [{"id": f"node-{i}", "address": address.split("!")[1], "port": 5640}
                  for i, (_, address) in enumerate(machines)]}


async def lose_node_1_mid_reply(mgr, lose, bound: float) -> None:
    """A long reply streaming from node-1; then lose() it: it is marked down
    within bound seconds, the reply goes on on another node, and new
    sessions go elsewhere."""
    marked: list[float] = []

    async def marked_down(lost: float) -> None:
        await node_state(mgr, "node-1", "down", timeout=bound)
        marked.append(time.monotonic() - lost)

    async with client.connect(mgr.address) as c, trio.open_nursery() as watch:
        failovers = mgr.sessions.failovers
        whole, got, n, before = await lose_mid_reply(
            c, mgr, lambda: (lose(), watch.start_soon(marked_down, time.monotonic())))
        check_went_on(whole, got, before, status_fields(await c.read_file(f"{n}/status")))
        assert mgr.sessions.failovers == failovers + 1
        for _ in range(4):
            _, status = await run_turn(c, await session(c, "maxtokens 2"), PROMPT)
            assert status["state"] == "done" and status["node"] != "node-1"
        assert "state down" in (await c.read_file("nodes/node-1/health")).decode()
    assert marked and marked[0] <= bound, marked


async def sessions_reach(mgr, node_id: str) -> None:
    async with client.connect(mgr.address) as c:
        seen = set()
        for _ in range(6):
            _, status = await run_turn(c, await session(c, "maxtokens 2"), PROMPT)
            seen.add(status["node"])
        assert node_id in seen, seen


async def test_a_link_that_drops_fails_over_and_the_node_rejoins_when_it_is_back(nursery, network, machines):
    mgr = await deploy(nursery, config(machines))
    await lose_node_1_mid_reply(mgr, lambda: network.link(1, up=False), INTERVAL + HEALTH_TIMEOUT + GRACE)
    network.link(1, up=True)
    await node_state(mgr, "node-1", "up", timeout=INTERVAL + CONNECT_TIMEOUT * 3 + HEALTH_TIMEOUT + GRACE)
    await sessions_reach(mgr, "node-1")


async def test_a_node_that_accepts_but_never_answers_is_treated_the_same(nursery, network, machines):
    mgr = await deploy(nursery, config(machines))
    process = machines[1][0]
    try:
        await lose_node_1_mid_reply(mgr, lambda: os.kill(process.pid, signal.SIGSTOP),
                                    INTERVAL + HEALTH_TIMEOUT + GRACE)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    await node_state(mgr, "node-1", "up", timeout=INTERVAL + CONNECT_TIMEOUT * 3 + HEALTH_TIMEOUT + GRACE)
    await sessions_reach(mgr, "node-1")


@pytest.fixture
def datacenters(network, tiny_model, tmp_path):
    """Two datacenters, each a machine running `llamafs deploy start` of two
    nodes of its own: [(process, the coordinator's address)]."""
    started = []
    try:
        for d in range(2):
            address = network.add_machine()
            path = tmp_path / f"dc-{d}.json"
            path.write_text(json.dumps({
                "name": f"dc-{d}", "modelPath": tiny_model, "model": {"threads": 1},
                "network": {"listen": f"tcp!{address}!5640", "healthCheckInterval": 300},
                "nodes": [{"id": f"dc-{d}-a", "port": 0}, {"id": f"dc-{d}-b", "port": 0}]}))
            command = network.on(d, LLAMAFS + ["deploy", "start", "--config", str(path)])
            started.append(start_ready(command, tmp_path / f"dc-{d}.log"))
        yield started
    finally:
        stop_processes([process for process, _ in started], signal.SIGINT, 30)  # their nodes stop with them


async def test_a_coordinator_over_two_datacenters_survives_losing_ones_link(nursery, network, datacenters):
    mgr = await deploy(nursery, {"name": "top", "network": {
        "healthCheckInterval": int(INTERVAL * 1000), "healthTimeout": int(HEALTH_TIMEOUT * 1000),
        "connectTimeout": int(CONNECT_TIMEOUT * 1000), "requestTimeout": 30000, "listen": "tcp!127.0.0.1!0"},
        "nodes": [{"id": f"dc-{d}", "address": address.split("!")[1], "port": 5640}
                  for d, (_, address) in enumerate(datacenters)]})
    async with client.connect(mgr.address) as c:
        assert {d.name for d in await c.listdir("nodes/dc-1/nodes")} == {"dc-1-a", "dc-1-b"}
        network.link(1, up=False)
        await node_state(mgr, "dc-1", "down", timeout=INTERVAL + HEALTH_TIMEOUT + GRACE)
        for _ in range(4):  # the top goes on answering through the datacenter that is left
            _, status = await run_turn(c, await session(c, "maxtokens 4"), PROMPT)
            assert status["state"] == "done" and status["node"] == "dc-0"
        network.link(1, up=True)
        await node_state(mgr, "dc-1", "up", timeout=INTERVAL + CONNECT_TIMEOUT * 3 + HEALTH_TIMEOUT + GRACE)
        assert {d.name for d in await c.listdir("nodes/dc-1/nodes")} == {"dc-1-a", "dc-1-b"}
