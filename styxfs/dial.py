"""Plan 9 dial strings: tcp!host!port, tcp!*!port, tls!host!port, unix!/path (and host:port)."""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass, replace

import trio

DEFAULT_PORT = 5640
DEFAULT_ADDRESS = f"tcp!127.0.0.1!{DEFAULT_PORT}"


@dataclass(frozen=True)
class Address:
    network: str  # "tcp", "tls" (TCP under TLS) or "unix"
    host: str = ""  # "*" listens on every interface
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.network == "unix":
            return f"unix!{self.path}"
        return f"{self.network}!{self.host}!{self.port}"


def parse(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """`tcp!127.0.0.1!5640`, `tcp!*!5640`, `tls!host!5640`, `unix!/tmp/sock`, `127.0.0.1:5640`,
    `host` (default port).  Raises ValueError naming what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if "!" in text:
        parts = text.split("!")
        network = parts[0] or "tcp"
        if network == "unix":
            if len(parts) != 2 or not parts[1]:
                raise ValueError(f"bad address {text!r}: want unix!/path/to/socket")
            return Address("unix", path=parts[1])
        if network not in ("tcp", "net", "tls"):
            raise ValueError(f"bad address {text!r}: network {network!r} is not tcp, tls or unix")
        if len(parts) not in (2, 3) or not parts[1]:
            raise ValueError(f"bad address {text!r}: want {'tls' if network == 'tls' else 'tcp'}!host!port")
        port_text = parts[2] if len(parts) == 3 else str(default_port)
        host = parts[1]
        if network == "tls":
            return Address("tls", host=host, port=_port(text, port_text))
    elif text.startswith("/"):
        return Address("unix", path=text)
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", str(default_port))
    return Address("tcp", host=host, port=_port(text, port_text))


def _port(text: str, port_text: str) -> int:
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad address {text!r}: port {port} out of range")
    return port


def is_loopback(address: Address) -> bool:
    return address.network == "unix" or address.host in ("localhost", "::1") or address.host.startswith("127.")


async def open_listeners(address: Address, tls_context: ssl.SSLContext | None = None) -> list:
    """Listeners on address; tls! wraps them in TLS with tls_context (a
    server's: styxfs.tls.server_context)."""
    if address.network == "tls":
        if tls_context is None:
            raise ValueError(f"{address}: listening with TLS needs a certificate and key (--tls-cert, --tls-key)")
        plain = await open_listeners(Address("tcp", address.host, address.port))
        return [trio.SSLListener(listener, tls_context, https_compatible=False) for listener in plain]
    if address.network == "unix":
        if os.path.exists(address.path):
            os.unlink(address.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(address.path)
        sock.listen(128)
        return [trio.SocketListener(sock)]
    host = None if address.host in ("*", "") else address.host
    return await trio.open_tcp_listeners(address.port, host=host, backlog=1024)


async def connect(address: Address, tls_context: ssl.SSLContext | None = None,
                  tls_name: str | None = None) -> trio.abc.Stream:
    """Dial; tls! completes a TLS handshake too (tls_context, or the
    system's trusted roots; the certificate must be for tls_name, else for
    the host dialled), a failure raising tls.TLSError (an OSError)."""
    if address.network == "unix":
        return await trio.open_unix_socket(address.path)
    host = "127.0.0.1" if address.host in ("*", "") else address.host
    stream = await trio.open_tcp_stream(host, address.port)
    if address.network != "tls":
        return stream
    from . import tls

    return await tls.client_stream(stream, tls_context or tls.client_context(), tls_name or host)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for tests and local nodes)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def port_bindable(host: str, port: int) -> bool:
    """Whether a listener could bind host:port now, as trio's does (with
    SO_REUSEADDR): not if something listens there, nor if the port is the
    local end of a connection (an ephemeral port, as free_port's may become)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def listening_port(listeners: list[trio.SocketListener]) -> int:
    """The TCP port actually bound (for port 0 in tests)."""
    listener = listeners[0]
    listener = getattr(listener, "transport_listener", listener)  # under TLS
    return listener.socket.getsockname()[1]


def served(address: Address, listeners: list[trio.SocketListener]) -> Address:
    """address as its listeners serve it: with the port bound (port 0: the OS's choice)."""
    if address.network not in ("tcp", "tls"):
        return address
    return replace(address, port=listening_port(listeners))
