"""What the tests share: a prompt, the usual conversations with a tree,
the status parser, waiting, node processes and deployments.  Fixtures are in
conftest.py; everything else a test file needs of another is here."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time

import trio

from styxfs import client, wire
from styxfs.dial import port_open
from styxfs.llama.engine import Engine
from styxfs.llama.llamacpp import LlamaModel
from styxfs.llama.reply import parse_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMAFS = [sys.executable, "-m", "coordinator.cli"]  # the llamafs command, from this checkout
NODE = [sys.executable, "-m", "styxfs.llama"]  # a node, as a deployment starts one
FAKE_NODE = [sys.executable, "-m", "tests.fakemodel"]  # the same on the fake model
PROMPT = "Once upon a time"
GREEDY = {"temperature": 0, "repeatpenalty": 1}  # as llama-cpp-python's create_completion at temperature 0


# ---- talking to a tree ------------------------------------------------------------------


async def greedy(c: client.Client, **settings) -> None:
    """Root ctl defaults for greedy, penalty-free replies, and any others."""
    lines = [f"defaults {key} {value}" for key, value in {**GREEDY, **settings}.items()]
    await c.write_file("ctl", "\n".join(lines) + "\n")


async def greedy_at(address: str, **settings) -> None:
    async with client.connect(address) as c:
        await greedy(c, **settings)


async def ask(c: client.Client, path: str, prompt: str) -> bytes:
    """Write prompt to a data file and read the reply on the same fid."""
    async with await c.open(path, wire.ORDWR) as f:
        await f.write(prompt)
        return await f.read_all()


async def ask_at(address: str, prompt: str, path: str = "data") -> bytes:
    async with client.connect(address) as c:
        return await ask(c, path, prompt)


async def new_session(c: client.Client) -> tuple[client.File, str]:
    """clone opened: (its fid, now N/ctl, and N)."""
    ctl = await c.open("clone", wire.ORDWR)
    return ctl, (await ctl.read()).decode().strip()


async def session(c: client.Client, *settings: str) -> str:
    """A new session with these ctl lines written; its number."""
    ctl, number = await new_session(c)
    async with ctl:
        for setting in settings:
            await ctl.fid.write(setting.encode(), 0)
    return number


async def run_turn(c: client.Client, number: str, prompt: str) -> tuple[bytes, dict[str, str]]:
    """One turn of session N: its reply and then its status."""
    text = await ask(c, f"{number}/data", prompt)
    return text, status_fields(await c.read_file(f"{number}/status"))


def status_fields(text: bytes) -> dict[str, str]:
    """N/status as a dict: `state`, then every key=value field."""
    state, fields = parse_status(text.decode())
    return {**fields, "state": state}


def prompt_tokens(status: dict[str, str]) -> int:
    """A turn's prompt tokens: those evaluated and those found in the KV cache."""
    return int(status["tokens_in"]) + int(status.get("tokens_cached", 0))


class SlowEngine(Engine):
    """The real engine on llama.cpp, 20 ms a step: for the tests that must
    catch a generation in the middle."""

    def __init__(self, slots: int = 4):
        super().__init__(LlamaModel, slots)

    def _step(self):
        if self.active:
            time.sleep(0.02)
        super()._step()


# ---- waiting --------------------------------------------------------------------------------


