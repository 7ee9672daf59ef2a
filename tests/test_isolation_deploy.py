"""The "dis" isolation mode through the deployment manager (needs emu)."""

from __future__ import annotations

import trio

from coordinator import DeploymentManager
from styxfs import client
from styxfs.dial import free_port

from .inferno import requires_emu
from .support import run_turn, session, streaming_from, wait_until


@requires_emu
async def test_dis_isolation_end_to_end_and_an_isolate_killed_under_load(nursery, tiny_model):
    base = free_port()
    config = {"name": "isolated", "isolation": "dis", "modelPath": tiny_model,
              "network": {"basePort": base, "healthCheckInterval": 300, "listen": "tcp!127.0.0.1!0"},
              "nodes": [{"id": "node-0", "port": base}, {"id": "node-1", "port": base + 1}],
              "model": {"threads": 1, "contextSize": 512}}
    errors = []
    mgr = DeploymentManager(config)
    mgr.on("error", errors.append)
    await mgr.deploy(nursery, timeout=120)
    assert set(mgr.isolates) == {"node-0", "node-1"}
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
            mgr.isolates["node-1"].kill()
        assert len(results) == 18 and all(status["state"] == "done" for _, status in results)
        assert mgr.sessions.failovers > failovers
    # The health check and the isolate's watcher each notice the death, in either order.
    await wait_until(lambda: mgr.pool.get("node-1").state == "down" and errors,
                     "node-1 down and the isolate's death reported")
    assert any("isolate of node node-1 died" in str(e) for e in errors)
    await mgr.shutdown()

