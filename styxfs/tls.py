"""TLS for 9P links (`tls!host!port`): the contexts, and a handshake whose
failures say what to fix.

Python's ssl through trio's SSLStream.  A client checks the server's
certificate and host name (ssl's defaults: never turned off here); a server
given a client CA takes only clients with a certificate it signed (mutual
TLS).  Tauth runs inside the TLS link as it runs over plain TCP.
"""

from __future__ import annotations

import os
import ssl

import trio

HANDSHAKE_TIMEOUT = 10.0  # seconds a server waits for a client's TLS handshake


class TLSError(OSError):
    """A TLS context that cannot be made, or a handshake that failed."""


def _load(action, what: str, *paths: str) -> None:
    for path in paths:
        if not os.path.isfile(path):
            raise TLSError(f"{what}: {path}: no such file")
    try:
        action()
    except ssl.SSLError as e:
        raise TLSError(f"{what} {' '.join(paths)}: not usable: {e.reason or e}") from None
    except OSError as e:
        raise TLSError(f"{what} {' '.join(paths)}: {e.strerror or e}") from None


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A listener's context: its certificate chain and key; with client_ca,
    clients must present a certificate that CA signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(lambda: context.load_cert_chain(cert, key), "TLS certificate and key", cert, key)
    if client_ca:
        _load(lambda: context.load_verify_locations(cafile=client_ca), "TLS client CA", client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A dialer's context: servers must chain to ca (the system's roots, or
    $SSL_CERT_FILE, without one) and match the host dialled; cert and key:
    our own certificate, for servers that ask for one."""
    if ca:  # that CA only, not the system's roots too: a private cluster's own
        made: list[ssl.SSLContext] = []
        _load(lambda: made.append(ssl.create_default_context(cafile=ca)), "TLS CA", ca)
        context = made[0]
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert or key:
        if not (cert and key):
            raise TLSError("a TLS client certificate needs both cert and key")
        _load(lambda: context.load_cert_chain(cert, key), "TLS client certificate and key", cert, key)
    return context


def explain(error: BaseException, after_handshake: bool = False, other: str = "server") -> str:
    """What a failed handshake means, in words that say what to fix.  A
    server refusing our certificate under TLS 1.3 hangs up only after the
    handshake, when we first read (after_handshake)."""
    cause = error if isinstance(error, ssl.SSLError) else error.__cause__ or error.__context__
    if isinstance(cause, ssl.SSLEOFError):
        if after_handshake:
            return "TLS: the server hung up: it wants a client certificate it trusts (mutual TLS)"
        return "TLS: the other end hung up in the handshake: is it listening with tls!?"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: the {other}'s certificate is not trusted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        reason = (cause.reason or str(cause)).lower().replace("_", " ")
        if "certificate required" in reason or "handshake failure" in reason:
            return f"TLS: refused: the server wants a client certificate it trusts ({reason})"
        if "wrong version number" in reason or "record layer failure" in reason:
            return f"TLS: the other end does not speak TLS ({reason})"
        return f"TLS: {reason}"
    return f"TLS: {cause or error}"


def why_lost(error: BaseException) -> str:
    """Why a connection broke; under TLS 1.3 a server refusing our
    certificate says so only after the handshake, here."""
    return explain(error, after_handshake=True) if isinstance(error.__cause__, ssl.SSLError) else str(error)


async def client_stream(stream: trio.abc.Stream, context: ssl.SSLContext, host: str) -> trio.SSLStream:
    """Wrap a connected stream and complete the handshake; a failure raises
    TLSError explaining it."""
    tls = trio.SSLStream(stream, context, server_hostname=host)
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as e:
        await trio.aclose_forcefully(stream)
        raise TLSError(explain(e)) from None
    return tls


async def server_handshake(stream: trio.SSLStream) -> str | None:
    """Complete a server-side handshake: None, or why it failed (naming the client)."""
    try:
        peer = "%s!%s" % stream.transport_stream.socket.getpeername()[:2]
    except (AttributeError, OSError, TypeError):
        peer = "a client"
    with trio.move_on_after(HANDSHAKE_TIMEOUT):
        try:
            await stream.do_handshake()
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, ssl.SSLEOFError) or not isinstance(cause, ssl.SSLError):
                return f"{peer}: TLS: hung up in the handshake (does it trust this certificate?)"
            return f"{peer}: {explain(e, other='client')}"
    return f"{peer}: TLS handshake timed out"
