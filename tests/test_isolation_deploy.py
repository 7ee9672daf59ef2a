"""The "dis" isolation mode through the deployment manager (needs emu)."""

from __future__ import annotations

import trio

from coordinator import DeploymentManager
from styxfs import client

from .inferno import requires_emu
from .support import node_state, run_turn, session, streaming_from


@requires_emu
async def test_dis_isolation_end_to_end_and_an_isolate_killed_under_load(nursery, tiny_model):
    config = {"name": "isolated", "isolation": "dis", "modelPath": tiny_model,  # every port the OS's choice
              "network": {"healthCheckInterval": 300, "listen": "tcp!127.0.0.1!0"},
              "nodes": [{"id": "node-0", "port": 0}, {"id": "node-1", "port": 0}],
              "model": {"threads": 1, "contextSize": 512}}
    errors = []
    mgr = DeploymentManager(config)
    mgr.on("error", errors.append)
    restarted = trio.Event()
    mgr.on("node-restarted", lambda node_id, count: restarted.set())
    await mgr.deploy(nursery, timeout=120)
    assert set(mgr.isolates) == {"node-0", "node-1"}
    assert all(node.port and mgr.isolates[node.id].port == node.port for node in mgr.config.nodes)
    async with client.connect(mgr.address) as c:
        used = [(await run_turn(c, await session(c, "maxtokens 4"), "Once upon a time"))[1]["node"]
                for _ in range(2)]
        assert used == ["node-0", "node-1"]
        # The isolate answers for its node: nodes/ID is the node's tree, through emu.
        assert "state loaded" in (await c.read_file("nodes/node-1/ctl")).decode()
        results = []

        async def one():
            for _ in range(3):
                results.append(await run_turn(c, await session(c, "maxtokens 6"), "the king was"))

        failovers = mgr.sessions.failovers
        async with trio.open_nursery() as load:
            for _ in range(6):
                load.start_soon(one)
            await streaming_from(mgr, "node-1")  # killed while a reply streams through it
            killed = mgr.isolates["node-1"]
            killed.kill()
        assert len(results) == 18 and all(status["state"] == "done" for _, status in results)
        assert mgr.sessions.failovers > failovers
        # Its death is reported, and the node started again behind a new isolate, on its port.
        with trio.fail_after(60):
            await restarted.wait()
        assert any("isolate of node node-1 died" in str(e) for e in errors)
        assert mgr.isolates["node-1"] is not killed and mgr.isolates["node-1"].port == killed.port
        await node_state(mgr, "node-1", "up", timeout=60)
        used = [(await run_turn(c, await session(c, "maxtokens 2"), "Once upon a time"))[1]["node"] for _ in range(4)]
        assert "node-1" in used
    await mgr.shutdown()

