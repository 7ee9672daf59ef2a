"""The coordinator over node processes: on the fake model (tests/fakemodel.py)
where a test looks at the coordinator alone, on the tiny model where it looks
at what llama.cpp makes (the KV cache, a model file) or needs its pace."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess

import pytest
import trio

from coordinator import ConfigError, DeploymentConfig, DeploymentManager, LimboDeploymentManager
from styxfs import client, wire
from styxfs.dial import port_bindable

from .ports import reserved_ports
from .support import (LLAMAFS, PROMPT, ROOT, ask, check_went_on, config_for, deploy, greedy, lose_mid_reply,
                      node_state, prompt_tokens, run_turn, session, spawn_ready, start_node_process, start_ready,
                      status_fields, stop_process, until_changed, wait_until)

async def test_round_robin_order_and_affinity(nursery, fake_nodes):
    mgr = await deploy(nursery, config_for(fake_nodes))
    async with client.connect(mgr.address) as c:
        used = []
        numbers = []
        for _ in range(6):
            n = await session(c, "maxtokens 4")
            numbers.append(n)
            _, status = await run_turn(c, n, PROMPT)
            used.append(status["node"])
        assert used == ["node-0", "node-1", "node-2"] * 2
        # Later turns stay on the session's node.
        _, status = await run_turn(c, numbers[0], " and then")
        assert status["node"] == "node-0" and status["state"] == "done"
        # Settings written to the coordinator's N/ctl apply on the node.
        n = await session(c, "maxtokens 3")
        _, status = await run_turn(c, n, PROMPT)
        assert status["tokens_out"] == "3"


async def test_reply_through_coordinator_equals_node(nursery, fake_nodes):
    mgr = await deploy(nursery, config_for(fake_nodes))
    settings = ("temperature 0", "repeatpenalty 1", "maxtokens 24")
    async with client.connect(fake_nodes[0][2]) as direct:
        want, _ = await run_turn(direct, await session(direct, *settings), PROMPT)
    async with client.connect(mgr.address) as c:
        for _ in range(3):
            got, status = await run_turn(c, await session(c, *settings), PROMPT)
            assert got == want and status["state"] == "done"
        # echo prompt > new/data; cat reply — as on a node
        await c.write_file("new/ctl", "\n".join(settings))
        await c.write_file("ctl", "defaults temperature 0\ndefaults repeatpenalty 1\ndefaults maxtokens 24")
        await c.write_file("new/data", PROMPT)
        assert await c.read_file("reply") == want


async def test_what_was_sent_ahead_never_changes_the_turn(nursery, fake_nodes):
    """A session's settings and a turn's first write go to the node before the
    read that submits the turn; whatever the client does in between, the turn
    is the one it read."""
    mgr = await deploy(nursery, config_for(fake_nodes))
    settings = ("temperature 0", "repeatpenalty 1", "maxtokens 12")
    async with client.connect(fake_nodes[2][2]) as direct:
        want, want_status = await run_turn(direct, await session(direct, *settings), PROMPT)
    async with client.connect(mgr.address) as c:
        # A prompt in three writes: the first went ahead, the rest follows it.
        n = await session(c, *settings)
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            for piece in ("Once", " upon a", " time"):
                await f.write(piece)
            assert await f.read_all() == want
        # Settings changed after the write and before the read apply.
        n = await session(c, *settings)
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            await c.write_file(f"{n}/ctl", "maxtokens 3")
            await f.read_all()
        assert status_fields(await c.read_file(f"{n}/status"))["tokens_out"] == "3"
        # A write whose turn never comes (its handle is still open, unread)
        # is not part of the next turn: a second handle writes and reads.
        n = await session(c, *settings)
        async with await c.open(f"{n}/data", wire.ORDWR) as abandoned:
            await abandoned.write("The end. ")
            got, status = await run_turn(c, n, PROMPT)
            # The prompt alone, no more: what was evaluated and what was found cached (a shared
            # prefix: the same prompt went to this node before) make up exactly its tokens.
            assert got == want and prompt_tokens(status) == prompt_tokens(want_status), (status, want_status)
            await c.write_file(f"{n}/ctl", "close")
        # The node that was sent the prompt dies before the read: another answers.
        n = await session(c, *settings)
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            bound = mgr.sessions.remotes[int(n)].node
            failovers = mgr.sessions.failovers
            fake_nodes[[node_id for node_id, _, _ in fake_nodes].index(bound.id)][1].kill()
            assert await f.read_all() == want
        status = status_fields(await c.read_file(f"{n}/status"))
        assert status["state"] == "done" and status["node"] != bound.id
        assert mgr.sessions.failovers == failovers + 1


async def test_status_after_the_reply_tells_how_it_ended(nursery, start_fake_node, monkeypatch):
    """The reader has the reply's end before the coordinator has the node's
    figures; the session's status waits for them rather than say "generating"."""
    from styxfs.llama import namespace
    from styxfs.llama.backend import EngineSessions

    address, _ = await start_fake_node(threads=1)
    read = namespace.StatusHandle.read
    asked = trio.Event()  # the client has asked the coordinator for the session's status

    async def late_on_the_node(self, offset, count):
        if isinstance(self.entry.tree.session_backend, EngineSessions):
            with trio.fail_after(10):
                await asked.wait()  # the node's figures come only after that
        else:
            asked.set()
        return await read(self, offset, count)

    monkeypatch.setattr(namespace.StatusHandle, "read", late_on_the_node)
    mgr = await deploy(nursery, config_for([("node-0", None, address)]))
    async with client.connect(mgr.address) as c:
        n = await session(c, "maxtokens 5")
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            await f.read_all()
        status = status_fields(await c.read_file(f"{n}/status"))
    assert status["state"] == "done" and status["tokens_out"] == "5"


