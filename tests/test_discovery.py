"""Nodes found by DNS (coordinator/discovery.py): the pure parts, and a
coordinator reading SRV records from a DNS server of the test's own
(Debian's dnsmasq on a loopback port, with records the test writes)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from types import SimpleNamespace

import dns.exception
import dns.resolver
import pytest
import trio

from coordinator.config import ConfigError, DeploymentConfig, NodeConfig
from coordinator.discovery import Found, changes, lookup
from styxfs import dial

from .ports import reserved_ports
from .support import PROMPT, deploy, until_changed

SRV = "_9p._tcp.llamafs.test"


# ---- the pure parts ------------------------------------------------------------------------


def test_node_ids_and_dial_strings():
    found = Found("node-0.llamafs.test", "10.0.0.7", 5640, "node-0.llamafs.test")
    assert found.node_id("pool-a") == "pool-a:node-0.llamafs.test:5640"
    assert found.dial(tls=False) == "tcp!10.0.0.7!5640"
    assert found.dial(tls=True) == "tls!10.0.0.7!5640"


def test_changes_join_the_new_drain_the_gone_and_follow_the_moved():
    a, b, c = (Found(f"n{i}", "127.0.0.1", 5640 + i, f"n{i}") for i in range(3))
    known = {a.node_id("p"): a, b.node_id("p"): b}
    assert changes(known, {b, c}, "p") == ({"p:n2:5642": c}, {"p:n0:5640"}, {})
    assert changes(known, {a, b}, "p") == ({}, set(), {})
    b_again = Found("n1", "127.0.0.9", 5641, "n1")  # the same pod, started again elsewhere
    assert changes(known, {a, b_again}, "p") == ({}, set(), {"p:n1:5641": b_again})


class FakeResolver:
    """Answers from a dict (name, kind) -> records; a missing SRV or A is NXDOMAIN."""

    def __init__(self, records):
        self.records = records

    def resolve(self, name, kind, search=False):
        if (name, kind) not in self.records:
            raise dns.resolver.NXDOMAIN()
        return self.records[name, kind]


def test_lookup_of_srv_and_address_records():
    target = SimpleNamespace(to_text=lambda omit_final_dot: "n0.test")
    resolver = FakeResolver({(SRV, "SRV"): [SimpleNamespace(target=target, port=7000)],
                             ("n0.test", "A"): [SimpleNamespace(address="10.0.0.1")],
                             ("n0.test", "AAAA"): [SimpleNamespace(address="fd00::1")]})
    # An SRV target is one node, at its first address; each address of a name is a node.
    assert lookup(resolver, NodeConfig("a", srv=SRV)) == {Found("n0.test", "10.0.0.1", 7000, "n0.test")}
    assert lookup(resolver, NodeConfig("b", dns="n0.test", port=5640)) == {
        Found("10.0.0.1", "10.0.0.1", 5640, "n0.test"), Found("fd00::1", "fd00::1", 5640, "n0.test")}
    assert lookup(resolver, NodeConfig("c", srv="_9p._tcp.none.test")) == set()  # no such record: no nodes


def test_config_of_record_entries():
    config = DeploymentConfig.from_dict({"network": {"dns": "127.0.0.1:5353"},
                                         "nodes": [{"id": "pool-a", "srv": SRV},
                                                   {"id": "pool-b", "dns": "nodes.test", "port": 7000}]})
    assert config.network.dns == "127.0.0.1:5353"
    assert [(n.record, n.is_local) for n in config.nodes] == [(SRV, False), ("nodes.test", False)]
    assert DeploymentConfig.from_dict({"nodes": [{"id": "p", "dns": "x.test"}]}).nodes[0].port == dial.DEFAULT_PORT
    for bad, problem in [({"srv": SRV, "dns": "x"}, "give srv or dns, not both"),
                         ({"srv": SRV, "address": "10.0.0.1"}, "the addresses are the DNS record's"),
                         ({"srv": SRV, "port": 1}, "an SRV record gives each node's port")]:
        with pytest.raises(ConfigError, match=problem):
            DeploymentConfig.from_dict({"nodes": [{"id": "p", **bad}]})
    with pytest.raises(ConfigError, match="network.dns: want HOST:PORT"):
        DeploymentConfig.from_dict({"network": {"dns": "unix!/dns"}})


# ---- a DNS server of our own ---------------------------------------------------------------------


class Dnsmasq:
    """dnsmasq on 127.0.0.1:port answering with the SRV records of nodes
    {host name: port}, each host name 127.0.0.1; restarted to change them."""

    def __init__(self, directory, port: int):
        self.conf = directory / "dnsmasq.conf"
        self.port = port  # reserved: dnsmasq cannot tell back a port the OS chose, and restarts on this one
        self.process: subprocess.Popen | None = None

    def serve(self, nodes: dict[str, int], names: dict[str, list[str]] = {}) -> None:
        """SRV records for nodes; A records for names {name: addresses}."""
        self.stop()
        lines = [f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
                 "keep-in-foreground", "pid-file=", "user=", "log-facility=-", "local=/llamafs.test/"]
        for name, port in nodes.items():
            lines += [f"srv-host={SRV},{name},{port}", f"host-record={name},127.0.0.1"]
        lines += [f"host-record={name},{address}" for name, addresses in names.items() for address in addresses]
        self.conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(["dnsmasq", f"--conf-file={self.conf}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        self.wait_answering(nodes)

    def wait_answering(self, nodes: dict[str, int]) -> None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], self.port, 0.5
        for _ in range(100):
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.process.stderr.read().decode()}")
            try:
                if len(resolver.resolve(SRV, "SRV")) == len(nodes):
                    return
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):  # it answers: no such record
                if not nodes:
                    return
            except dns.exception.DNSException:
                pass
        raise RuntimeError("dnsmasq does not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


@pytest.fixture
def dnsmasq(tmp_path):
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (Debian: apt-get install dnsmasq): the DNS discovery tests need it")
    with reserved_ports(1) as [port]:
        server = Dnsmasq(tmp_path, port)
        yield server
        server.stop()


async def test_nodes_found_by_srv_join_and_leave(nursery, start_fake_node, dnsmasq):
    nodes = {}
    for i in range(4):
        address, _ = await start_fake_node()
        nodes[f"node-{i}.llamafs.test"] = int(address.rsplit("!", 1)[1])
    first = dict(list(nodes.items())[:3])
    dnsmasq.serve(first)
    config = {"name": "found", "network": {"listen": "tcp!127.0.0.1!0", "healthCheckInterval": 200,
                                           "dns": f"127.0.0.1:{dnsmasq.port}"},
              "nodes": [{"id": "pool-a", "srv": SRV}]}
    mgr = await deploy(nursery, config)

    def ids():
        return {n.id for n in mgr.pool.nodes}

    assert ids() == {f"pool-a:{name}:{port}" for name, port in first.items()}
    assert not mgr.processes  # a record's nodes are never started by us
    assert (await mgr.evaluate(PROMPT, maxtokens=4)).strip()

    dnsmasq.serve(nodes)  # a fourth record: a fourth node joins, and comes up
    fourth = f"pool-a:node-3.llamafs.test:{nodes['node-3.llamafs.test']}"
    await until_changed(mgr, lambda: fourth in ids() and mgr.pool.get(fourth).state == "up", "a fourth node")

    del nodes["node-0.llamafs.test"]
    dnsmasq.serve(nodes)  # a record removed: that node is drained, then gone
    await until_changed(mgr, lambda: len(ids()) == 3 and not any(":node-0." in i for i in ids()),
                        "node-0 to leave")
    left = ids()

    dnsmasq.stop()  # no answers now: the last ones stand
    with trio.fail_after(15):
        while "pool-a" not in mgr.discovery.errors:
            await mgr.discovery.refreshed.wait()
        await mgr.discovery.refreshed.wait()  # and another round fails too
    assert ids() == left and len(mgr.pool.healthy()) == 3
    assert (await mgr.evaluate(PROMPT, maxtokens=4)).strip()


def test_one_kind_of_address_failing_is_no_failure():
    class Refusing(FakeResolver):
        def resolve(self, name, kind, search=False):
            if kind == "AAAA" or name == "down.test":
                raise dns.resolver.NoNameservers()
            return super().resolve(name, kind)

    resolver = Refusing({("n0.test", "A"): [SimpleNamespace(address="10.0.0.1")]})
    assert lookup(resolver, NodeConfig("b", dns="n0.test", port=1)) == {Found("10.0.0.1", "10.0.0.1", 1, "n0.test")}
    with pytest.raises(dns.exception.DNSException):
        lookup(resolver, NodeConfig("b", dns="down.test", port=1))


async def test_found_nodes_over_tls_are_checked_for_their_names(nursery, start_fake_node, dnsmasq, tmp_path):
    from .testca import TestCA

    ca = TestCA(tmp_path / "ca")
    cert, key = ca.issue("node", ["node-0.llamafs.test"])  # its name, not its address
    _, node = await start_fake_node(listen="tls!127.0.0.1!0", tls_cert=cert, tls_key=key)
    dnsmasq.serve({"node-0.llamafs.test": dial.listening_port(node.listeners)})
    config = {"name": "found", "network": {"listen": "tcp!127.0.0.1!0", "healthCheckInterval": 200,
                                           "dns": f"127.0.0.1:{dnsmasq.port}", "tls": {"ca": ca.path}},
              "nodes": [{"id": "pool-a", "srv": SRV}]}
    mgr = await deploy(nursery, config)
    [handle] = mgr.pool.nodes
    assert handle.address.startswith("tls!127.0.0.1!") and handle.state == "up"
    assert (await mgr.evaluate(PROMPT, maxtokens=4)).strip()


async def test_nodes_found_by_a_name_are_each_of_its_addresses(nursery, start_fake_node, dnsmasq):
    # Two nodes on one port, as two machines would be: the OS's choice on 127.0.0.1, then on 127.0.0.2
    # (which the OS hands out to nothing else now: it skips a port in use when it picks one).
    _, node = await start_fake_node(listen="tcp!127.0.0.1!0")
    port = dial.listening_port(node.listeners)
    await start_fake_node(listen=f"tcp!127.0.0.2!{port}")
    dnsmasq.serve({}, {"nodes.llamafs.test": ["127.0.0.1", "127.0.0.2"]})
    config = {"name": "found", "network": {"listen": "tcp!127.0.0.1!0", "healthCheckInterval": 200,
                                           "dns": f"127.0.0.1:{dnsmasq.port}"},
              "nodes": [{"id": "pool-b", "dns": "nodes.llamafs.test", "port": port}]}
    mgr = await deploy(nursery, config)
    assert {n.id: n.address for n in mgr.pool.nodes} == {f"pool-b:{h}:{port}": f"tcp!{h}!{port}"
                                                        for h in ("127.0.0.1", "127.0.0.2")}
    assert len(mgr.pool.healthy()) == 2
