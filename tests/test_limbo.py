"""The Inferno side: limbo/llamacpp.b and llama.b, the mkfile, Dis-VM isolates.

Everything here runs Inferno's own tools (mk, limbo, a headless emu) and skips,
saying so, when no emu is found (tests/inferno.py). The ADTs are driven by a
small Limbo program (DRIVER, compiled here) that runs one command per
argument and prints each result after a "=== command" line.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from coordinator import DeploymentManager
from coordinator import isolation
from styxfs import client, wire

from .inferno import requires_emu
from .inferno import inferno, port
from .limbo_driver import MNTPT, REPO, drive, host, tools
from .ports import refusing_port
from .support import PROMPT, ask_at, greedy_at, start_node_process, stop_process, wait_until

pytestmark = requires_emu

# The host's kill(1), by its own path: plan9port's bin, often first in a Plan 9
# user's PATH, has a kill that only prints kill commands.
KILL = shutil.which("kill", path="/usr/bin:/bin") or "kill"

# -- helpers ---------------------------------------------------------------------------

async def greedy(address: str) -> None:
    await greedy_at(address, maxtokens=24)


async def ask(address: str, prompt: str) -> str:
    return (await ask_at(address, prompt)).decode()


@pytest.fixture
def dead_port():
    """A port that refuses connections, and stays so for the whole test."""
    with refusing_port() as p:
        yield p


@pytest.fixture
def node_process(tiny_model):
    """A `llamafs serve` process (to kill): (process, address)."""
    process, address = start_node_process(tiny_model, threads=1, slots=4)
    try:
        yield process, address
    finally:
        if process.poll() is None:
            stop_process(process)


# -- the mkfile ------------------------------------------------------------------------

def mk(bindir: Path, root: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROOT": root, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return subprocess.run([str(bindir / "mk"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def checkout_copy(tmp_path: Path) -> Path:
    work = tmp_path / "llamafs"
    (work / "limbo").mkdir(parents=True)
    shutil.copy2(REPO / "mkfile", work / "mkfile")
    for f in (REPO / "limbo").iterdir():
        if f.suffix in (".b", ".m"):
            shutil.copy2(f, work / "limbo" / f.name)
    return work


def test_mk_builds_without_warnings_and_cleans(tmp_path):
    _, root, bindir = tools()
    work = checkout_copy(tmp_path)
    done = mk(bindir, root, work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
    assert done.stderr == ""
    for name in ("llamacpp", "llama", "isolate", "testdriver"):
        assert (work / "limbo" / f"{name}.dis").stat().st_size > 0
        assert f"-o limbo/{name}.dis limbo/{name}.b" in done.stdout
    assert "up to date" in mk(bindir, root, work).stdout
    later = (work / "limbo" / "llamacpp.dis").stat().st_mtime + 2
    os.utime(work / "limbo" / "llamacpp.m", (later, later))  # every .dis depends on the module
    assert mk(bindir, root, work).stdout.count("limbo -I") == 4
    done = mk(bindir, root, work, "clean")
    assert done.returncode == 0
    assert sorted(p.name for p in (work / "limbo").iterdir()) == [
        "isolate.b", "llama.b", "llamacpp.b", "llamacpp.m", "testdriver.b"]


def test_mk_install_follows_module_path(tmp_path):
    _, root, bindir = tools()
    work = checkout_copy(tmp_path)
    # A root of our own to install into: its mkconfig names it; the rest is the real one's.
    fake = tmp_path / "inferno"
    (fake / "dis").mkdir(parents=True)
    for name in ("mkfiles", "module"):
        (fake / name).symlink_to(Path(root) / name)
    config = (Path(root) / "mkconfig").read_text().splitlines()
    (fake / "mkconfig").write_text("\n".join(f"ROOT={fake}" if line.startswith("ROOT=") else line
                                             for line in config) + "\n")
    done = mk(bindir, str(fake), work, "install")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (fake / "dis/deployment/llamacpp.dis").read_bytes() == (work / "limbo/llamacpp.dis").read_bytes()
    assert (fake / "dis/deployment/isolate.dis").is_file()
    assert (fake / "dis/llama.dis").read_bytes() == (work / "limbo/llama.dis").read_bytes()
    assert not list(fake.rglob("testdriver.dis"))  # the tests' driver is built, never installed
    cfg = tmp_path / "deployment.json"
    cfg.write_text('{\n  "name": "x",\n  "modulePath": "/dis/elsewhere/llamacpp.dis"\n}\n')
    done = mk(bindir, str(fake), work, "install", f"CONFIG={cfg}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (fake / "dis/elsewhere/llamacpp.dis").is_file()
    done = mk(bindir, str(fake), work, "install", "MODULEPATH=/dis/third/llamacpp.dis")
    assert (fake / "dis/third/llamacpp.dis").is_file(), done.stdout + done.stderr


# -- ModelContext ----------------------------------------------------------------------

async def test_model_context(start_node, dis):
    address, node = await start_node()
    await greedy(address)
    want = await ask(address, PROMPT)
    out = await drive(dis, [
        "load tiny.gguf 512 0",
        f"eval {PROMPT}",
        "load nosuch.gguf 512 0",  # the server's error as %r; the model stays
        f"eval {PROMPT}",
        "unload",
        f"eval {PROMPT}",
        "load tiny.gguf 0 -1",  # no ctx, no gpulayers: the node's current ones
        f"eval {PROMPT}",
    ], setup=f"mount -A tcp!127.0.0.1!{port(address)} /n/llama || exit mount")
    assert out[0] == "ok tiny.gguf 512 0\n"
    assert out[1] == want + "\n" and len(want) > 20
    assert out[2] == "nil: no such model file: nosuch.gguf\n"
    assert out[3] == want + "\n"
    assert out[4] == "done \n"
    assert out[5] == "nil: model not loaded: no such model\n"
    assert out[6] == "ok tiny.gguf 0 -1\n"
    assert out[7] == want + "\n"
    async with client.connect(address) as c:
        ctl = (await c.read_file("ctl")).decode()
    assert "state loaded" in ctl and "ctx 512" in ctl  # a load without ctx keeps the node's


async def test_model_context_says_why_a_reply_ended(start_node, dis):
    address, node = await start_node()
    await greedy_at(address, maxtokens=3)
    out = await drive(dis, ["load tiny.gguf 512 0", f"eval {PROMPT}", "reason"],
                      setup=f"mount -A tcp!127.0.0.1!{port(address)} /n/llama || exit mount")
    assert out[1] == (await ask(address, PROMPT)) + "\n"
    assert out[2] == "length\n"  # cut by maxtokens
    assert not node.tree.table.sessions  # its session closed after the turn


async def test_model_context_without_a_mount(dis):
    out = await drive(dis, ["load tiny.gguf 512 0", "eval hello"])
    assert out[0].startswith("nil: can't open /n/llama/ctl: "), out
    # No ModelContext was made: the method call on nil is caught, not raised.
    assert out[1].startswith("nil: llamacpp: "), out


# -- DisNode ---------------------------------------------------------------------------

async def test_disnode(start_node, node_process, dis, dead_port):
    address, _ = await start_node()
    await greedy(address)
    want = await ask(address, PROMPT)
    process, other = node_process
    await greedy(other)
    dead = dead_port
    out = await drive(dis, [
        f"node a 127.0.0.1 {port(address)}",
        "node byname localhost " + port(address),  # a name: needs ndb/cs, started if missing
        f"node dead 127.0.0.1 {dead}",
        f"node doomed 127.0.0.1 {port(other)}",
        "send a x",  # not yet connected
        "connect a",
        "stat /n/ctl",  # mounted in a namespace private to the node
        f"send a {PROMPT}",
        "connect byname",
        f"send byname {PROMPT}",
        "connect dead",
        "state dead",
        "connect doomed",
        f"send doomed {PROMPT}",
        f"os {KILL} -9 {process.pid}",
        f"send doomed {PROMPT}",
        "state doomed",
        "disconnect a",
        "state a",
        "send a x",
        "connect a",  # again after disconnect
        f"send a {PROMPT}",
    ])
    assert out[4] == "nil: node a not connected\n"
    assert out[5] == "0 \n"
    assert out[6] == "absent\n"
    assert out[7] == want + "\n"
    assert out[8] == "0 \n", out[8]
    assert out[9] == want + "\n"
    assert out[10].startswith(f"-1 can't dial tcp!127.0.0.1!{dead}: "), out[10]
    assert "refused" in out[10]
    assert out[11] == "connected 0 failed 1\n"
    assert out[12] == "0 \n"
    assert out[13] == want + "\n"
    assert out[15].startswith("nil: node doomed: "), out[15]
    assert out[16] == "connected 0 failed 1\n"
    assert out[18] == "connected 0 failed 0\n"
    assert out[19] == "nil: node a not connected\n"
    assert out[20] == "0 \n"
    assert out[21] == want + "\n"


async def test_disnode_errors_from_a_live_node_are_not_failures(start_node, dis):
    address, _ = await start_node(ctx=64)
    async with client.connect(address) as c:
        await c.write_file("ctl", "unload")
    out = await drive(dis, [
        f"node a 127.0.0.1 {port(address)}",
        "connect a",
        "send a hello",
        "state a",
    ])
    assert out[2] == "nil: node a: model not loaded: no such model\n"
    assert out[3] == "connected 1 failed 0\n"


# -- NetworkCoordinator ----------------------------------------------------------------

async def test_network_coordinator_balance_and_failover(start_node, node_process, dis, dead_port):
    a, _ = await start_node()
    b, _ = await start_node()
    process, c = node_process
    for addr in (a, b, c):
        await greedy(addr)
    want = await ask(a, PROMPT)
    dead = dead_port
    out = await drive(dis, [
        f"node a 127.0.0.1 {port(a)}", f"node b 127.0.0.1 {port(b)}", f"node c 127.0.0.1 {port(c)}",
        f"node dead 127.0.0.1 {dead}", "nc one", "nc two",
        "balance one",                                        # 6: empty
        "connect a", "connect b", "connect c", "connect dead",
        "add one a", "add one b", "add one c", "add one dead", "add two a",
        "balance one", "balance one", "balance one", "balance one",  # 16-19: a b c a (dead skipped)
        "balance two", "balance two",                         # 20-21: a a, unaffected by one
        f"os {KILL} -9 {process.pid}",
        # Some meet c dead at once: a worker's check of the node's mount runs
        # while c's process hangs up (once it unmounted too, and emu froze).
        f"pdispatch one 6 {PROMPT}",                          # 23: at once, some meet c
        "state c",                                            # 24
        "balance one", "balance one", "balance one",           # 25-27: c is skipped
        "remove one a", "remove one nosuch",                  # 28-29
        "balance one", "balance one",                         # 30-31
        "disconnect b",
        f"dispatch one {PROMPT}",                             # 33: all failed
        f"dispatch two {PROMPT}",                             # 34: two still works
    ])
    assert out[6] == "nil: no nodes\n"
    assert out[10].startswith("-1 ")
    assert out[16:20] == ["a\n", "b\n", "c\n", "a\n"]
    assert out[20:22] == ["a\n", "a\n"]
    # Six dispatches at once over b, c (killed) and a: every one is answered.
    assert out[23] == (want + "\n") * 6, out[23]
    assert out[24] == "connected 0 failed 1\n"
    assert set(out[25:28]) == {"a\n", "b\n"} and out[25] != out[26]
    assert out[28] == "done \n" and out[29] == "done no node nosuch\n"
    assert out[30:32] == ["b\n", "b\n"]
    assert out[33].startswith("nil: no node to dispatch to: no connected node has not failed"), out[33]
    assert out[34] == want + "\n"


async def test_dispatch_reports_every_failure(start_node, dis):
    a, _ = await start_node()
    b, _ = await start_node()
    for addr in (a, b):
        async with client.connect(addr) as c:
            await c.write_file("ctl", "unload")
    out = await drive(dis, [
        f"node a 127.0.0.1 {port(a)}", f"node b 127.0.0.1 {port(b)}", "nc one",
        "connect a", "connect b", "add one a", "add one b",
        "dispatch one hello",
    ])
    assert out[7] == "nil: all nodes failed: node a: model not loaded: no such model; node b: model not loaded: no such model\n", out[7]


# -- the llama command -----------------------------------------------------------------

async def node_session_reply(address: str, prompt: str, *settings: str) -> str:
    async with client.connect(address) as c:
        async with await c.open("clone", wire.ORDWR) as ctl:
            n = (await ctl.read()).decode().strip()
            for s in settings:
                await ctl.fid.write(s.encode(), 0)
            async with await c.open(f"{n}/data", wire.ORDWR) as f:
                await f.write(prompt)
                reply = (await f.read_all()).decode()
            await ctl.fid.write(b"close", 0)
            return reply


async def test_llama_command(start_node, dis, dead_port):
    address, node = await start_node()
    llama = host(dis[0].parent / "llama.dis")
    want = await node_session_reply(address, PROMPT, "temperature 0", "maxtokens 24")
    want_stdin = await node_session_reply(address, PROMPT + "\n", "temperature 0", "maxtokens 8")
    dead = dead_port
    script = f"""