async def test_every_file_of_a_coordinator_has_a_qid_path_of_its_own(nursery, start_fake_node):
    address, _ = await start_fake_node(threads=1)
    mgr = await deploy(nursery, config_for([("node-0", None, address)]))
    async with client.connect(mgr.address) as c:
        n = await session(c)
        paths = ["", "ctl", "data", "reply", "clone", "new", "model", "metrics", "nodes",
                 "tokenize", "tokenizespecial", "detokenize", "new/ctl", "new/data", "new/reply", "new/status", n,
                 *(f"{n}/{name}" for name in ("ctl", "params", "data", "reply", "status")),
                 "nodes/node-0", "nodes/node-0/health", "nodes/node-0/ctl", "nodes/node-0/new",
                 "nodes/node-0/new/ctl"]
        qids = {path: (await c.stat(path)).qid.path for path in paths}
        # Proxied files keep their qid path while in use.
        assert (await c.stat("nodes/node-0/ctl")).qid.path == qids["nodes/node-0/ctl"]
    assert len(set(qids.values())) == len(qids), qids
    assert all(q < 1 << 32 for q in qids.values())


async def test_weighted_random_proportions(nursery, fake_nodes):
    weights = {"node-0": 1.0, "node-1": 3.0, "node-2": 6.0}
    mgr = await deploy(nursery, config_for(fake_nodes, "weighted-random", weights=weights))
    counts = collections.Counter(mgr.pool.choose().id for _ in range(5000))
    for node_id, weight in weights.items():
        assert abs(counts[node_id] / 5000 - weight / 10) < 0.03, counts
    # switchable at run time
    async with client.connect(mgr.address) as c:
        await c.write_file("ctl", "balance round-robin")
        assert "strategy round-robin" in (await c.read_file("ctl")).decode()
        with pytest.raises(client.ServerError, match="unknown strategy 'fastest'"):
            await c.write_file("ctl", "balance fastest")


