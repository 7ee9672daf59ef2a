"""A file tree served in this process, read as a 9P client would read it."""

from __future__ import annotations

from contextlib import contextmanager

import trio

from .client import File, ServerError
from .errors import StyxError
from .tree import Caller, Connection
from .wire import OREAD, Dir


class LocalClient:
    """Uses a file tree served in this process as a client would (walk,
    open, read, write, clunk, as one user), through the same entries and
    handles as the server, without the wire: for readers that live beside
    the server, such as its HTTP side.  Errors are ServerErrors, as over 9P."""

    def __init__(self, tree, uname: str):
        self.tree = tree
        self.caller = Caller(uname, Connection(0))

    async def _walk(self, path: str):
        with _as_server_error():
            entry = await self.tree.attach(self.caller)
            for name in [p for p in path.split("/") if p]:
                entry = await entry.walk(name, self.caller)
            return entry

    async def open(self, path: str, mode: int = OREAD) -> File:
        """An open file, read and written as over 9P (the HTTP API's sessions)."""
        entry = await self._walk(path)
        with _as_server_error():
            entry.check_open(mode)
            return File(LocalFid(await entry.open(mode, self.caller)))

    async def read_file(self, path: str) -> bytes:
        async with await self.open(path) as f:
            return await f.read_all()

    async def listdir(self, path: str = "") -> list[Dir]:
        entry = await self._walk(path)
        with _as_server_error():
            return [child.stat(self.caller) for child in await entry.children(self.caller)]


@contextmanager
def _as_server_error():
    try:
        yield
    except StyxError as e:
        raise ServerError(str(e)) from None


class LocalFid:
    """An open handle of a LocalClient, in the shape of client.Fid, so that
    client.File reads and writes it as over 9P: a read waits as a Tread
    does, and cancelling it is a Tflush."""

    iounit = 65536

    def __init__(self, handle):
        self.handle = handle
        self.clunked = False

    async def read(self, count: int, offset: int) -> bytes:
        with _as_server_error():
            return await self.handle.read(offset, count)

    async def write(self, data: bytes, offset: int) -> int:
        with _as_server_error():
            return await self.handle.write(offset, data)

    async def clunk(self) -> None:
        if not self.clunked:
            self.clunked = True
            with _as_server_error():
                await self.handle.clunk(aborted=False)

    async def clunk_quietly(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.clunk()
            except ServerError:
                pass
