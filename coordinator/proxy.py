"""nodes/: each node's own tree, proxied by the coordinator, plus its
`health`.  Only the deployment's owner may look.

A proxied file's qid path is the coordinator's own: the node's paths are
mapped into the range qids.PROXIED keeps for them (the upper half of the
32-bit space), stable while the file is in use and unique."""

from __future__ import annotations

import collections
from typing import Callable

import trio

from styxfs import client
from styxfs.errors import StyxError
from styxfs.llama import errors
from styxfs.llama.namespace import NODES, UID
from styxfs.llama.qids import PROXIED, qpath
from styxfs.tree import Caller, Directory, Entry, Handle, TextFile
from styxfs.wire import DMDIR, QTDIR, Dir, Qid

from .pool import NodeHandle, Pool

# What a node's root is taken to be until it is read: a directory.
REMOTE_ROOT = Dir(qid=Qid(QTDIR, 0, 0), mode=DMDIR | 0o555)
NODE_DIR, NODE_HEALTH = 1 << 40, 1 << 41  # beyond any remote qid path: nodes/ID itself and its health


class QidMap:
    """Local qid paths for proxied files: in qids.PROXIED, unique, stable
    while in use.  At most `size` are remembered (least recently used go)."""

    LOW, HIGH = PROXIED

    def __init__(self, size: int = 1 << 16):
        self.size = size
        self.paths: collections.OrderedDict[tuple[str, int], int] = collections.OrderedDict()
        self.used: set[int] = set()
        self.next = self.LOW

    def local(self, node_id: str, remote_path: int) -> int:
        key = (node_id, remote_path)
        path = self.paths.get(key)
        if path is not None:
            self.paths.move_to_end(key)
            return path
        if len(self.paths) >= self.size:
            _, old = self.paths.popitem(last=False)
            self.used.discard(old)
        while self.next in self.used:
            self.next = self.next + 1 if self.next + 1 < self.HIGH else self.LOW
        path = self.paths[key] = self.next
        self.used.add(path)
        self.next = self.next + 1 if self.next + 1 < self.HIGH else self.LOW
        return path


class Proxy:
    """What the proxied entries share."""

    def __init__(self, pool: Pool, request_timeout: float):
        self.pool, self.request_timeout = pool, request_timeout
        self.check_owner: Callable[[Caller], None] = lambda caller: None  # the tree's, once it is made
        self.qids = QidMap()


class NodesDir(Directory):
    """nodes/: the deployment's owner's only."""

    def __init__(self, proxy: Proxy):
        super().__init__(NODES.name, qpath(0, NODES.q), perm=NODES.perm & 0o777, uid=UID)
        self.proxy = proxy

    async def children(self, caller: Caller) -> list[Entry]:
        self.proxy.check_owner(caller)
        return [NodeDir(self.proxy, n) for n in self.proxy.pool.nodes]

    async def walk(self, name: str, caller: Caller) -> Entry:
        self.proxy.check_owner(caller)
        try:
            return NodeDir(self.proxy, self.proxy.pool.get(name))
        except KeyError:
            raise errors.NO_SUCH_NODE(node=name) from None


class NodeDir(Entry):
    """nodes/ID: the node's root, proxied, plus health."""

    def __init__(self, proxy: Proxy, node: NodeHandle):
        super().__init__(node.id, proxy.qids.local(node.id, NODE_DIR), DMDIR | 0o555, UID)
        self.proxy, self.node = proxy, node
        self.health = TextFile("health", proxy.qids.local(node.id, NODE_HEALTH), read=lambda c: node.health_text(),
                               uid=UID)

    async def children(self, caller: Caller) -> list[Entry]:
        try:
            entries = await RemoteEntry(self.proxy, self.node, [], REMOTE_ROOT).children(caller)
        except StyxError:
            entries = []
        return [self.health] + entries

    async def walk(self, name: str, caller: Caller) -> Entry:
        if name == "health":
            return self.health
        return await RemoteEntry(self.proxy, self.node, [], REMOTE_ROOT).walk(name, caller)


class RemoteEntry(Entry):
    """A file of a node's tree, reached over the coordinator's connection."""

    def __init__(self, proxy: Proxy, node: NodeHandle, path: list[str], stat: Dir):
        name = path[-1] if path else node.id
        super().__init__(name, proxy.qids.local(node.id, stat.qid.path), stat.mode, stat.uid or UID)
        self.proxy, self.node, self.path, self.remote_stat = proxy, node, path, stat

    def stat(self, caller: Caller) -> Dir:
        s = self.remote_stat
        return Dir(qid=self.qid, mode=s.mode, atime=s.atime, mtime=s.mtime, length=s.length,
                   name=self.name, uid=s.uid, gid=s.gid, muid=s.muid)

    def _client(self) -> client.Client:
        if self.node.client is None:
            raise errors.NODE_FAILED(node=self.node.id, why="down")
        return self.node.client

    async def _call(self, coroutine_fn):
        try:
            with trio.fail_after(self.proxy.request_timeout):
                return await coroutine_fn(self._client())
        except client.ServerError as e:
            raise StyxError(e.ename) from None
        except (client.Error, trio.TooSlowError) as e:
            raise errors.NODE_FAILED(node=self.node.id, why=str(e) or "timed out") from None

    async def walk(self, name: str, caller: Caller) -> Entry:
        path = self.path + [name]
        stat = await self._call(lambda c: c.stat("/".join(path)))
        return RemoteEntry(self.proxy, self.node, path, stat)

    async def children(self, caller: Caller) -> list[Entry]:
        dirs = await self._call(lambda c: c.listdir("/".join(self.path)))
        return [RemoteEntry(self.proxy, self.node, self.path + [d.name], d) for d in dirs]

    async def open(self, mode: int, caller: Caller) -> Handle:
        if self.is_dir:
            return await super().open(mode, caller)

        async def do_open(c):
            fid = await c.walk("/".join(self.path))
            try:
                await fid.open(mode)
            except BaseException:
                await fid.clunk_quietly()
                raise
            return fid

        return RemoteHandle(self, await self._call(do_open))


class RemoteHandle(Handle):
    def __init__(self, entry: RemoteEntry, fid: client.Fid):
        super().__init__(entry)
        self.fid = fid

    async def read(self, offset: int, count: int) -> bytes:
        return await self.entry._call(lambda c: self.fid.read(count, offset))

    async def write(self, offset: int, data: bytes) -> int:
        return await self.entry._call(lambda c: self.fid.write(data, offset))

    async def clunk(self, aborted: bool) -> None:
        await self.fid.clunk_quietly()