async def test_least_connections_with_sessions_held(nursery, fake_nodes):
    mgr = await deploy(nursery, config_for(fake_nodes, "least-connections"))
    async with client.connect(mgr.address) as c:
        used = {}
        for _ in range(3):
            n = await session(c, "maxtokens 2")
            used[n] = (await run_turn(c, n, PROMPT))[1]["node"]
        assert sorted(used.values()) == ["node-0", "node-1", "node-2"]
        # Close node-1's session: the next session goes there.
        [gone] = [n for n, node in used.items() if node == "node-1"]
        await c.write_file(f"{gone}/ctl", "close")
        n = await session(c, "maxtokens 2")
        assert (await run_turn(c, n, PROMPT))[1]["node"] == "node-1"


async def test_sessions_bound_at_once_spread_over_the_nodes(nursery, fake_nodes, monkeypatch):
    # No spare node sessions: every binding waits for its node session to be made,
    # and those still being made count, or all would go to the first node.
    monkeypatch.setattr("coordinator.node_sessions.SPARES", 0)
    mgr = await deploy(nursery, config_for(fake_nodes, "least-connections"))
    used = []

    async def one():
        async with client.connect(mgr.address) as c:
            n = await session(c, "maxtokens 2")
            used.append((await run_turn(c, n, PROMPT))[1]["node"])

    async with trio.open_nursery() as clients:
        for _ in range(6):
            clients.start_soon(one)
    assert sorted(used) == ["node-0", "node-0", "node-1", "node-1", "node-2", "node-2"]


async def test_killed_idle_node_is_avoided_and_comes_back(nursery, fake_nodes, fake_model):
    events = []
    mgr = await deploy(nursery, config_for(fake_nodes))
    mgr.on("node-down", lambda node: events.append(("down", node)))
    mgr.on("node-up", lambda node: events.append(("up", node)))
    node_id, process, address = fake_nodes[1]
    process.kill()
    process.wait()
    await node_state(mgr, node_id, "down", timeout=10)
    async with client.connect(mgr.address) as c:
        health = (await c.read_file(f"nodes/{node_id}/health")).decode()
        assert "state down" in health and "failures" in health
        for _ in range(4):
            _, status = await run_turn(c, await session(c, "maxtokens 2"), PROMPT)
            assert status["node"] != node_id and status["state"] == "done"
        # Restarted on its port: it rejoins.
        port = int(address.rsplit("!", 1)[1])
        fake_nodes[1][1], _ = start_node_process(fake_model, threads=1, port=port, fake=True)
        await node_state(mgr, node_id, "up", timeout=15)
        assert "state up" in (await c.read_file(f"nodes/{node_id}/health")).decode()
    assert ("down", node_id) in events and ("up", node_id) in events


async def test_node_killed_mid_reply_reply_completes(nursery, nodes):
    mgr = await deploy(nursery, config_for(nodes))
    async with client.connect(mgr.address) as c:
        failovers = mgr.sessions.failovers
        whole, got, n, before = await lose_mid_reply(c, mgr, nodes[1][1].kill)
        status = status_fields(await c.read_file(f"{n}/status"))
        assert await c.read_file(f"{n}/reply") == got  # every reader sees the same one reply
    check_went_on(whole, got, before, status)
    assert mgr.sessions.failovers == failovers + 1


async def test_no_healthy_node_is_a_clear_error(nursery, fake_nodes):
    mgr = await deploy(nursery, config_for(fake_nodes))
    for _, process, _ in fake_nodes:
        process.kill()
    await until_changed(mgr, lambda: not mgr.pool.healthy(), "every node to be down", timeout=10)
    async with client.connect(mgr.address) as c:
        with pytest.raises(client.ServerError, match="no healthy node"):
            await run_turn(c, await session(c), PROMPT)
        assert "state unloaded" in (await c.read_file("model")).decode()


