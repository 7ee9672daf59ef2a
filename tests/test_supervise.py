"""Supervision: node processes a deployment started are started again when
they crash (coordinator/supervise.py).  The policy alone, on a clock of the
test's; then real node processes killed with SIGKILL."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from coordinator import ConfigError, DeploymentConfig, DeploymentManager
from coordinator.supervise import Backoff, wants_restart
from styxfs import client

from .support import PROMPT, node_state, run_turn, session, until_changed


# ---- the policy, no I/O --------------------------------------------------------------------


def test_the_backoff_doubles_from_one_second_to_the_cap_and_then_fails():
    b = Backoff(first=1, cap=60, reset=60)
    delays = [b.crashed(now=0) for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert b.failing


def test_the_backoff_is_first_again_after_a_minute_up_but_not_before():
    b = Backoff(first=1, cap=60, reset=60)
    assert [b.crashed(0), b.crashed(1), b.crashed(2)] == [1, 2, 4]
    b.up(10)
    assert b.crashed(69) == 8  # up 59 s: still crashing
    b.up(100)
    assert b.crashed(160) == 1 and not b.failing  # up 60 s: healthy
    b.up(200)
    b.down(210)  # up, then down by health while still running: the minute starts again
    b.up(250)
    assert b.crashed(300) == 2
    b.up(400)
    b.down(470)  # down as its process dies (the health check, or the failover, sees it first)
    assert b.crashed(471) == 1


def test_the_restart_policies():
    assert wants_restart("on-failure", -9) and wants_restart("on-failure", 1)
    assert not wants_restart("on-failure", 0)
    assert wants_restart("always", 0) and wants_restart("always", -9)
    assert not wants_restart("never", -9)
    with pytest.raises(ValueError, match="on-failure, always, never"):
        wants_restart("sometimes", 1)


def test_port_0_is_for_a_node_started_here():
    config = DeploymentConfig.from_dict({"nodes": [{"id": "a", "port": 0}, {"id": "b", "port": 0}]})
    assert [n.port for n in config.nodes] == [0, 0]
    with pytest.raises(ConfigError, match=r"nodes\[0\].port: port 0 \(a port the OS chooses\) is for a node"):
        DeploymentConfig.from_dict({"nodes": [{"id": "a", "address": "10.0.0.1", "port": 0}]})
    every = DeploymentConfig.from_dict({"network": {"basePort": 0}, "nodes": [{"id": "a"}, {"id": "b"}]})
    assert [n.port for n in every.nodes] == [0, 0]  # basePort 0: the OS's choice for each
    with pytest.raises(ConfigError, match=r"network.basePort: -1 is negative"):
        DeploymentConfig.from_dict({"network": {"basePort": -1}})


def test_network_restart_in_the_config():
    base = {"nodes": [{"id": "a", "port": 9001}]}
    assert DeploymentConfig.from_dict(base).network.restart == "on-failure"
    assert DeploymentConfig.from_dict({**base, "network": {"restart": "never"}}).network.restart == "never"
    with pytest.raises(ConfigError, match=r"network.restart: unknown value 'sometimes': use one of on-failure"):
        DeploymentConfig.from_dict({**base, "network": {"restart": "sometimes"}})


# ---- real processes --------------------------------------------------------------------------


def local_config(model: str, n: int = 2, **network) -> dict:
    """n nodes the deployment starts, each on a port the OS chooses (port 0)."""
    return {"name": "supervised", "modelPath": model,
            "network": {"healthCheckInterval": 200, "listen": "tcp!127.0.0.1!0", **network},
            "nodes": [{"id": f"node-{i}", "address": "localhost", "port": 0} for i in range(n)],
            "model": {"threads": 1}}


class Events:
    """A deployment's events, each awaitable."""

    def __init__(self, mgr: DeploymentManager, *names: str):
        self.seen: list[tuple] = []
        self.arrived = trio.Event()
        for name in names:
            mgr.on(name, lambda *args, name=name: self._add(name, *args))

    def _add(self, *event) -> None:
        self.seen.append(event)
        self.arrived.set()
        self.arrived = trio.Event()

    async def wait(self, *event, timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not any(e[:len(event)] == event for e in self.seen):
                await self.arrived.wait()


async def landed_on(c: client.Client, node_id: str, tries: int = 8) -> bool:
    for _ in range(tries):
        n = await session(c, "maxtokens 2")
        _, status = await run_turn(c, n, PROMPT)
        if status["node"] == node_id:
            return True
    return False


async def test_a_node_killed_is_restarted_on_its_port_and_takes_sessions_again(nursery, tiny_model, tmp_path):
    mgr = DeploymentManager(local_config(tiny_model), seed=1, node_log_dir=str(tmp_path))
    events = Events(mgr, "node-restarted", "node-failed")
    await mgr.deploy(nursery, timeout=120)
    handle = mgr.pool.get("node-1")
    pid, port = handle.process.pid, mgr.config.nodes[1].port
    assert port != 0 and handle.address == f"tcp!127.0.0.1!{port}"  # the port the OS chose, told back
    os.kill(pid, signal.SIGKILL)
    await events.wait("node-restarted", "node-1", 1)
    assert handle.process.pid != pid and handle.restarts == 1
    assert await handle.process.ready() == f"tcp!127.0.0.1!{port}"  # on its port again
    await node_state(mgr, "node-1", "up", timeout=60)
    assert ("node-failed", "node-1") not in [e[:2] for e in events.seen]
    assert "restarts 1\n" in handle.health_text()
    assert mgr.status()["nodes"][1]["restarts"] == 1
    async with client.connect(mgr.address) as c:
        assert await landed_on(c, "node-1")
        assert 'llamafs_node_restarts_total{node="node-1"} 1' in (await c.read_file("metrics")).decode()
    # Scaling down stops a node for good; so does shutdown.
    await mgr.scale(1)
    assert "node-1" not in mgr.processes
    await mgr.shutdown()
    assert [e for e in events.seen if e[0] == "node-restarted"] == [("node-restarted", "node-1", 1)]


async def test_a_node_that_keeps_crashing_is_failed_with_its_log_and_retried(nursery, tiny_model, tmp_path):
    mgr = DeploymentManager(local_config(tiny_model, 1), seed=1, node_log_dir=str(tmp_path))
    mgr.supervisor.backoff_options = {"first": 0.05, "cap": 0.4}  # 0.05, 0.1, 0.2, then failed at 0.4
    events = Events(mgr, "node-restarted", "node-failed")
    await mgr.deploy(nursery, timeout=120)
    node = mgr.config.nodes[0]
    handle = mgr.pool.get(node.id)
    node.contextSize = 1  # out of range: each new process stops at once, saying so
    os.kill(handle.process.pid, signal.SIGKILL)
    await events.wait("node-failed", node.id)
    why = next(e[2] for e in events.seen if e[0] == "node-failed")
    assert why.startswith("exited (status 2): ") and "--ctx" in why, why
    assert handle.condition == "failed" and "state failed\n" in handle.health_text()
    assert f"error {why}\n" in handle.health_text()
    assert mgr.status()["nodes"][0]["state"] == "failed"
    retried = handle.restarts
    node.contextSize = None
    await events.wait("node-restarted", node.id, retried + 1)  # retried at the cap, and now it can listen
    await node_state(mgr, node.id, "up", timeout=60)
    assert handle.condition == "up" and not handle.crashed


async def test_restart_never_leaves_a_killed_node_down(nursery, tiny_model, tmp_path, caplog):
    mgr = DeploymentManager(local_config(tiny_model, 1, restart="never"), seed=1)
    await mgr.deploy(nursery, timeout=120)
    handle = mgr.pool.get("node-0")
    process = handle.process
    os.kill(process.pid, signal.SIGKILL)
    await until_changed(mgr, lambda: process.returncode is not None and handle.state == "down", "node-0 down")
    # The decision is made as the exit is seen (no restart pending), and logged.
    assert mgr.processes["node-0"] is process and handle.restarts == 0
    assert "node node-0 exited (status -9); network.restart is never: left down" in caplog.text
