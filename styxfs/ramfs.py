"""An in-memory file server, like plan9port's ramfs: the protocol's test vehicle.

    python -m styxfs.ramfs --listen 'tcp!127.0.0.1!5641'

create, write at any offset, read, remove, mkdir, and rename through wstat.
"""

from __future__ import annotations

import itertools
import logging
import time

import click
import trio

from . import dial, errors
from .errors import StyxError
from .server import Server, StaticTree
from .tree import Caller, DirHandle, Entry, Handle, read_slice
from .wire import DMDIR, ORCLOSE, OTRUNC, QTDIR, Dir, Qid

_NOCHANGE_INT = {0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF}
MAX_FILE_SIZE = 64 << 20  # an in-memory test vehicle: refuse what would eat the machine
MAX_TOTAL_SIZE = 256 << 20


class RamEntry(Entry):
    def __init__(self, fs: "RamFS", name: str, perm: int, uid: str, parent: "RamDir | None"):
        super().__init__(name, next(fs.paths), perm, uid)
        self.fs, self.parent = fs, parent
        self.mtime = int(time.time())

    def touch(self) -> None:
        self.mtime = int(time.time())
        self.qid = Qid(self.qid.type, self.qid.version + 1, self.qid.path)

    def stat(self, caller: Caller) -> Dir:
        d = super().stat(caller)
        return Dir(qid=d.qid, mode=d.mode, atime=self.mtime, mtime=self.mtime, length=d.length,
                   name=d.name, uid=d.uid, gid=d.gid, muid=d.muid)

    async def remove(self, caller: Caller) -> None:
        if self.parent is None:
            raise errors.NO_REMOVE()
        if isinstance(self, RamDir) and self.files:
            raise errors.NOT_EMPTY()
        if self.parent.files.get(self.name) is self:
            del self.parent.files[self.name]
            self.parent.touch()
            if isinstance(self, RamFile):
                self.fs.reserve(-len(self.data))
                self.data = bytearray()

    @property
    def removed(self) -> bool:
        return self.parent is not None and self.parent.files.get(self.name) is not self

    async def wstat(self, new: Dir, caller: Caller) -> None:
        if self.removed:
            raise errors.NOT_FOUND()
        for name in ("type", "dev", "atime"):
            if getattr(new, name) not in _NOCHANGE_INT and getattr(new, name) != getattr(self.stat(caller), name):
                raise errors.WSTAT_REFUSED(what=name)
        if new.uid and new.uid != self.uid:
            raise errors.WSTAT_REFUSED(what="owner")
        if new.name and new.name != self.name:
            if self.parent is None:
                raise errors.WSTAT_REFUSED(what="the root's name")
            if "/" in new.name or new.name in (".", ".."):
                raise errors.BAD_NAME()
            if len(new.name.encode()) > errors.MAX_NAME:
                raise errors.NAME_TOO_LONG()
            if new.name in self.parent.files:
                raise errors.EXISTS()
        if new.length not in _NOCHANGE_INT and self.is_dir and new.length != 0:
            raise errors.WSTAT_REFUSED(what="a directory's length")
        if new.length not in _NOCHANGE_INT and new.length > MAX_FILE_SIZE:
            raise errors.FILE_TOO_LARGE(size=MAX_FILE_SIZE)
        if new.length not in _NOCHANGE_INT and isinstance(self, RamFile):
            self.fs.reserve(new.length - len(self.data))
        # Every check passed: apply the changes together (wstat is all or nothing).
        if new.name and new.name != self.name:
            del self.parent.files[self.name]
            self.name = new.name
            self.parent.files[self.name] = self
        if new.mode not in _NOCHANGE_INT:
            self.perm = (self.perm & DMDIR) | (new.mode & 0o777)
        if new.length not in _NOCHANGE_INT and isinstance(self, RamFile):
            del self.data[new.length :]
            self.data.extend(bytes(max(0, new.length - len(self.data))))
        if new.mtime not in _NOCHANGE_INT:
            self.mtime = new.mtime


class RamFile(RamEntry):
    def __init__(self, fs, name, perm, uid, parent):
        super().__init__(fs, name, perm, uid, parent)
        self.data = bytearray()

    def length(self) -> int:
        return len(self.data)

    async def open(self, mode: int, caller: Caller) -> Handle:
        if mode & OTRUNC:
            self.fs.reserve(-len(self.data))
            del self.data[:]
            self.touch()
        return RamHandle(self, remove_on_close=bool(mode & ORCLOSE), caller=caller)


class RamHandle(Handle):
    def __init__(self, entry: RamFile, remove_on_close: bool, caller: Caller):
        super().__init__(entry)
        self.remove_on_close, self.caller = remove_on_close, caller

    async def read(self, offset: int, count: int) -> bytes:
        return read_slice(bytes(self.entry.data), offset, count)

    async def write(self, offset: int, data: bytes) -> int:
        file = self.entry
        if offset + len(data) > MAX_FILE_SIZE:
            raise errors.FILE_TOO_LARGE(size=MAX_FILE_SIZE)
        file.fs.reserve(max(0, offset + len(data) - len(file.data)))
        if offset > len(file.data):
            file.data.extend(bytes(offset - len(file.data)))
        file.data[offset : offset + len(data)] = data
        file.touch()
        return len(data)

    async def clunk(self, aborted: bool) -> None:
        if self.remove_on_close:
            try:
                await self.entry.remove(self.caller)
            except StyxError:
                pass


class RamDir(RamEntry):
    def __init__(self, fs, name, perm, uid, parent):
        super().__init__(fs, name, DMDIR | perm, uid, parent)
        self.files: dict[str, RamEntry] = {}

    async def children(self, caller: Caller) -> list[Entry]:
        return list(self.files.values())

    async def walk(self, name: str, caller: Caller) -> Entry:
        child = self.files.get(name)
        if child is None:
            raise errors.NOT_FOUND()
        return child

    async def create(self, name: str, perm: int, mode: int, caller: Caller) -> Handle:
        if name in self.files:
            raise errors.EXISTS()
        if perm & DMDIR:
            if mode & 3 or mode & OTRUNC:
                raise errors.DIR_WRITE()
            entry = RamDir(self.fs, name, perm & 0o777, caller.uname, self)
            handle = DirHandle(entry, caller)
        else:
            entry = RamFile(self.fs, name, perm & 0o777, caller.uname, self)
            handle = RamHandle(entry, bool(mode & ORCLOSE), caller)
        self.files[name] = entry
        self.touch()
        return handle


class RamFS:
    def __init__(self, owner: str = "ramfs"):
        self.used = 0  # bytes held by all files
        self.paths = itertools.count(0)
        self.root = RamDir(self, "/", 0o777, owner, None)
        assert self.root.qid.type == QTDIR

    def reserve(self, growth: int) -> None:
        if self.used + growth > MAX_TOTAL_SIZE:
            raise errors.FS_FULL()
        self.used += growth


def make_server(**options) -> Server:
    return Server(StaticTree(RamFS().root), **options)


@click.command()
@click.option("--listen", default="tcp!127.0.0.1!5641", show_default=True, help="dial string to listen on")
def main(listen: str) -> None:
    """Serve an in-memory file tree over 9P2000."""
    logging.basicConfig(level=logging.INFO, format="ramfs: %(message)s")

    async def run():
        server = make_server()
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, listen)
            print(f"ramfs: serving on {dial.served(dial.parse(listen), listeners)}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
