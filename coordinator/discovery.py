"""Nodes found by DNS: node entries that name a record instead of an address.

    {"id": "pool-a", "srv": "_9p._tcp.llamafs-nodes.default.svc.cluster.local"}
    {"id": "pool-b", "dns": "llamafs-nodes.internal", "port": 5640}

An SRV record gives a host and port per node (a Kubernetes headless
service publishes one per pod); a name gives every A/AAAA address, each on
the entry's port.  Each record is resolved at start and at every health
interval: nodes that appear join, as `ENTRY:HOST:PORT`; nodes that vanish
are drained.  A lookup that fails (a timeout, no server answering) is logged
and the last answer kept: a DNS outage must not empty the pool.  An answer
that there is no such record is an answer: its nodes leave.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import dns.exception
import dns.resolver
import trio

from styxfs.llama.settings import DNS_TIMEOUT

from .config import NodeConfig

log = logging.getLogger("coordinator.discovery")


@dataclass(frozen=True)
class Found:
    """A node a record names: the host its id names (an SRV target; an
    address of a `dns` name), where to dial it, and the name its TLS
    certificate must be for (the SRV target, or the `dns` name)."""

    host: str
    address: str
    port: int
    name: str

    def node_id(self, entry_id: str) -> str:
        return f"{entry_id}:{self.host}:{self.port}"

    def dial(self, tls: bool) -> str:
        return f"{'tls' if tls else 'tcp'}!{self.address}!{self.port}"


def make_resolver(server: str | None) -> dns.resolver.Resolver:
    """A resolver asking server (HOST:PORT, network.dns), or the system's."""
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        host, _, port = server.rpartition(":")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = [host.strip("[]")], int(port)
    resolver.lifetime = resolver.timeout = DNS_TIMEOUT
    return resolver


def _answer(resolver: dns.resolver.Resolver, name: str, kind: str) -> list:
    """The records; none for a name that has none (an answer, not a failure)."""
    try:
        return list(resolver.resolve(name, kind, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []


def addresses(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """A name's IPv4 and IPv6 addresses; one kind failing is no failure if the other answered."""
    found, failures = [], []
    for kind in ("A", "AAAA"):
        try:
            found += [r.address for r in _answer(resolver, name, kind)]
        except dns.exception.DNSException as e:
            failures.append(e)
    if len(failures) == 2:
        raise failures[0]
    return found


def lookup(resolver: dns.resolver.Resolver, entry: NodeConfig) -> set[Found]:
    """The nodes entry's record names now.  Raises dns.exception.DNSException
    when no answer came."""
    if entry.srv:
        found = set()
        for record in _answer(resolver, entry.srv, "SRV"):
            target = record.target.to_text(omit_final_dot=True)
            # The target's address from the same server (a cluster's names are its
            # own); one node per target, at its first address (IPv4 first).
            for address in addresses(resolver, target)[:1]:
                found.add(Found(target, address, record.port, target))
        return found
    return {Found(address, address, entry.port, entry.dns) for address in addresses(resolver, entry.dns)}


def changes(known: dict[str, Found], found: set[Found], entry_id: str) -> tuple[dict, set[str], dict]:
    """What joins (id -> Found), what leaves (ids), and what moved (id ->
    Found: the same node at another address, as a pod started again), from
    what is known and what was found."""
    now = {f.node_id(entry_id): f for f in found}
    joined = {node_id: f for node_id, f in now.items() if node_id not in known}
    moved = {node_id: f for node_id, f in now.items() if node_id in known and known[node_id] != f}
    return joined, set(known) - set(now), moved


class Discovery:
    """Keeps the pool in step with the records of the entries."""

    def __init__(self, entries: list[NodeConfig], server: str | None, interval: float,
                 join: Callable[[NodeConfig, str, Found], None], leave: Callable[[str], Awaitable[None]]):
        self.entries = entries
        self.resolver = make_resolver(server)
        self.interval = interval
        self.join, self.leave = join, leave
        self.known: dict[str, dict[str, Found]] = {e.id: {} for e in entries}  # entry id -> node id -> Found
        self.errors: dict[str, str] = {}  # entry id -> its last lookup's failure
        self.refreshed = trio.Event()  # set after each round of lookups (tests wait on it)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await self.refresh(nursery)
            task_status.started()
            while True:
                await trio.sleep(self.interval)
                await self.refresh(nursery)

    async def refresh(self, nursery: trio.Nursery) -> None:
        for entry in self.entries:
            try:
                found = await trio.to_thread.run_sync(lookup, self.resolver, entry, abandon_on_cancel=True)
            except dns.exception.DNSException as e:
                if self.errors.get(entry.id) != str(e):
                    log.warning("node entry %s: cannot resolve %s (keeping the %d nodes it had): %s", entry.id,
                                entry.record, len(self.known[entry.id]), e)
                self.errors[entry.id] = str(e)
                continue
            self.errors.pop(entry.id, None)
            joined, gone, moved = changes(self.known[entry.id], found, entry.id)
            for node_id, f in moved.items():
                log.info("node %s moved to %s", node_id, f.address)
                self.known[entry.id][node_id] = f
                self.join(entry, node_id, f)
            for node_id, f in joined.items():
                log.info("node %s joins (found by %s)", node_id, entry.record)
                self.known[entry.id][node_id] = f
                self.join(entry, node_id, f)
            for node_id in gone:
                log.info("node %s leaves (gone from %s): draining it", node_id, entry.record)
                del self.known[entry.id][node_id]
                nursery.start_soon(self.leave, node_id)
        self.refreshed.set()
        self.refreshed = trio.Event()


def for_deployment(mgr) -> Discovery | None:
    """The Discovery of a DeploymentManager's record entries (None without
    any): found nodes join its pool, over TLS with network.tls; vanished ones
    are drained, then removed, unless they came back meanwhile."""
    entries = [node for node in mgr.config.nodes if node.record]
    if not entries:
        return None
    pool = mgr.pool

    def join(entry: NodeConfig, node_id: str, found: Found) -> None:
        address = found.dial(tls=pool.tls_context is not None)
        try:
            handle = pool.get(node_id)  # back while it was being drained, or moved:
            handle.draining = False
            handle.address = address  # its next connection goes there
            return
        except KeyError:
            pass
        handle = pool.add(node_id, address, entry.weight)
        handle.tls_name = found.name
        mgr._changed()

    async def leave(node_id: str) -> None:
        try:
            await mgr.drain(node_id)
        except KeyError:
            return  # removed already
        if any(node_id in known for known in discovery.known.values()):
            pool.get(node_id).draining = False
        else:
            pool.remove(node_id)
        mgr._changed()

    discovery = Discovery(entries, mgr.config.network.dns, pool.health_interval, join, leave)
    return discovery