load std
{MNTPT}
mount -A tcp!127.0.0.1!{port(address)} /n/llama || exit mount
echo ---args
{llama} -t 0 -n 24 {PROMPT}
echo ---stdin
echo {PROMPT} | {llama} -t 0 -n 8
echo ---pipe
{llama} -t 0 -n 24 {PROMPT} | wc -c
echo ---addr
{llama} -a tcp!127.0.0.1!{port(address)} -t 0 -n 24 {PROMPT}
echo ---mount
unmount /n/llama
mkdir -p /n/other
mount -A tcp!127.0.0.1!{port(address)} /n/other
{llama} -m /n/other -t 0 -n 24 {PROMPT}
echo ---raw
{llama} -m /n/other -r -s 'Be brief.' -t 0 -n 24 {PROMPT}
echo ---dead
{llama} -a tcp!127.0.0.1!{dead} hello
echo ---status $status
{llama} -m /n/nowhere hello
echo ---status $status
echo -n '' | {llama} -m /n/other
echo ---status $status
{llama} -t warm hello
echo ---status $status
echo ---end
"""
    result = await inferno(script)
    assert result.status == "", (result.stdout, result.stderr)
    out = result.stdout
    section = lambda a, b: out.split(f"---{a}\n")[1].split(f"---{b}")[0]
    assert section("args", "stdin") == want and len(want) > 20
    assert section("stdin", "pipe") == want_stdin
    assert section("pipe", "addr").strip() == str(len(want))  # wc -c counts characters
    assert section("addr", "mount") == want
    assert section("mount", "raw") == want
    assert section("raw", "dead") == want  # a model without a template: raw anyway, the system unused
    statuses = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("---status")]
    assert statuses[0].startswith(f"can't dial tcp!127.0.0.1!{dead}"), statuses
    assert statuses[1].startswith("can't open /n/nowhere/clone"), statuses
    assert statuses[2].lstrip("|").startswith("no prompt"), statuses  # a pipeline's status
    assert statuses[3] == "bad temperature: warm", statuses
    lines = result.stderr.splitlines()
    cut = [e for e in lines if e == "llama: the reply was cut short (reason=length)"]
    errors = [e for e in lines if e not in cut]
    assert len(cut) == 6, result.stderr  # every -n reply: maxtokens ended it
    assert len(errors) == 4 and all(e.startswith("llama: ") for e in errors), result.stderr
    # Every session the command made was closed.
    await wait_until(lambda: not node.tree.table.sessions, "every session to be closed", timeout=5)


# -- against a coordinator -------------------------------------------------------------

async def test_inferno_against_a_coordinator(nursery, start_node, dis):
    nodes = [await start_node() for _ in range(2)]
    for address, _ in nodes:
        await greedy(address)
    want = await ask(nodes[0][0], PROMPT + "\n")
    plain = await ask(nodes[0][0], PROMPT)
    config = {
        "name": "limbo",
        "network": {"loadBalancing": "round-robin", "healthCheckInterval": 500, "requestTimeout": 20000,
                    "listen": "tcp!127.0.0.1!0"},
        "nodes": [{"id": f"node-{i}", "address": "127.0.0.1", "port": int(port(a))}
                  for i, (a, _) in enumerate(nodes)],
    }
    mgr = DeploymentManager(config, seed=1)
    await mgr.deploy(nursery, timeout=30)
    await greedy(mgr.address)  # the coordinator's defaults, as the nodes': they go to the nodes with each turn
    module, driver = dis
    script = f"""