async def test_hung_node_times_out_and_rejoins(nursery, fake_nodes):
    mgr = await deploy(nursery, config_for(fake_nodes), health_timeout=0.5)
    node_id, process, _ = fake_nodes[2]
    os.kill(process.pid, signal.SIGSTOP)
    try:
        await node_state(mgr, node_id, "down", timeout=10)
        async with client.connect(mgr.address) as c:
            for _ in range(4):
                _, status = await run_turn(c, await session(c, "maxtokens 2"), PROMPT)
                assert status["node"] != node_id
    finally:
        os.kill(process.pid, signal.SIGCONT)
    await node_state(mgr, node_id, "up", timeout=15)


async def test_root_ctl_add_remove_drain_and_metrics(nursery, nodes):
    mgr = await deploy(nursery, config_for(nodes[:2]))
    async with client.connect(mgr.address) as c:
        await c.write_file("ctl", f"add extra {nodes[2][2]} weight 2")
        await node_state(mgr, "extra", "up", timeout=10)
        assert "healthy 3" in (await c.read_file("ctl")).decode()
        assert "extra" in {d.name for d in await c.listdir("nodes")}
        await c.write_file("ctl", "drain node-0")
        assert "draining" in (await c.read_file("nodes/node-0/health")).decode()
        for _ in range(3):
            _, status = await run_turn(c, await session(c, "maxtokens 2"), PROMPT)
            assert status["node"] != "node-0"
        await c.write_file("ctl", "remove extra")
        assert "extra" not in {d.name for d in await c.listdir("nodes")}
        for command, error in [("add x", "usage: add ID ADDR"), ("remove nope", "no such node: nope"),
                               ("add node-1 tcp!127.0.0.1!1", "exists already"),
                               ("add y bad!addr!x!y", "bad address"), ("scale -1", "out of range")]:
            with pytest.raises(client.ServerError, match=error):
                await c.write_file("ctl", command)
        metrics = (await c.read_file("metrics")).decode()
        assert 'llamafs_node_up{node="node-1"} 1' in metrics
        assert 'llamafs_requests_total{node="node-1"}' in metrics
        assert "llamafs_coordinator_requests_total 3" in metrics
        # nodes/ID is the node's own root, proxied.
        assert (await c.read_file("nodes/node-1/ctl")).decode().startswith("role node")
        assert "architecture llama" in (await c.read_file("nodes/node-1/model")).decode()


@pytest.mark.parametrize("mutate, error", [
    (lambda d: d["network"].update(loadBalancing="fastest"), "network.loadBalancing: unknown value 'fastest'"),
    (lambda d: d["nodes"][0].update(port=70000), r"nodes\[0\].port: 70000 is out of range"),
    (lambda d: d["nodes"][1].update(id="node-0"), r"nodes\[1\].id: duplicate node id 'node-0'"),
    (lambda d: d["nodes"][1].update(port=8000), r"nodes\[1\].port: duplicate port 8000"),
    (lambda d: d["nodes"][0].update(weight=-1), r"nodes\[0\].weight: -1 is negative"),
    (lambda d: d["network"].update(healthCheckInterval="soon"), "network.healthCheckInterval: must be a number"),
    (lambda d: d.update(nodes={}), "nodes: must be a list"),
])
def test_config_errors_name_the_key(mutate, error):
    data = {"name": "x", "network": {"basePort": 8000},
            "nodes": [{"id": "node-0", "port": 8000}, {"id": "node-1", "port": 8001}]}
    mutate(data)
    with pytest.raises(ConfigError, match=error):
        DeploymentConfig.from_dict(data)


def test_config_broken_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "nodes": [\n    {"id": "a",}\n  ]\n}\n')
    with pytest.raises(ConfigError, match=r"line 4 column 16: broken JSON"):
        DeploymentConfig.load(path)


