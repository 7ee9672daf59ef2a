"""Access: shared-secret authentication through Tauth, and ownership."""

from __future__ import annotations

import subprocess

import pytest
import trio

from coordinator import DeploymentManager
from styxfs import client, wire
from styxfs.auth import mac, secret_authenticator

from .support import LLAMAFS, PROMPT, ROOT


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("correct horse battery staple\n")
    return str(path)


async def test_secret_required_and_checked(start_fake_node, secret_file):
    address, node = await start_fake_node(auth_secret_file=secret_file)
    good = secret_authenticator(b"correct horse battery staple")
    async with client.connect(address, authenticate=good) as c:
        await c.write_file("ctl", "defaults maxtokens 4")
        assert await c.read_file("model")
    with pytest.raises(client.ServerError, match="authentication failed"):
        async with client.connect(address):
            pass
    with pytest.raises(client.ServerError, match="authentication failed"):
        async with client.connect(address, authenticate=secret_authenticator(b"wrong")):
            pass
    # `llamafs ask` authenticates too.
    ask = await trio.to_thread.run_sync(lambda: subprocess.run(
        LLAMAFS + ["ask", "--addr", address, "--auth-secret-file", secret_file, PROMPT],
        cwd=ROOT, capture_output=True, text=True, timeout=60))
    assert ask.returncode == 0 and ask.stdout.strip(), ask.stderr
    bad = await trio.to_thread.run_sync(lambda: subprocess.run(
        LLAMAFS + ["ask", "--addr", address, PROMPT], cwd=ROOT, capture_output=True, text=True, timeout=60))
    assert bad.returncode != 0 and "authentication failed" in bad.stderr
    assert node.server.fid_count() <= 1  # nothing left behind by the failed attempts


async def test_a_recorded_exchange_cannot_be_replayed(start_fake_node, secret_file):
    address, _ = await start_fake_node(auth_secret_file=secret_file)
    secret = b"correct horse battery staple"
    stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit("!", 1)[1]))
    c = client.Client(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c._reader)
        await c.version()
        await c.rpc(wire.Tauth(0, 1, "glenda", ""))
        snonce = (await c.rpc(wire.Tread(0, 1, 0, 100))).data.split()[1].decode()
        recorded = f"response abc {mac(secret, 'client', snonce, 'abc', 'glenda', '')}\n".encode()
        await c.rpc(wire.Twrite(0, 1, 0, recorded))
        await c.rpc(wire.Tattach(0, 2, 1, "glenda", ""))  # the real exchange works
        # The same response to a new challenge, or for another user, fails.
        await c.rpc(wire.Tauth(0, 3, "glenda", ""))
        await c.rpc(wire.Tread(0, 3, 0, 100))
        with pytest.raises(client.ServerError, match="authentication failed"):
            await c.rpc(wire.Twrite(0, 3, 0, recorded))
        with pytest.raises(client.ServerError, match="authentication failed"):
            await c.rpc(wire.Tattach(0, 4, 3, "glenda", ""))
        with pytest.raises(client.ServerError, match="authentication failed"):
            await c.rpc(wire.Tattach(0, 5, 1, "bob", ""))  # afid 1 was glenda's
        c.stop()
    await stream.aclose()


async def test_only_the_owner_writes_the_root_ctl(start_fake_node):
    address, _ = await start_fake_node(owner="alice")
    async with client.connect(address, uname="bob") as bob:
        assert "role node" in (await bob.read_file("ctl")).decode()
        with pytest.raises(client.ServerError, match="permission denied"):
            await bob.write_file("ctl", "unload")
    async with client.connect(address, uname="alice") as alice:
        await alice.write_file("ctl", "defaults maxtokens 3")


async def test_coordinator_with_secret_and_owner(nursery, start_fake_node, secret_file):
    addresses = [(await start_fake_node(auth_secret_file=secret_file))[0] for _ in range(2)]
    config = {"name": "secure", "authSecretFile": secret_file, "owner": "alice",
              "network": {"listen": "tcp!127.0.0.1!0", "healthCheckInterval": 300},
              "nodes": [{"id": f"n{i}", "address": "127.0.0.1", "port": int(a.rsplit("!", 1)[1])}
                        for i, a in enumerate(addresses)]}
    mgr = DeploymentManager(config)
    await mgr.deploy(nursery, timeout=30)  # its connections to the nodes authenticate
    assert (await mgr.evaluate(PROMPT, maxtokens=4)).strip()
    good = secret_authenticator(b"correct horse battery staple")
    with pytest.raises(client.ServerError, match="authentication failed"):
        async with client.connect(mgr.address, uname="alice"):
            pass
    async with client.connect(mgr.address, uname="bob", authenticate=good) as bob:
        with pytest.raises(client.ServerError, match="permission denied"):
            await bob.listdir("nodes")
        with pytest.raises(client.ServerError, match="permission denied"):
            await bob.write_file("ctl", "drain n0")
    async with client.connect(mgr.address, uname="alice", authenticate=good) as alice:
        assert {d.name for d in await alice.listdir("nodes")} == {"n0", "n1"}
