"""Several models in one deployment, each session on its model's nodes: the
tiny model (nodes a and b) and a tiny chat model (node c), real nodes."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from rich.console import Console

from coordinator import DeploymentManager
from coordinator.cli import status_table
from styxfs import client, metrics, wire
from styxfs.llama.status import Watcher
from styxfs.llama.top import render

from .inferno import inferno, port, requires_emu
from .limbo_driver import MNTPT, drive, host
from .support import ask, config_for, deploy, node_state, run_turn, session, status_fields, wait_until

PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """tiny.gguf and chat.gguf, in one models directory (so that a node can `load` the other)."""
    from .tinymodel import write_tiny_model

    folder = tmp_path_factory.mktemp("two")
    return str(write_tiny_model(folder / "tiny.gguf")), str(write_tiny_model(folder / "chat.gguf", chat=True))


def two_model_config(two_models, name="two", chat_nodes=1) -> dict:
    tiny, chat = two_models
    # basePort 0: every node, and each one scaling adds, on a port the OS chooses, told back
    nodes = [{"id": "a"}, {"id": "b", "model": "tiny"}]
    nodes += [{"id": "c" if i == 0 else f"c{i}", "model": "chat"} for i in range(chat_nodes)]
    return {"name": name, "models": {"tiny": {"path": tiny}, "chat": {"path": chat}},
            "model": {"threads": 1, "contextSize": 512},
            "network": {"healthCheckInterval": 200, "listen": "tcp!127.0.0.1!0", "basePort": 0},
            "nodes": nodes}


async def requests_on(mgr, node: str, model: str) -> float:
    """Turns the node has taken, as its metrics (labelled by the coordinator) say."""
    async with client.connect(mgr.address) as c:
        samples = metrics.parse((await c.read_file("metrics")).decode())
    return metrics.value(samples, "llamafs_requests_total", {"node": node, "model": model})


async def turn_of(c: client.Client, number: str) -> dict[str, str]:
    _, status = await run_turn(c, number, PROMPT)
    assert status["state"] == "done", status
    return status


async def test_two_models_each_served_by_its_own_nodes(nursery, two_models, tmp_path):
    mgr = DeploymentManager(two_model_config(two_models), seed=1, node_log_dir=str(tmp_path))
    await mgr.deploy(nursery, timeout=90)
    async with client.connect(mgr.address) as c:
        assert [d.name for d in await c.listdir("models")] == ["tiny", "chat"]
        tiny = status_fields(await c.read_file("models/tiny/status"))
        chat = status_fields(await c.read_file("models/chat/status"))
        assert (tiny["state"], tiny["nodes"], tiny["mode"]) == ("up", "2/2", "raw")
        assert (chat["state"], chat["nodes"], chat["mode"]) == ("up", "1/1", "chat")
        assert {d.name for d in await c.listdir("models/chat")} == {"clone", "new", "status"}

        # The default model's, through the root: on a and b, never on c.
        defaults = {(await turn_of(c, await session(c, "maxtokens 4")))["node"] for _ in range(4)}
        assert defaults == {"a", "b"}
        # Through models/chat/clone, and ctl `model`.
        async with await c.open("models/chat/clone", wire.ORDWR) as ctl:
            number = (await ctl.read()).decode().strip()
            await ctl.fid.write(b"maxtokens 4", 0)
            assert (await turn_of(c, number))["node"] == "c"
        number = await session(c, "maxtokens 4", "model chat")
        assert (await turn_of(c, number))["node"] == "c"
        number = await session(c, "model tiny", "maxtokens 4")
        assert (await turn_of(c, number))["node"] in {"a", "b"}
        # Through models/chat/new/data: the new session is c's.
        before = set(mgr.sessions.remotes)
        assert await ask(c, "models/chat/new/data", PROMPT)
        [new] = set(mgr.sessions.remotes) - before
        assert mgr.sessions.remotes[new].reply.node == "c"

        # Unknown models, and a model chosen too late, are clear errors.
        with pytest.raises(client.ServerError, match=r"^no such model: nope \(there are: tiny, chat\)$"):
            await session(c, "model nope")
        models = await c.walk("models")
        with pytest.raises(client.ServerError, match=r"^no such model: nope \(there are: tiny, chat\)$"):
            await models.walk("nope")  # one name: a longer walk's error is the protocol's own
        await models.clunk()
        with pytest.raises(client.ServerError, match="chosen before its first turn"):
            async with await c.open(f"{number}/ctl", wire.OWRITE) as ctl:
                await ctl.write("model chat")
        assert (await turn_of(c, number))["node"] in {"a", "b"}  # and the session is as it was

        # Shown grouped by model: metrics, the status reading (top, the dashboard, /api/status).
        metrics = (await c.read_file("metrics")).decode()
        assert 'llamafs_node_up{node="c",model="chat"} 1' in metrics
        assert 'llamafs_coordinator_model_healthy_nodes{model="tiny"} 2' in metrics
        assert 'llamafs_tokens_out_total{node="c",model="chat"}' in metrics  # the node's own, labelled
        reading = await Watcher(c).status()
        assert [(m["name"], m["nodes"], m["mode"]) for m in reading["models"]] == [("tiny", "2/2", "raw"),
                                                                                  ("chat", "1/1", "chat")]
        assert {n["id"]: n["model"] for n in reading["nodes"]} == {"a": "tiny", "b": "tiny", "c": "chat"}
        assert next(n for n in reading["nodes"] if n["id"] == "c")["tokens_out_total"] > 0
        table = status_table({**mgr.status(), "nodes": [{**n, "latency": 0} for n in reading["nodes"]]})
        assert "model chat: up, nodes 1/1" in table and re.search(r"\nc +chat +", table), table
        before = await requests_on(mgr, "c", "chat")
        assert await mgr.evaluate(PROMPT, model="chat", maxtokens=4)  # the Python API: ctl `model`
        assert await requests_on(mgr, "c", "chat") == before + 1
        console = Console(width=100, record=True)
        console.print(render(reading, 40))
        screen = console.export_text()
        assert "MODEL" in screen and re.search(r"chat +up +1/1", screen) and re.search(r"\bc +chat +up", screen)

        # scale per model: bare scale is the default model's.
        await c.write_file("ctl", "scale chat 2")
        assert len(mgr._nodes_of("chat")) == 2 and len(mgr._nodes_of("tiny")) == 2
        await wait_until(lambda: len(mgr.pool.healthy("chat")) == 2, "both chat nodes in the chat pool")
        assert status_fields(await c.read_file("models/chat/status"))["nodes"] == "2/2"
        chats = {(await turn_of(c, await session(c, "model chat", "maxtokens 4")))["node"] for _ in range(2)}
        assert "c" in chats and len(chats) == 2
        with pytest.raises(client.ServerError, match=r"^no such model: big \(there are: tiny, chat\)$"):
            await c.write_file("ctl", "scale big 2")
        await mgr.scale(1, model="chat")
        assert [n.id for n in mgr._nodes_of("chat")] == ["c"]
        await c.write_file("ctl", "scale 1")
        assert [n.id for n in mgr._nodes_of("tiny")] == ["a"]

        # Its only node gone, the chat model is a clear error; tiny answers on.
        os.kill(mgr.processes["c"].pid, signal.SIGKILL)
        await node_state(mgr, "c", "down")
        with pytest.raises(client.ServerError, match="^temporarily unavailable: no healthy node for model chat$"):
            await ask(c, "models/chat/new/data", PROMPT)
        assert status_fields(await c.read_file("models/chat/status"))["state"] == "down"
        assert (await turn_of(c, await session(c, "maxtokens 4")))["node"] == "a"
    await mgr.shutdown()


async def test_a_node_that_loads_another_model_moves_pools(nursery, two_models, tmp_path):
    config = two_model_config(two_models, name="moving")
    mgr = DeploymentManager(config, seed=1, node_log_dir=str(tmp_path))
    await mgr.deploy(nursery, timeout=90)
    b = mgr.pool.get("b")
    assert b.models == {"tiny"}
    async with client.connect(mgr.address) as c:
        await c.write_file("nodes/b/ctl", "load chat.gguf")
        await wait_until(lambda: b.models == {"chat"}, "node b in the chat pool", timeout=15)
        assert status_fields(await c.read_file("models/chat/status"))["nodes"] == "2/2"
        assert status_fields(await c.read_file("models/tiny/status"))["nodes"] == "1/1"
        nodes = {(await turn_of(c, await session(c, "model chat", "maxtokens 4")))["node"] for _ in range(2)}
        assert nodes == {"b", "c"}
        ctl = (await c.read_file("ctl")).decode()
        assert re.search(r"^node b .* model chat$", ctl, re.M), ctl
    await mgr.shutdown()


async def test_a_coordinator_over_coordinators_routes_by_model(nursery, two_models, tmp_path):
    child = DeploymentManager(two_model_config(two_models, name="child"), seed=1, node_log_dir=str(tmp_path))
    await child.deploy(nursery, timeout=90)
    port = int(child.address.rsplit("!", 1)[1])
    tiny, chat = two_models
    parent = await deploy(nursery, {**config_for([("child", None, child.address)]),
                                    "models": {"tiny": {"path": tiny}, "chat": {"path": chat}}})
    assert parent.pool.get("child").models == {"tiny", "chat"} and port
    async with client.connect(parent.address) as c:
        assert [d.name for d in await c.listdir("models")] == ["tiny", "chat"]
        for model, nodes in (("chat", {"c"}), ("tiny", {"a", "b"})):
            number = await session(c, f"model {model}", "maxtokens 4")
            assert (await turn_of(c, number))["node"] == "child"
            [remote] = [r for r in child.sessions.remotes.values() if r.reply and r.session.model == model]
            assert remote.reply.node in nodes
            await c.write_file(f"{number}/ctl", "close")
        assert await ask(c, "models/chat/new/data", PROMPT)
        assert any(r.reply and r.reply.node == "c" for r in child.sessions.remotes.values())
    await parent.shutdown()
    await child.shutdown()


async def test_a_nodes_own_tree_has_its_one_model(start_node, tiny_model):
    address, node = await start_node(threads=1)
    async with client.connect(address) as c:
        assert [d.name for d in await c.listdir("models")] == ["tiny"]
        status = status_fields(await c.read_file("models/tiny/status"))
        assert (status["state"], status["nodes"], status["mode"]) == ("up", "1/1", "raw")
        number = await session(c, "maxtokens 4", "model tiny")
        await turn_of(c, number)
        assert (await ask(c, "models/tiny/new/data", PROMPT))
        with pytest.raises(client.ServerError, match=r"^no such model: chat \(there are: tiny\)$"):
            await session(c, "model chat")


async def test_the_http_api_lists_the_models_and_a_request_picks_one(nursery, two_models, tmp_path):
    from .test_api import apost
    from .test_web import aget

    config = two_model_config(two_models, name="http")
    config["network"]["http"] = "tcp!127.0.0.1!0"
    mgr = DeploymentManager(config, seed=1, node_log_dir=str(tmp_path))
    await mgr.deploy(nursery, timeout=90)
    base = f"http://127.0.0.1:{mgr.http_port}"
    status, _, body = await aget(base + "/v1/models")
    listed = json.loads(body)["data"]
    assert status == 200 and [(m["id"], m["meta"]["mode"]) for m in listed] == [("tiny", "raw"), ("chat", "chat")]
    assert listed[0]["context_length"] == 512

    before = await requests_on(mgr, "c", "chat")
    status, answer = await apost(base + "/v1/chat/completions", {"model": "chat", "max_tokens": 4, "temperature": 0,
                                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and answer["model"] == "chat", answer
    assert await requests_on(mgr, "c", "chat") == before + 1
    status, answer = await apost(base + "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
    assert status == 200 and answer["model"] == "tiny", answer  # no model: the default
    status, answer = await apost(base + "/v1/completions", {"model": "gpt-4", "prompt": PROMPT})
    assert status == 404 and answer["error"]["code"] == "model_not_found" and answer["error"]["param"] == "model"
    assert answer["error"]["message"] == "no such model: gpt-4 (there are: tiny, chat)"
    await mgr.shutdown()


@requires_emu
async def test_limbo_names_a_model(nursery, two_models, tmp_path, dis):
    """DisNode.model and `llama -c NAME` reach the model's nodes; NetworkCoordinator's default is the first."""
    mgr = DeploymentManager(two_model_config(two_models, name="limbo"), seed=1, node_log_dir=str(tmp_path))
    await mgr.deploy(nursery, timeout=90)
    coord = port(mgr.address)
    llama = host(dis[0].parent / "llama.dis")
    served = lambda node: sum(1 for r in mgr.sessions.remotes.values() if r.reply and r.reply.node == node)
    out = await drive(dis, [f"node chat 127.0.0.1 {coord}", "model chat chat", "connect chat", f"send chat {PROMPT}",
                            f"node nope 127.0.0.1 {coord}", "model nope nope", "connect nope", f"send nope {PROMPT}"])
    assert out[3].strip() and served("c") == 1  # models/chat/new/data: a session kept until idle
    assert out[7] == "nil: node nope: can't open /n/models/nope/new/data: '/n/models/nope' does not exist\n", out[7]
    script = f"""