def test_config_original_and_partial():
    original = {"name": "my-llama-deployment", "modulePath": "/dis/deployment/llamacpp.dis",
                "modelPath": "/path/to/model.gguf",
                "network": {"loadBalancing": "round-robin", "healthCheckInterval": 30000, "requestTimeout": 60000,
                            "enableFailover": True, "basePort": 8000},
                "nodes": [{"id": "node-0", "address": "localhost", "port": 8000, "weight": 1.0, "gpuLayers": 0,
                           "contextSize": 4096}],
                "model": {"contextSize": 2048, "gpuLayers": 0, "batchSize": 512, "threads": 4, "mlock": False}}
    config = DeploymentConfig.from_dict(original)
    assert config.node_value(config.nodes[0], "contextSize") == 4096  # the node's own value wins
    assert config.node_value(config.nodes[0], "threads") == 4
    partial = DeploymentConfig.from_dict({"name": "p", "nodes": [{"id": "a"}, {"id": "b", "port": 8001}]})
    assert partial.network.loadBalancing == "round-robin" and partial.nodes[0].port == 8000
    assert LimboDeploymentManager is DeploymentManager


async def test_python_api_end_to_end_with_scaling(nursery, tiny_model, tmp_path):
    config = {"name": "api", "modelPath": tiny_model,  # basePort 0: the node, and the one scaling adds, on ports
              "network": {"basePort": 0, "healthCheckInterval": 300, "listen": "tcp!127.0.0.1!0"},  # the OS chose
              "nodes": [{"id": "node-0", "address": "localhost"}],
              "model": {"threads": 1}}
    events = []
    mgr = DeploymentManager(config, node_log_dir=str(tmp_path))  # a node that fails to start says why
    for event in ("deployed", "scaled", "node-up", "node-down", "error"):
        mgr.on(event, lambda *args, event=event: events.append((event, *args)))
    await mgr.deploy(nursery)
    assert ("deployed",) in events
    text = await mgr.evaluate(PROMPT, temperature=0, maxtokens=8)
    assert text.strip()
    pieces = [p async for p in mgr.stream(PROMPT, maxtokens=8)]
    assert len(pieces) >= 1
    await mgr.scale(2)
    status = mgr.status()
    assert [n["state"] for n in status["nodes"]] == ["up", "up"] and ("scaled", 2) in events
    started = [n["pid"] for n in status["nodes"]]
    await mgr.scale(1)
    assert len(mgr.status()["nodes"]) == 1
    await wait_until(lambda: not pid_alive(started[1]), "the second node's process to end")
    await mgr.shutdown()
    assert not pid_alive(started[0])


async def test_a_node_that_exits_at_start_is_a_clear_error_at_once(nursery, tmp_path):
    config = {"name": "bad", "modelPath": str(tmp_path),  # a directory: the node stops at once
              "network": {"listen": "tcp!127.0.0.1!0"}, "nodes": [{"id": "node-0", "address": "localhost", "port": 0}]}
    mgr = DeploymentManager(config, node_log_dir=str(tmp_path))
    with trio.fail_after(30), pytest.raises(RuntimeError, match=r"node node-0 exited \(status 1\).*no such model file"):
        await mgr.deploy(nursery)


