"""TLS on the 9P links: tls!host!port on a node and on the coordinator's
dials, certificates from a CA of the test's own (testca.py), mutual TLS,
Tauth inside TLS, and errors that say what to fix."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from coordinator import DeploymentManager
from styxfs import client, dial, tls
from styxfs.auth import secret_authenticator
from styxfs.llama.cli import serve

from .support import PROMPT, deploy
from .testca import TestCA


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs: ours signs a node's certificate (for 127.0.0.1) and a
    client's; a stranger's signs a client certificate we do not trust."""
    directory = tmp_path_factory.mktemp("pki")
    ca, stranger = TestCA(directory / "ours"), TestCA(directory / "stranger", "a stranger's CA")
    return {"ca": ca.path, "node": ca.issue("node", ["127.0.0.1", "localhost"]),
            "other-name": ca.issue("other", ["node.example"]), "client": ca.issue("client", client=True),
            "stranger": stranger.path, "stranger-client": stranger.issue("client", client=True)}


@pytest.fixture
def start_tls_node(start_fake_node, pki):
    """start_tls_node(**NodeOptions fields) -> tls!127.0.0.1!PORT, a fake-model node behind TLS."""

    async def start(cert="node", **options):
        cert_file, key_file = pki[cert]
        _, node = await start_fake_node(listen="tls!127.0.0.1!0", tls_cert=cert_file, tls_key=key_file, **options)
        return f"tls!127.0.0.1!{dial.listening_port(node.listeners)}"

    return start


async def read_ctl(address: str, **options) -> str:
    async with client.connect(address, **options) as c:
        return (await c.read_file("ctl")).decode()


def test_tls_dial_strings():
    assert dial.parse("tls!node.example!5641") == dial.Address("tls", "node.example", 5641)
    assert str(dial.parse("tls!*!5640")) == "tls!*!5640"
    assert dial.parse("tls!node.example").port == dial.DEFAULT_PORT
    with pytest.raises(ValueError, match="want tls!host!port"):
        dial.parse("tls!")
    with pytest.raises(ValueError, match="is not tcp, tls or unix"):
        dial.parse("udp!h!1")


def test_serve_wants_cert_and_key_with_tls(pki):
    runner = CliRunner()
    result = runner.invoke(serve, ["--listen", "tls!127.0.0.1!0", "--no-model"])
    assert result.exit_code == 2 and "needs --tls-cert and --tls-key" in result.output
    result = runner.invoke(serve, ["--listen", "tcp!127.0.0.1!0", "--tls-cert", pki["node"][0], "--no-model"])
    assert result.exit_code == 2 and "go with --listen tls!HOST!PORT" in result.output


def test_unusable_files_say_which():
    with pytest.raises(tls.TLSError, match="no-such.crt: no such file"):
        tls.server_context("no-such.crt", "no-such.key")
    with pytest.raises(tls.TLSError, match="needs both cert and key"):
        tls.client_context(cert="x.crt")


async def test_a_client_trusting_the_ca_connects(start_tls_node, pki):
    address = await start_tls_node()
    assert "state loaded" in await read_ctl(address, tls_context=tls.client_context(pki["ca"]))


async def test_an_untrusted_certificate_is_refused_clearly(start_tls_node, pki):
    address = await start_tls_node()
    with pytest.raises(client.ConnectionLost, match=rf"cannot connect to {address}: TLS: the server's certificate "
                                                    "is not trusted: unable to get local issuer certificate"):
        await read_ctl(address, tls_context=tls.client_context(pki["stranger"]))
    with pytest.raises(client.ConnectionLost, match="not trusted"):  # by default, the system's roots only
        await read_ctl(address)
    assert "state loaded" in await read_ctl(address, tls_context=tls.client_context(pki["ca"]))  # served on


async def test_the_host_name_is_checked(start_tls_node, pki):
    address = await start_tls_node(cert="other-name")  # a good certificate, for another name
    with pytest.raises(client.ConnectionLost, match="not trusted: IP address mismatch, certificate is not valid for .127.0.0.1."):
        await read_ctl(address, tls_context=tls.client_context(pki["ca"]))
    assert "state loaded" in await read_ctl(address, tls_context=tls.client_context(pki["ca"]),
                                            tls_name="node.example")


