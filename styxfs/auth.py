"""Shared-secret authentication through 9P's Tauth (llamafs-secret-1).

Over the afid, neither side ever sends the secret itself:

    client reads   "challenge SNONCE\\n"                      (16 random bytes, hex)
    client writes  "response CNONCE MAC(client)\\n"
    client reads   "proof MAC(server)\\n"                     (the server knows it too)

MAC(role) = HMAC-SHA256(secret, role SNONCE CNONCE uname aname), hex, the
fields joined by single blanks.  A Tattach must then name that afid and the
same uname and aname.  A wrong or missing secret gets `authentication
failed` and nothing is served.  Both nonces are fresh, so a recorded
exchange cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from . import errors, wire
from .tree import Caller, Entry, Handle

PROTOCOL = "llamafs-secret-1"


def read_secret(path: str) -> bytes:
    """The secret: the file's bytes, trailing newline stripped; never empty."""
    with open(path, "rb") as f:
        secret = f.read().rstrip(b"\r\n")
    if not secret:
        raise ValueError(f"{path}: the secret file is empty")
    return secret


def mac(secret: bytes, role: str, snonce: str, cnonce: str, uname: str, aname: str) -> str:
    message = " ".join([role, snonce, cnonce, uname, aname]).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class AuthFile(Entry):
    def __init__(self):
        super().__init__("#a", 0xFFFFFFF0, wire.DMAUTH | 0o600)
        self.qid = wire.Qid(wire.QTAUTH, 0, 0xFFFFFFF0)


class AuthConversation(Handle):
    """The server's side of one afid."""

    def __init__(self, secret: bytes, uname: str, aname: str):
        super().__init__(AuthFile())
        self.secret, self.uname, self.aname = secret, uname, aname
        self.snonce = secrets.token_hex(16)
        self.cnonce = ""
        self.state = "challenge"  # then "response", "proof", "done"; "failed" for good
        self.ok = False

    async def read(self, offset: int, count: int) -> bytes:
        if self.state == "challenge":
            self.state = "response"
            return f"challenge {self.snonce}\n".encode()[:count]
        if self.state == "proof":
            self.state = "done"
            proof = mac(self.secret, "server", self.snonce, self.cnonce, self.uname, self.aname)
            return f"proof {proof}\n".encode()[:count]
        raise errors.AUTH_FAILED()

    async def write(self, offset: int, data: bytes) -> int:
        if self.state != "response":
            self.state = "failed"
            raise errors.AUTH_FAILED()
        fields = data.decode("utf-8", errors="replace").split()
        if len(fields) != 3 or fields[0] != "response":
            self.state = "failed"
            raise errors.AUTH_FAILED()
        self.cnonce = fields[1]
        want = mac(self.secret, "client", self.snonce, self.cnonce, self.uname, self.aname)
        if not hmac.compare_digest(want, fields[2]):
            self.state = "failed"
            raise errors.AUTH_FAILED()
        self.ok, self.state = True, "proof"
        return len(data)


class SecretAuthenticator:
    """Plugs into styxfs.server.Server(authenticator=...)."""

    def __init__(self, secret: bytes):
        self.secret = secret

    async def auth(self, conn, m: wire.Tauth) -> wire.Message:
        from .server import Fid

        conn.check_new_fid(m.afid)
        handle = AuthConversation(self.secret, m.uname, m.aname)
        fid = Fid(m.afid, Caller(m.uname, conn.info, m.aname), [handle.entry], handle=handle, mode=wire.ORDWR)
        conn.fids[m.afid] = fid
        return wire.Rauth(m.tag, handle.entry.qid)

    async def check_attach(self, conn, m: wire.Tattach) -> None:
        fid = conn.fids.get(m.afid)
        handle = fid.handle if fid is not None else None
        if not (isinstance(handle, AuthConversation) and handle.ok
                and handle.uname == m.uname and handle.aname == m.aname):
            raise errors.AUTH_FAILED()


def secret_authenticator(secret: bytes):
    """For styxfs.client.connect(authenticate=...): runs the exchange, returns the afid."""

    async def authenticate(c, uname: str, aname: str) -> int:
        from .client import Error, Fid, ServerError

        afid = next(c.fid_numbers)
        try:
            await c.rpc(wire.Tauth(0, afid, uname, aname))
        except ServerError as e:
            raise Error(f"authentication: the server said {e.ename}") from None
        fid = Fid(c, afid, wire.Qid(wire.QTAUTH, 0, 0))
        challenge = (await fid.read(256, 0)).decode(errors="replace").split()
        if len(challenge) != 2 or challenge[0] != "challenge":
            raise Error("authentication: not a llamafs secret challenge")
        snonce, cnonce = challenge[1], secrets.token_hex(16)
        response = mac(secret, "client", snonce, cnonce, uname, aname)
        await fid.write(f"response {cnonce} {response}\n".encode(), 0)
        proof = (await fid.read(256, 0)).decode(errors="replace").split()
        want = mac(secret, "server", snonce, cnonce, uname, aname)
        if len(proof) != 2 or not hmac.compare_digest(proof[1], want):
            raise Error("authentication: the server does not know the secret")
        return afid

    return authenticate

