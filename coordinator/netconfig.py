"""The deployment config's parts for many machines: network.tls,
network.dns, node entries that name a DNS record, and where the coordinator
may listen.  Each takes config.py's checker, which names the key in its
errors."""

from __future__ import annotations

from dataclasses import dataclass

from styxfs import dial
from styxfs.llama.settings import DEFAULT_LISTEN


@dataclass
class TLSConfig:
    ca: str | None = None  # the CA the nodes' certificates must chain to (None: the system's roots)
    cert: str | None = None  # the coordinator's own client certificate, for nodes with mutual TLS
    key: str | None = None


def tls(check, net: dict) -> TLSConfig | None:
    """network.tls: {ca, cert, key}, file names; cert and key together."""
    if net.get("tls") is None:
        return None
    section = net["tls"]
    if not isinstance(section, dict):
        check.fail("network.tls", 'must be an object: {"ca": FILE, "cert": FILE, "key": FILE}')
    check.known_keys(section, "network.tls", ["ca", "cert", "key"])
    found = TLSConfig(**{k: check.string(section, f"network.tls.{k}", None) for k in ("ca", "cert", "key")})
    if bool(found.cert) != bool(found.key):
        check.fail("network.tls", "cert and key go together (the coordinator's client certificate)")
    return found


def listen(check, net: dict) -> str:
    """Where the coordinator serves 9P: its clients' mounts speak plain TCP (TLS is for its nodes)."""
    value = check.string(net, "network.listen", DEFAULT_LISTEN)
    if value.startswith("tls!"):
        check.fail("network.listen", "the coordinator listens on tcp or unix (network.tls is for its links to "
                                     "nodes); put a TLS front before it (docs/deploy/README.md)")
    return value


def dns_server(check, net: dict) -> str | None:
    """network.dns: HOST:PORT (or tcp!HOST!PORT) of a DNS server; port 53 by default."""
    value = check.string(net, "network.dns", None)
    if value is None:
        return None
    try:
        address = dial.parse(value, 53)
    except ValueError as e:
        check.fail("network.dns", str(e))
    if address.network != "tcp" or address.host in ("", "*"):
        check.fail("network.dns", f"want HOST:PORT of a DNS server, not {value!r}")
    return f"{address.host}:{address.port}"


def record_entry(check, node: dict, key: str) -> None:
    """A node entry naming a DNS record: srv or dns (with its port), no address."""
    if node.get("srv") is not None and node.get("dns") is not None:
        check.fail(key, "give srv or dns, not both")
    if "address" in node:
        check.fail(f"{key}.address", "the addresses are the DNS record's: give address, or srv or dns")
    if node.get("srv") is not None and "port" in node:
        check.fail(f"{key}.port", "an SRV record gives each node's port")