async def test_a_second_deployment_of_a_running_one_is_refused_naming_the_pid(nursery, tiny_model, tmp_path):
    config = {"name": "twice", "modelPath": tiny_model, "network": {"listen": "tcp!127.0.0.1!0"},
              "nodes": [{"id": "node-0", "address": "localhost", "port": 0}], "model": {"threads": 1}}
    first = DeploymentManager(config)
    await first.deploy(nursery)
    [pid] = [n["pid"] for n in first.status()["nodes"]]
    base = first.config.nodes[0].port  # the port the OS chose it, which the second is given
    config["nodes"] = [{"id": "node-0", "address": "localhost", "port": base}]
    second = DeploymentManager(config)
    with trio.fail_after(30), pytest.raises(
            RuntimeError, match=rf"node node-0: port {base} is held by pid {pid}, a node of the deployment of pid "
                                rf"{os.getpid()}: stop that one first"):
        await second.deploy(nursery)
    # A node started by hand on a configured port is taken as it is.
    process, address = start_node_process(tiny_model, threads=1)
    try:
        by_hand = DeploymentManager({**config, "nodes": [{"id": "node-0", "address": "localhost",
                                                          "port": int(address.rsplit("!", 1)[1])}]})
        await by_hand.deploy(nursery)
        assert by_hand.status()["nodes"][0]["pid"] is None and by_hand.status()["nodes"][0]["state"] == "up"
        await by_hand.shutdown()
    finally:
        stop_process(process)
    await first.shutdown()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_cli_generate_config_deploy_start_ask_and_ctrl_c(tiny_model, tmp_path):
    out = tmp_path / "deployment.json"
    subprocess.run(LLAMAFS + ["deploy", "generate-config", "--model", tiny_model, "--nodes", "2",
                              "--output", str(out), "--base-port", "9100"], cwd=ROOT, check=True)
    data = json.loads(out.read_text())
    assert [n["port"] for n in data["nodes"]] == [9100, 9101]
    data["network"]["listen"] = "tcp!127.0.0.1!0"  # every port the OS's choice, told back, not 9100 guessed free
    for node in data["nodes"]:
        node["port"] = 0
    data["model"]["threads"] = 1
    out.write_text(json.dumps(data))
    deployer, served = spawn_ready(LLAMAFS + ["deploy", "start", "--config", str(out)], subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    try:
        address = served()
        ask = subprocess.run(LLAMAFS + ["ask", "--addr", address, "--maxtokens", "6", PROMPT],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert ask.returncode == 0 and ask.stdout.strip(), ask.stderr
        status = subprocess.run(LLAMAFS + ["status", "--addr", address], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        assert "node-0" in status.stdout and "node-1" in status.stdout and " up " in status.stdout
        node_pids = children_of(deployer.pid)
        assert len(node_pids) == 2
    finally:
        deployer.send_signal(signal.SIGINT)
        stdout, stderr = deployer.communicate(timeout=30)
    assert deployer.returncode == 0, stderr
    assert "coordinator serving on" in stderr and "node-0" in stdout
    assert not any(pid_alive(pid) for pid in node_pids)


async def test_nodes_end_with_a_deployment_killed_outright(tiny_model, tmp_path):
    """SIGKILL of `deploy start`: its nodes go too (PR_SET_PDEATHSIG), their
    ports are free, and the same config starts afresh."""
    config = tmp_path / "deployment.json"
    with reserved_ports(2) as [base, _]:  # fixed node ports, the same twice: none the OS might hand out between
        config.write_text(json.dumps({"name": "doomed", "modelPath": tiny_model, "model": {"threads": 1},
                                      "network": {"basePort": base, "listen": "tcp!127.0.0.1!0"},
                                      "nodes": [{"id": "node-0", "port": base}, {"id": "node-1", "port": base + 1}]}))
        for attempt in range(2):
            await started_and_killed(config, base, attempt)


async def started_and_killed(config, base: int, attempt: int) -> None:
    """`deploy start` of config, serving, then SIGKILLed: its nodes end, their ports free."""
    deployer, _ = start_ready(LLAMAFS + ["deploy", "start", "--config", str(config)],
                              config.parent / f"deploy-{attempt}.log")
    try:
        node_pids = children_of(deployer.pid)
        assert len(node_pids) == 2, attempt
    finally:
        deployer.kill()
        deployer.wait()
    await wait_until(lambda: not any(pid_alive(pid) for pid in node_pids), "the nodes to end", timeout=2)
    assert all(port_bindable("127.0.0.1", p) for p in (base, base + 1)), attempt


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_bad_config_stops_deploy_start(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"network": {"loadBalancing": "fastest"}}')
    result = subprocess.run(LLAMAFS + ["deploy", "start", "--config", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "network.loadBalancing: unknown value 'fastest'" in result.stderr


async def test_the_plan9_way_runs_on_past_the_caps_of_coordinator_and_node(nursery, start_fake_node):
    """clone, write N/data, read N/reply, never close: the coordinator reclaims
    its idle sessions at its cap, and lets go of node sessions at the node's."""
    address, node = await start_fake_node(threads=1, max_sessions=6)
    mgr = await deploy(nursery, config_for([("node-0", None, address)], maxSessions=8))
    # the node's cap is known from its health check
    await until_changed(mgr, lambda: mgr.pool.get("node-0").max_sessions, "node-0's cap", timeout=10)
    async with client.connect(mgr.address) as c:
        await greedy(c, maxtokens=4)
        want = await ask(c, "data", PROMPT)
        for i in range(30):
            n = await session(c)
            got, status = await run_turn(c, n, PROMPT)
            assert got == want and status["state"] == "done", (i, status)
        metrics = (await c.read_file("metrics")).decode()
    assert len(mgr.tree.table.sessions) <= 8 and mgr.tree.table.reclaimed >= 22
    assert len(node.tree.table.sessions) <= 6 and node.tree.table.reclaimed == 0
    assert mgr.sessions.released > 0
    assert f"llamafs_coordinator_sessions_reclaimed_total {mgr.tree.table.reclaimed}\n" in metrics


async def test_a_session_let_go_on_its_node_is_given_its_conversation_again(nursery, start_fake_node):
    address, node = await start_fake_node(threads=1, max_sessions=6)
    mgr = await deploy(nursery, config_for([("node-0", None, address)], maxSessions=40))
    await until_changed(mgr, lambda: mgr.pool.get("node-0").max_sessions, "node-0's cap", timeout=10)
    async with client.connect(mgr.address) as c, client.connect(address) as direct:
        await greedy(c, maxtokens=6)
        await greedy(direct, maxtokens=6)
        reference = await session(direct)
        want = [await run_turn(direct, reference, turn) for turn in (PROMPT, " and then")]
        first = await session(c)
        assert (await run_turn(c, first, PROMPT))[0] == want[0][0]
        for _ in range(12):  # others push first's node session out
            await run_turn(c, await session(c), "the king was")
        assert mgr.sessions.remotes[int(first)].binding is None and mgr.sessions.released > 0
        reply, status = await run_turn(c, first, " and then")
        # The node it lands on is given the whole conversation, not the turn alone
        # (as text: the node tokenises it afresh, so the reply may differ).
        assert reply and status["state"] == "done"
        assert int(status["tokens_in"]) > int(want[1][1]["tokens_in"]) + int(want[0][1]["tokens_in"])


async def test_prefix_affinity_sends_a_shared_beginning_to_the_node_that_holds_it(nursery, nodes):
    mgr = await deploy(nursery, config_for(nodes[:2], "prefix-affinity"))
    system = "You are a careful assistant who answers every question about kings in one line. " * 4
    async with client.connect(mgr.address) as c:
        await greedy(c, maxtokens=4)

        async def turn(prompt: str) -> dict:
            return (await run_turn(c, await session(c), prompt))[1]

        first = await turn(system + "Who was the first king?")
        same = [await turn(system + f"Question {i}?") for i in range(2)]
        assert {s["node"] for s in same} == {first["node"]}
        assert all(int(s.get("tokens_cached", 0)) > 100 for s in same), same  # the node had that beginning
        other = await turn("Something else entirely, about water.")
        assert other["node"] != first["node"]  # no prefix to follow: the least loaded
        # The node that holds the beginning dies: another takes it.
        nodes[[n for n, _, _ in nodes].index(first["node"])][1].kill()
        await node_state(mgr, first["node"], "down", timeout=10)
        assert (await turn(system + "And now?"))["node"] != first["node"]