load std
{MNTPT}
mount -A tcp!127.0.0.1!{port(mgr.address)} /n/llama || exit mount
echo '{PROMPT}' > /n/llama/new/data; cat /n/llama/reply
echo ---
echo '{PROMPT}' > /n/llama/new/data; cat /n/llama/reply
echo ---
{host(driver)} {host(module)} 'node coord 127.0.0.1 {port(mgr.address)}' 'connect coord' 'send coord {PROMPT}'
"""
    result = await inferno(script)
    assert result.status == "", (result.stdout, result.stderr)
    first, second, driven = result.stdout.split("---\n")
    assert first == second == want and len(want) > 20
    # A DisNode can be a coordinator: the same tree.
    assert driven.endswith(f"=== send coord {PROMPT}\n{plain}\n=== end\n"), driven


# -- Dis-VM isolates -------------------------------------------------------------------

async def test_isolate_serves_its_node(start_node, isolates):
    address, node = await start_node()
    await greedy(address)
    want = await ask(address, PROMPT)
    iso = isolates()
    with trio.fail_after(30):  # a name: the isolate starts ndb/cs for it
        await iso.start_async(f"tcp!localhost!{port(address)}", "tiny.gguf", 512, 0, 0)
    assert iso.alive() and iso.address != address
    assert "isolate: serving" in iso.log()
    async with client.connect(iso.address) as c:
        ctl = (await c.read_file("ctl")).decode()
        assert "ctx 512" in ctl and "state loaded" in ctl  # loaded through ModelContext.loadmodel
        assert await ask(iso.address, PROMPT) == want
        # reply is per connection: each client connection has its own to the node
        await c.write_file("new/data", PROMPT)
        assert (await c.read_file("reply")).decode() == want
        async with client.connect(iso.address) as other:
            assert await other.read_file("reply") == b""  # no prompt on this connection
        # streaming and clone sessions pass through
        async with await c.open("clone", wire.ORDWR) as ctl_f:
            n = (await ctl_f.read()).decode().strip()
            await ctl_f.fid.write(b"maxtokens 3", 0)
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            await f.read_all()
        status = (await c.read_file(f"{n}/status")).decode()
        assert status.startswith("done") and "tokens_out=3" in status
    iso.check()
    iso.stop()
    assert not iso.alive()
    iso.check()  # stopped on purpose is not death
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(port(iso.address))), timeout=1).close()


async def test_isolate_killed_under_load(start_node, isolates):
    address, node = await start_node(slots=4)
    async with client.connect(address) as c:
        await c.write_file("ctl", "defaults temperature 0\ndefaults maxtokens 4000")
    iso = isolates()
    with trio.fail_after(30):
        await iso.start_async(address, "tiny.gguf", 8192, 0, 0)
    got = {}
    failures = []
    started = trio.Event()

    async def stream(i):
        try:
            async with client.connect(iso.address) as c:
                async with await c.open("data", wire.ORDWR) as f:
                    await f.write(PROMPT)
                    got[i] = b""
                    async for piece in f.stream():
                        got[i] += piece
                        if all(len(got.get(k, b"")) > 50 for k in range(3)):
                            started.set()
        except client.Error as e:
            failures.append((i, e))

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(3):
                n.start_soon(stream, i)
            await started.wait()
            iso.kill()  # emu dies mid-stream
    assert len(failures) == 3, (failures, {k: len(v) for k, v in got.items()})
    assert not iso.alive()
    with pytest.raises(isolation.IsolationError, match="died"):
        iso.check()
    with trio.fail_after(2):
        reason = await iso.wait_dead()
    assert "node-0" in reason and "died" in reason
    with pytest.raises(client.Error):
        async with client.connect(iso.address):
            pass
    # The node itself lives on, and the isolate's connections are gone from it.
    await wait_until(lambda: not node.server.connections, "the isolate's connections to go", timeout=5)
    async with client.connect(address) as c:
        await c.write_file("ctl", "defaults maxtokens 4")
    assert len(await ask(address, PROMPT)) > 0


async def test_isolate_errors(start_node, isolates, monkeypatch, tmp_path, dead_port):
    address, _ = await start_node()
    with pytest.raises(isolation.IsolationError, match="no such model file: nosuch.gguf"):
        await isolates("bad").start_async(address, "nosuch.gguf", 512, 0, 0)
    dead = dead_port
    with pytest.raises(isolation.IsolationError, match=f"can't dial node tcp!127.0.0.1!{dead}"):
        await isolates("dead").start_async(f"tcp!127.0.0.1!{dead}", "tiny.gguf", 512, 0, 0)
    monkeypatch.setenv("INFERNO_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert isolation.find_emu() is None
    with pytest.raises(isolation.EmuNotFound, match="needs Inferno's emu"):
        await isolates("none").start_async(address, "tiny.gguf", 512, 0, 0)
