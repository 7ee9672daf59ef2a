"""Inferno's own 9P client (hosted emu) against ramfs and the node.

Each test runs one Inferno sh script in a headless emu (tests/inferno.py)
while the server runs in the test's nursery; every test skips without emu.
"""

from __future__ import annotations

import re

from styxfs import client, ramfs

from .conftest import start_server
from .inferno import inferno, port, requires_emu
from .support import PROMPT, ask_at, greedy_at, prompt_tokens, status_fields, wait_until

async def quiesce(server) -> None:
    """emu has gone: its connection closes and leaves nothing behind."""
    await wait_until(lambda: not server.connections, "emu's connection to close", timeout=5)
    assert server.fid_count() == 0 and server.outstanding_count() == 0


@requires_emu
async def test_ramfs_from_inferno(nursery):
    server = ramfs.make_server()
    address = await start_server(nursery, server)
    # Long names: ls -l needs several 2048-byte directory reads.
    names = [f"file-{i:03d}-" + "x" * 60 for i in range(60)]
    script = f"""
load std
mount -Ac tcp!127.0.0.1!{port(address)} /n/remote || exit mount
echo hello > /n/remote/f
echo ---cat
cat /n/remote/f
mkdir /n/remote/d
mv /n/remote/f /n/remote/d/g
echo ---lsl
ls -l /n/remote/d
rm /n/remote/d/g
echo ---ls
ls /n/remote/d
echo ---end
mkdir /n/remote/many
for (n in {' '.join(names)}) {{ echo $n > /n/remote/many/$n }}
echo ---many
ls -l /n/remote/many
echo ---manyend
cat /n/remote/many/{names[-1]}
unmount /n/remote
"""
    result = await inferno(script)
    assert result.status == "", (result.stdout, result.stderr)
    assert result.stderr == ""
    out = result.stdout
    assert "---cat\nhello\n---lsl\n" in out
    lsl = out.split("---lsl\n")[1].split("---ls\n")[0]
    assert re.fullmatch(r"--rw-\S+ M \d+ \S+ \S+ 6 .* /n/remote/d/g\n", lsl), lsl
    assert "---ls\n---end\n" in out
    many = out.split("---many\n")[1].split("---manyend\n")[0].splitlines()
    assert sorted(line.split()[-1] for line in many) == sorted(f"/n/remote/many/{n}" for n in names)
    assert all(line.split()[5] == str(len(names[0]) + 1) for line in many)
    assert out.endswith("---manyend\n" + names[-1] + "\n")
    await quiesce(server)
    root = server.tree.root
    assert set(root.files) == {"d", "many"} and not root.files["d"].files


@requires_emu
async def test_node_from_inferno(start_node):
    address, node = await start_node()
    await greedy_at(address, maxtokens=24)
    script = f"""
load std
mount -A tcp!127.0.0.1!{port(address)} /n/remote || exit mount
echo 'Once upon a time' > /n/remote/new/data
echo ---reply
cat /n/remote/reply
echo ---model
cat /n/remote/model
echo ---ls
ls -l /n/remote
echo ---ctl
echo frobnicate > /n/remote/ctl
echo ---end
"""
    result = await inferno(script)
    assert result.status == "", (result.stdout, result.stderr)
    out = result.stdout
    reply = out.split("---reply\n")[1].split("---model\n")[0]
    want = (await ask_at(address, PROMPT + "\n")).decode()
    assert reply == want and len(want) > 20
    model = out.split("---model\n")[1].split("---ls\n")[0]
    assert re.search(r"^architecture llama$", model, re.M), model
    ls = out.split("---ls\n")[1].split("---ctl\n")[0].splitlines()
    listed = {line.split()[-1].rsplit("/", 1)[1] for line in ls}
    assert {"ctl", "data", "reply", "clone", "new", "model", "metrics"} <= listed, ls
    assert "invalid ctl request" in result.stderr, result.stderr
    assert out.endswith("---ctl\n---end\n")  # the error went to stderr, not stdout
    await quiesce(node.server)


@requires_emu
async def test_long_prompt_from_inferno(start_node, tmp_path):
    address, node = await start_node(ctx=10240)  # the tiny model's tokens are mostly single letters
    await greedy_at(address, maxtokens=1)
    words = ("the a of and to in is was it that he she they we you on with as for his her "
             "at by from be this have or had not but what all were when there can an your").split()
    prompt, i = "", 0
    while len(prompt) < 9000:  # more than one 8192-byte Twrite
        prompt, i = prompt + words[i % len(words)] + " ", i + 1
    prompt += "\n"
    path = tmp_path / "prompt"
    path.write_text(prompt)
    script = f"""
load std
mount -A tcp!127.0.0.1!{port(address)} /n/remote || exit mount
cat '#U*{path}' > /n/remote/new/data
echo ---reply
cat /n/remote/reply
echo ---end
"""
    result = await inferno(script)
    assert result.status == "", (result.stdout, result.stderr)
    [(number, session)] = list(node.tree.table.sessions.items())
    async with client.connect(address, uname=session.owner) as c:
        got = status_fields(await c.read_file(f"{number}/status"))
        await c.write_file("new/data", prompt)
        [other] = [n for n in node.tree.table.sessions if n != number]
        await c.read_file(f"{other}/reply")  # EOF when done
        want = status_fields(await c.read_file(f"{other}/status"))
    assert got["state"] == "done" and want["state"] == "done"
    assert int(got["tokens_in"]) >= len(prompt) // 2
    assert prompt_tokens(got) == prompt_tokens(want)  # (the second found the first's in the cache)
    assert got["tokens_out"] == want["tokens_out"] == "1"
    await quiesce(node.server)


@requires_emu
async def test_clone_from_inferno(start_node):
    address, node = await start_node()
    script = f"""
load std
mount -A tcp!127.0.0.1!{port(address)} /n/remote || exit mount
{{ n=`{{read 10}}; echo $n; echo 'temperature 0' >[1=0] }} <> /n/remote/clone
echo ---params
cat /n/remote/$n/params
echo ---end
"""
    result = await inferno(script)
    assert result.status == "", (result.stdout, result.stderr)
    out = result.stdout
    number = out.split("---params\n")[0].strip()
    assert number.isdigit(), out
    params = out.split("---params\n")[1].split("---end\n")[0]
    assert re.search(r"^temperature 0(\.0*)?$", params, re.M), params
    assert int(number) in node.tree.table.sessions or number in node.tree.table.sessions
    await quiesce(node.server)


@requires_emu
async def test_the_design_cards_loop_runs_past_the_cap_from_inferno(start_node):
    """40 times `echo prompt > new/data; cat reply` through one mount of a node
    with a cap of 8 sessions, never writing close."""
    address, node = await start_node(max_sessions=8)
    await greedy_at(address, maxtokens=4)
    script = f"""
load std
mount -A tcp!127.0.0.1!{port(address)} /n/remote || exit mount
for i in {' '.join(str(i) for i in range(40))} {{
    echo prompt $i > /n/remote/new/data
    echo ---$i
    cat /n/remote/reply
    echo
}}
echo ---end
"""
    result = await inferno(script, timeout=60)
    assert result.status == "", (result.stdout, result.stderr)
    for i in range(40):
        reply = result.stdout.split(f"---{i}\n")[1].split("\n---")[0]
        assert reply == (await ask_at(address, f"prompt {i}\n")).decode() and reply, i
    assert node.tree.table.reclaimed >= 32 and len(node.tree.table.sessions) <= 8