async def test_tls_and_plain_do_not_mix(start_tls_node, start_fake_node, pki):
    address = await start_tls_node()
    with pytest.raises(client.ConnectionLost):
        await read_ctl("tcp!" + address.split("!", 1)[1])
    plain, _ = await start_fake_node()
    with pytest.raises(client.ConnectionLost, match="TLS: the other end hung up in the handshake: is it listening"):
        await read_ctl("tls!" + plain.split("!", 1)[1], tls_context=tls.client_context(pki["ca"]))
    assert "state loaded" in await read_ctl(address, tls_context=tls.client_context(pki["ca"]))


async def test_mutual_tls_wants_a_client_certificate_it_signed(start_tls_node, pki, caplog):
    address = await start_tls_node(tls_client_ca=pki["ca"])
    for who in [tls.client_context(pki["ca"]), tls.client_context(pki["ca"], *pki["stranger-client"])]:
        with pytest.raises(client.ConnectionLost, match="TLS: the server hung up: it wants a client certificate"):
            await read_ctl(address, tls_context=who)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refusing a connection")]
    assert len(refusals) == 2 and all(r.startswith("refusing a connection: 127.0.0.1!") for r in refusals)
    assert "peer did not return a certificate" in refusals[0]
    assert "the client's certificate is not trusted" in refusals[1]
    assert "state loaded" in await read_ctl(address, tls_context=tls.client_context(pki["ca"], *pki["client"]))


async def test_tauth_inside_tls(start_tls_node, pki, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple\n")
    address = await start_tls_node(auth_secret_file=str(secret))
    context = tls.client_context(pki["ca"])
    with pytest.raises(client.ServerError, match="authentication failed"):
        await read_ctl(address, tls_context=context)
    with pytest.raises(client.Error, match="authentication"):
        await read_ctl(address, tls_context=context, authenticate=secret_authenticator(b"wrong"))
    good = secret_authenticator(b"correct horse battery staple")
    assert "state loaded" in await read_ctl(address, tls_context=context, authenticate=good)


def tls_config(addresses: list[str], **tls_section) -> dict:
    return {"name": "tls", "network": {"listen": "tcp!127.0.0.1!0", "healthCheckInterval": 200, "tls": tls_section},
            "nodes": [{"id": f"n{i}", "address": "127.0.0.1", "port": int(a.rsplit("!", 1)[1])}
                      for i, a in enumerate(addresses)]}


async def test_a_coordinator_trusting_the_ca_dials_its_nodes_over_tls(nursery, start_tls_node, pki):
    addresses = [await start_tls_node(tls_client_ca=pki["ca"]) for _ in range(2)]  # mutual TLS too
    cert, key = pki["client"]
    mgr = await deploy(nursery, tls_config(addresses, ca=pki["ca"], cert=cert, key=key))
    assert [n.address for n in mgr.pool.nodes] == addresses
    assert (await mgr.evaluate(PROMPT, maxtokens=4)).strip()


async def test_a_coordinator_not_trusting_it_is_refused_naming_the_node(nursery, start_tls_node, pki):
    address = await start_tls_node()
    mgr = DeploymentManager(tls_config([address], ca=pki["stranger"]))
    with pytest.raises(RuntimeError, match=rf"nodes not healthy after 2 s: n0 \(cannot connect to {address}: "
                                           "TLS: the server's certificate is not trusted"):
        await mgr.deploy(nursery, timeout=2)


def test_a_coordinator_config_with_missing_tls_files_says_so(tmp_path):
    from coordinator.config import ConfigError

    with pytest.raises(ConfigError, match="network.tls: TLS CA: .*nowhere.pem: no such file"):
        DeploymentManager(tls_config([], ca=str(tmp_path / "nowhere.pem")))


async def test_a_coordinator_without_tls_cannot_talk_to_tls_nodes(nursery, start_tls_node):
    address = await start_tls_node()
    config = tls_config([address])
    del config["network"]["tls"]
    with pytest.raises(RuntimeError, match="nodes not healthy after 2 s: n0"):
        await DeploymentManager(config).deploy(nursery, timeout=2)


def test_a_coordinator_listens_plain_and_says_so():
    from coordinator.config import ConfigError, DeploymentConfig

    with pytest.raises(ConfigError, match="network.listen: the coordinator listens on tcp or unix"):
        DeploymentConfig.from_dict({"network": {"listen": "tls!*!5640"}})