async def wait_until(condition, what: str, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Until condition() (a function, or a coroutine function) is true, for
    what no event announces; after timeout seconds, fail saying what it
    waited for.  Where there is an event, await it instead."""
    with trio.move_on_after(timeout):
        while True:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            await trio.sleep(interval)
    raise TimeoutError(f"waited {timeout:g} s for {what}")


# ---- processes ----------------------------------------------------------------------------


def wait_for_port(port: int, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def start_node_process(model: str, threads: int = 1, slots: int = 4, port: int = 0,
                       extra: list[str] | None = None, fake: bool = False) -> tuple[subprocess.Popen, str]:
    """A node (`python -m styxfs.llama`, or with fake `python -m tests.fakemodel`
    on the fake model) as a process of its own, once it serves; (process,
    dial string).  Port 0: the one the OS chooses, told back."""
    process, served = spawn_node_process(model, threads, slots, port, extra, fake)
    return process, served()


def spawn_node_process(model: str, threads: int = 1, slots: int = 4, port: int = 0,
                       extra: list[str] | None = None, fake: bool = False):
    """The same, without waiting for it: (process, served), served() waiting
    for it to serve and giving its address."""
    cmd = (FAKE_NODE if fake else NODE) + ["--model", model, "--listen", f"tcp!127.0.0.1!{port}",
                                           "--threads", str(threads), "--slots", str(slots)] + (extra or [])
    return spawn_ready(cmd)


def spawn_ready(command: list[str], log=subprocess.DEVNULL, stderr=subprocess.STDOUT, **options):
    """Start command (a node, or `llamafs deploy start`, listening on port 0
    perhaps): (process, served), served() waiting till it says where it
    serves (styxfs.llama.ready) and giving that address; an error if it
    stops first."""
    from styxfs.llama.ready import READY_FD

    said, told = os.pipe()
    try:
        env = {**options.pop("env", os.environ), READY_FD: str(told)}
        process = subprocess.Popen(command, cwd=options.pop("cwd", ROOT), stdout=log, stderr=stderr,
                                   pass_fds=(told,), env=env, **options)
    finally:
        os.close(told)

    def served() -> str:
        with os.fdopen(said, "rb") as ready:
            address = ready.readline().decode().strip()  # or nothing, at its end
        if not address:
            process.wait()
            raise RuntimeError(f"{' '.join(command)} exited ({process.returncode}) before serving")
        return address

    return process, served


def start_ready(command: list[str], log_path, **options) -> tuple[subprocess.Popen, str]:
    """spawn_ready, its output in log_path, waited for: (process, its address)."""
    with open(log_path, "wb") as log:
        process, served = spawn_ready(command, log, **options)
    try:
        return process, served()
    except RuntimeError as e:
        raise RuntimeError(f"{e}:\n{open(log_path).read()}") from None


def stop_processes(processes: list[subprocess.Popen], how: int = signal.SIGTERM, grace: float = 10) -> None:
    """Stopped (and continued, if stopped), all at once; then each waited for."""
    processes = [process for process in processes if process.poll() is None]
    for process in processes:
        os.kill(process.pid, signal.SIGCONT)
        process.send_signal(how)
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---- deployments ----------------------------------------------------------------------------


def config_for(nodes, strategy="round-robin", interval_ms=200, weights=None, **network) -> dict:
    """A deployment config over running nodes [(id, process, address)]."""
    return {
        "name": "test",
        "network": {"loadBalancing": strategy, "healthCheckInterval": interval_ms, "requestTimeout": 20000,
                    "listen": "tcp!127.0.0.1!0", **network},
        "nodes": [{"id": node_id, "address": "127.0.0.1", "port": int(address.rsplit("!", 1)[1]),
                   "weight": (weights or {}).get(node_id, 1.0)} for node_id, _, address in nodes],
    }


async def deploy(nursery: trio.Nursery, config: dict, **options):
    """A DeploymentManager deployed in nursery (seed 1: strategies repeat)."""
    from coordinator import DeploymentManager

    mgr = DeploymentManager(config, seed=1, **options)
    await mgr.deploy(nursery, timeout=60)
    return mgr


async def streaming_from(mgr, node_id: str, timeout: float = 20) -> None:
    """Until a reply of the deployment's is streaming from that node."""
    await wait_until(lambda: any(r.reply and r.reply.node == node_id and r.reply.text and not r.reply.ended
                                 for r in mgr.sessions.remotes.values()),
                     f"a reply streaming from {node_id}", timeout, interval=0.001)


async def lose_mid_reply(c: client.Client, mgr, lose) -> tuple[bytes, bytes, str, int]:
    """A long greedy reply on node-0, then the same streaming from node-1 and
    lose() called well into it (the deployment round-robin): (the first
    reply, the second read to its end, its session's number, the bytes
    read before the loss)."""
    settings = ("temperature 0", "repeatpenalty 1", "maxtokens 1500")
    whole, _ = await run_turn(c, await session(c, *settings), PROMPT)  # on node-0
    n = await session(c, *settings)  # the next goes to node-1
    async with await c.open(f"{n}/data", wire.ORDWR) as f:
        await f.write(PROMPT)
        got = b""
        while len(got) < 200:  # well into the reply
            got += await f.read()
        assert status_fields(await c.read_file(f"{n}/status"))["node"] == "node-1"
        before = len(got)
        lose()
        async for piece in f.stream():
            got += piece
    return whole, got, n, before


def check_went_on(whole: bytes, got: bytes, before: int, status: dict) -> None:
    """A reply lose_mid_reply failed over is one continuous reply: it went on
    from where it stopped, and never restarted.  Where it ends is the
    model's to say (the new node is given the text so far, which it
    tokenises afresh, so the greedy text and its length after the switch may
    differ): what is checked is that it ran on to an end of its own (its
    stop, maxtokens, or a full context)."""
    assert status["state"] == "done" and status["node"] != "node-1"
    assert got[:200] == whole[:200] and got.count(whole[:60]) == 1
    assert status["reason"] in ("stop", "length", "context")
    assert len(got) > before or status["reason"] == "stop"


async def until_changed(mgr, condition, what: str, timeout: float = 15) -> None:
    """Until condition() holds, looked at again at each change of the
    deployment's nodes (node-up, node-down: mgr.changed)."""
    with trio.move_on_after(timeout):
        while not condition():
            await mgr.changed.wait()
        return
    raise TimeoutError(f"waited {timeout:g} s for {what}")


async def node_state(mgr, node_id: str, state: str, timeout: float = 15) -> None:
    """Until the deployment's node is up or down (its node-up, node-down event)."""
    await until_changed(mgr, lambda: mgr.pool.get(node_id).state == state, f"{node_id} to be {state}", timeout)
