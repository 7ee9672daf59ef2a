"""The Inferno side of shared-secret authentication (llamafs-secret-1 over Tauth).

DisNode.secret and Llamacpp's authmount, `llama -k`, and an isolate in front
of a node started with --auth-secret-file. Like tests/test_limbo.py, these run
Inferno's own tools and skip when no emu is found.
"""

from __future__ import annotations

import pytest
import trio

from coordinator import isolation
from styxfs import auth, client, wire

from .inferno import requires_emu
from .inferno import inferno, port
from .limbo_driver import GREEDY, MNTPT, drive, host
from .support import PROMPT, wait_until

pytestmark = requires_emu

SECRET = b"correct horse battery staple"
LONG = bytes(range(33, 123)) + b"x" * 30  # longer than HMAC-SHA256's 64-byte block: the key is hashed


@pytest.fixture
def secrets(tmp_path):
    """name -> host path of a secret file: right (CRLF-ended), long, wrong, empty."""
    files = {"right": SECRET + b"\r\n", "long": LONG + b"\n", "wrong": b"not the secret\n", "empty": b"\n"}
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = str(tmp_path / name)
    return out


def inferno_path(p: str) -> str:
    return "#U*" + p


async def prepare(address: str, secret: bytes) -> str:
    """Greedy defaults on an authenticated node; its reply to PROMPT."""
    async with client.connect(address, authenticate=auth.secret_authenticator(secret)) as c:
        await c.write_file("ctl", GREEDY)
        async with await c.open("data", wire.ORDWR) as f:
            await f.write(PROMPT)
            return (await f.read_all()).decode()


class Impostor(auth.AuthConversation):
    """A server that does not know the secret: takes any response, proves with its own."""

    async def write(self, offset: int, data: bytes) -> int:
        fields = data.decode().split()
        self.cnonce, self.ok, self.state = fields[1], True, "proof"
        return len(data)


class ImpostorAuthenticator(auth.SecretAuthenticator):
    async def auth(self, conn, m):
        from styxfs.server import Fid
        from styxfs.tree import Caller

        conn.check_new_fid(m.afid)
        handle = Impostor(self.secret, m.uname, m.aname)
        conn.fids[m.afid] = Fid(m.afid, Caller(m.uname, conn.info, m.aname), [handle.entry], handle=handle,
                                mode=wire.ORDWR)
        return wire.Rauth(m.tag, handle.entry.qid)


async def test_disnode_with_a_secret(start_node, dis, secrets):
    address, _ = await start_node(auth_secret_file=secrets["right"])
    long_address, _ = await start_node(auth_secret_file=secrets["long"])
    plain, _ = await start_node()
    impostor, impostor_node = await start_node()
    impostor_node.server.authenticator = ImpostorAuthenticator(b"something else")
    want = await prepare(address, SECRET)
    assert await prepare(long_address, LONG) == want and len(want) > 20
    p = port(address)
    out = await drive(dis, [
        f"node a 127.0.0.1 {p}", f"secret a {inferno_path(secrets['right'])}",       # 0 1
        "connect a", f"send a {PROMPT}", "state a",                                   # 2 3 4
        f"node long 127.0.0.1 {port(long_address)}", f"secret long {inferno_path(secrets['long'])}",
        "connect long", f"send long {PROMPT}",                                        # 7 8
        f"node wrong 127.0.0.1 {p}", f"secret wrong {inferno_path(secrets['wrong'])}",
        "connect wrong", "state wrong", "send wrong x",                               # 11 12 13
        f"node none 127.0.0.1 {p}", "connect none", "state none",                     # 15 16
        f"node plain 127.0.0.1 {port(plain)}", f"secret plain {inferno_path(secrets['right'])}",
        "connect plain",                                                              # 19
        f"node impostor 127.0.0.1 {port(impostor)}", f"secret impostor {inferno_path(secrets['right'])}",
        "connect impostor", "state impostor",                                         # 22 23
        f"node empty 127.0.0.1 {p}", f"secret empty {inferno_path(secrets['empty'])}",  # 25
        f"secret empty {inferno_path(secrets['right'] + '.missing')}",                # 26
        "disconnect a", "connect a", f"send a {PROMPT}",                              # 28 29
    ], timeout=90)  # three generations: slow on a busy machine
    assert out[1] == f"ok {len(SECRET)}\n"  # CR LF stripped
    assert out[2] == "0 \n"
    assert out[3] == want + "\n"
    assert out[4] == "connected 1 failed 0\n"
    assert out[7] == "0 \n"
    assert out[8] == want + "\n"
    # A wrong secret: the server refuses the response.
    assert out[11] == f"-1 can't mount tcp!127.0.0.1!{p}: authentication failed: permission denied\n", out[11]
    assert out[12] == "connected 0 failed 1\n"
    assert out[13] == "nil: node wrong not connected\n"
    # No secret for a node that requires one: the attach is refused.
    assert out[15] == f"-1 can't mount tcp!127.0.0.1!{p}: authentication failed: permission denied\n", out[15]
    assert out[16] == "connected 0 failed 1\n"
    # A secret for a node without authentication.
    assert out[19].startswith("-1 ") and "authentication failed: the server said authentication not required" \
        in out[19], out[19]
    # A server that takes any response but cannot prove it knows the secret.
    assert out[22].endswith("authentication failed: the server does not know the secret\n"), out[22]
    assert out[23] == "connected 0 failed 1\n"
    assert out[25].startswith("nil: ") and "the secret file is empty" in out[25], out[25]
    assert out[26].startswith("nil: can't open secret file "), out[26]
    assert out[28] == "0 \n" and out[29] == want + "\n"