load std
{MNTPT}
mount -A tcp!127.0.0.1!{coord} /n/llama || exit mount
{llama} -c chat -n 4 {PROMPT}
echo ---status $status
{llama} -c nope -n 4 {PROMPT}
echo ---status $status
"""
    before = await requests_on(mgr, "c", "chat")
    result = await inferno(script)
    assert await requests_on(mgr, "c", "chat") == before + 1  # the one turn the command asked for
    reply, *statuses = re.split(r"---status ?", result.stdout)
    assert reply.strip() and [s.strip() for s in statuses] == [
        "", "model nope: no such model: nope (there are: tiny, chat)"], (result.stdout, result.stderr)
    assert "llama: model nope: no such model: nope (there are: tiny, chat)" in result.stderr.splitlines()
    await mgr.shutdown()


async def test_failover_mid_reply_stays_within_the_model(nursery, two_models, tmp_path):
    mgr = DeploymentManager(two_model_config(two_models, name="failover"), seed=1, node_log_dir=str(tmp_path))
    await mgr.deploy(nursery, timeout=90)
    async with client.connect(mgr.address) as c:
        number = await session(c, "temperature 0", "repeatpenalty 1", "maxtokens 400")  # it fits the context anew
        async with await c.open(f"{number}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            got = await f.read()
            first = mgr.sessions.remotes[int(number)].reply.node
            os.kill(mgr.processes[first].pid, signal.SIGSTOP)  # mid-reply, held there
            held = status_fields(await c.read_file(f"{number}/status"))
            assert held["state"] == "generating" and first in {"a", "b"}, held
            os.kill(mgr.processes[first].pid, signal.SIGKILL)
            async for piece in f.stream():
                got += piece
        status = status_fields(await c.read_file(f"{number}/status"))
        assert status["state"] == "done" and status["node"] == ({"a", "b"} - {first}).pop(), status  # never c
    await mgr.shutdown()