async def test_llama_with_a_secret(start_node, dis, secrets):
    address, node = await start_node(auth_secret_file=secrets["right"])
    await prepare(address, SECRET)
    async with client.connect(address, authenticate=auth.secret_authenticator(SECRET)) as c:
        async with await c.open("clone", wire.ORDWR) as ctl:
            n = (await ctl.read()).decode().strip()
            for s in ("temperature 0", "maxtokens 24"):
                await ctl.fid.write(s.encode(), 0)
            async with await c.open(f"{n}/data", wire.ORDWR) as f:
                await f.write(PROMPT)
                want = (await f.read_all()).decode()
            await ctl.fid.write(b"close", 0)
    llama = host(dis[0].parent / "llama.dis")  # finds llamacpp.dis beside it
    a = f"tcp!127.0.0.1!{port(address)}"
    right, wrong = host(secrets["right"]), host(secrets["wrong"])
    script = f"""
load std
{MNTPT}
echo ---right
{llama} -a {a} -k {right} -t 0 -n 24 {PROMPT}
echo ---module
{llama} -a {a} -k {right} -M {host(dis[0])} -m /n/llama -t 0 -n 24 {PROMPT}
echo ---wrong
{llama} -a {a} -k {wrong} hello
echo ---status $status
{llama} -a {a} hello
echo ---status $status
{llama} -k {right} hello
echo ---status $status
{llama} -a {a} -k {right} -M /dis/nosuch.dis hello
echo ---status $status
echo ---end
"""
    result = await inferno(script, timeout=90)
    assert result.status == "", (result.stdout, result.stderr)
    out = result.stdout
    assert out.split("---right\n")[1].split("---module")[0] == want and len(want) > 20
    assert out.split("---module\n")[1].split("---wrong")[0] == want
    statuses = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("---status")]
    assert statuses[0] == f"can't mount {a} on /n: authentication failed: permission denied", statuses
    assert statuses[1] == f"can't mount {a} on /n: authentication failed: permission denied", statuses
    assert statuses[2] == "-k needs -a", statuses
    assert statuses[3].startswith("can't load /dis/nosuch.dis"), statuses
    await wait_until(lambda: not node.tree.table.sessions, "every session to be closed", timeout=5)


async def test_isolate_in_front_of_an_authenticated_node(start_node, isolates, secrets):
    address, _ = await start_node(auth_secret_file=secrets["right"])
    want = await prepare(address, SECRET)
    iso = isolates()
    with trio.fail_after(30):
        await iso.start_async(address, "tiny.gguf", 512, 0, 0, auth_secret_file=secrets["right"])
    # The export is on loopback and not authenticated; behind it, the node's is.
    async with client.connect(iso.address) as c:
        ctl = (await c.read_file("ctl")).decode()
        assert "ctx 512" in ctl and "state loaded" in ctl
        async with await c.open("data", wire.ORDWR) as f:
            await f.write(PROMPT)
            assert (await f.read_all()).decode() == want
    # Without the secret, or with a wrong one, the isolate cannot start.
    with pytest.raises(isolation.IsolationError, match="authentication failed"):
        await isolates("none").start_async(address, "tiny.gguf", 512, 0, 0)
    with pytest.raises(isolation.IsolationError, match="authentication failed"):
        await isolates("wrong").start_async(address, "tiny.gguf", 512, 0, 0, auth_secret_file=secrets["wrong"])
