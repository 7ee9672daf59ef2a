"""A 9P2000 server on trio.

One nursery per connection, one task and cancel scope per outstanding
request, so a read that blocks never holds up other tags.  The server owns
the fid table and the protocol's generic checks; everything about files is
the tree's (see tree.py).

    server = Server(tree)              # tree.attach(caller) -> root Entry
    await server.serve(dial.parse("tcp!127.0.0.1!5640"))
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Protocol

import trio

from . import dial, errors, tls, wire
from .errors import StyxError
from .tree import Caller, Connection, Entry, Handle
from .wire import NOFID, Message

log = logging.getLogger("styxfs.server")

MIN_MSIZE = 256


class Tree(Protocol):
    async def attach(self, caller: Caller) -> Entry: ...


class StaticTree:
    """A tree whose root is the same entry for everyone."""

    def __init__(self, root: Entry):
        self.root = root

    async def attach(self, caller: Caller) -> Entry:
        return self.root


@dataclass(eq=False)
class Fid:
    num: int
    caller: Caller
    path: list[Entry]  # from the attach root to the entry, for ".."
    handle: Handle | None = None
    opening: bool = False
    mode: int = 0

    @property
    def entry(self) -> Entry:
        return self.handle.entry if self.handle else self.path[-1]


@dataclass(eq=False)
class Request:
    message: Message
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    silent: bool = False  # aborted by Tversion: no reply at all
    after: "Request | None" = None  # a Tflush answers after the one before it
    flushing: "Request | None" = None  # what a Tflush flushes, if it was outstanding


class Server:
    def __init__(self, tree: Tree, *, max_msize: int = 65536, max_connections: int = 1000,
                 authenticator=None, tls_context=None):
        self.tree = tree
        self.tls_context = tls_context  # for tls! addresses: styxfs.tls.server_context(...)
        self.max_msize = max_msize
        self.max_connections = max_connections
        self.authenticator = authenticator
        self.connections: set[ServerConnection] = set()
        self._ids = itertools.count(1)

    async def serve(self, address: dial.Address | str, *, task_status=trio.TASK_STATUS_IGNORED):
        """Listen and serve until cancelled; `started` gives the listeners."""
        if isinstance(address, str):
            address = dial.parse(address)
        listeners = await dial.open_listeners(address, self.tls_context)
        task_status.started(listeners)
        await trio.serve_listeners(self.handle_stream, listeners)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        if len(self.connections) >= self.max_connections:
            log.warning("refusing a connection: %d connections is the cap", self.max_connections)
            await trio.aclose_forcefully(stream)
            return
        if isinstance(stream, trio.SSLStream):  # a failed handshake costs that client only, quietly
            failure = await tls.server_handshake(stream)
            if failure:
                log.warning("refusing a connection: %s", failure)
                await trio.aclose_forcefully(stream)
                return
        conn = ServerConnection(self, stream, next(self._ids))
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception:  # a bug must cost one connection, never the server
            log.exception("connection %d failed", conn.info.id)
        finally:
            self.connections.discard(conn)

    def fid_count(self) -> int:
        return sum(len(c.fids) for c in self.connections)

    def outstanding_count(self) -> int:
        return sum(len(c.outstanding) for c in self.connections)


class ServerConnection:
    def __init__(self, server: Server, stream: trio.abc.Stream, conn_id: int):
        self.server = server
        self.stream = stream
        self.info = Connection(conn_id)
        self.decoder = wire.FrameDecoder(server.max_msize)
        self.msize = 0  # 0 until a Tversion is answered
        self.fids: dict[int, Fid] = {}
        self.outstanding: dict[int, Request] = {}
        self.flushes: dict[int, Request] = {}  # oldtag -> its latest Tflush
        self.send_lock = trio.StrictFIFOLock()
        self.nursery: trio.Nursery | None = None

    # -- the connection's life ------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await self.receive_loop()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.clunk_all()
                await trio.aclose_forcefully(self.stream)

    async def receive_loop(self) -> None:
        """Read and dispatch until the client leaves or breaks the protocol."""
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return
                self.decoder.feed(data)
                for message in self.decoder:
                    await self.dispatch(message)
        except wire.ProtocolError as e:
            log.warning("connection %d: protocol error, closing: %s", self.info.id, e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("connection %d: lost: %s", self.info.id, e)

    async def send(self, message: Message, retiring: Request | None = None) -> None:
        await self.send_bytes(wire.encode(message), retiring)

    async def send_bytes(self, data: bytes, retiring: Request | None = None) -> None:
        async with self.send_lock:
            if retiring is not None:
                # The tag is free before the client can see the reply and reuse it.
                self.retire(retiring)
            await self.stream.send_all(data)

    def retire(self, request: Request) -> None:
        if self.outstanding.get(request.message.tag) is request:
            del self.outstanding[request.message.tag]

    async def clunk_all(self) -> None:
        fids, self.fids = list(self.fids.values()), {}
        with trio.move_on_after(5):
            for fid in fids:
                if fid.handle is not None:
                    try:
                        await fid.handle.clunk(aborted=True)
                    except Exception:
                        log.exception("clunk of fid %d on a closed connection", fid.num)

    # -- dispatch ---------------------------------------------------------------

    async def dispatch(self, message: Message) -> None:
        if not wire.is_request(message):
            raise wire.RemoteProtocolError(f"client sent a reply, {message.type_name}")
        if isinstance(message, wire.Tversion):
            await self.version(message)
            return
        if message.tag in self.outstanding:
            # As Plan 9's lib9p (srv.c) does: an Rerror for the newcomer, and the
            # request that holds the tag goes on.  The client is confused, not gone.
            log.warning("connection %d: %s reuses tag %d still in use", self.info.id, message.type_name, message.tag)
            await self.send(wire.Rerror(message.tag, str(errors.DUPLICATE_TAG)))
            return
        request = Request(message)
        if isinstance(message, wire.Tflush):
            # Decided here, in arrival order: flushes of one tag answer in order.
            request.flushing = self.outstanding.get(message.oldtag)
            previous = self.flushes.get(message.oldtag)
            if previous is not None and not previous.done.is_set():
                request.after = previous
            self.flushes[message.oldtag] = request
        self.outstanding[message.tag] = request
        self.nursery.start_soon(self.run_request, request)

    async def run_request(self, request: Request) -> None:
        message = request.message
        reply: Message | None = None
        try:
            with request.scope:
                try:
                    if not self.msize and not isinstance(message, wire.Tflush):
                        raise errors.NOT_NEGOTIATED()
                    reply = await self.handle(message)
                except StyxError as e:
                    reply = wire.Rerror(message.tag, str(e))
                except Exception:
                    log.exception("connection %d: %s failed", self.info.id, message)
                    reply = wire.Rerror(message.tag, str(errors.INTERNAL))
            if request.scope.cancelled_caught:
                reply = None if request.silent else wire.Rerror(message.tag, str(errors.INTERRUPTED))
            if reply is not None:
                await self.send_bytes(self.encode_reply(reply), retiring=request)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.nursery.cancel_scope.cancel()  # the client is gone
        finally:
            self.retire(request)
            request.done.set()

    def encode_reply(self, reply: Message) -> bytes:
        """The reply's frame, or an Rerror's when it cannot be sent whole."""
        try:
            data = wire.encode(reply)
        except wire.LocalProtocolError as e:
            log.warning("connection %d: cannot encode %s: %s", self.info.id, reply.type_name, e)
            return wire.encode(wire.Rerror(reply.tag, str(errors.INTERNAL)))
        if len(data) > (self.msize or self.server.max_msize):
            return wire.encode(wire.Rerror(reply.tag, str(errors.REPLY_TOO_LARGE)))
        return data

    async def handle(self, m: Message) -> Message:
        handler = getattr(self, "do_" + m.type_name[1:].lower())
        return await handler(m)

    # -- version, auth, attach, flush -----------------------------------------

    async def version(self, m: wire.Tversion) -> None:
        if m.msize < MIN_MSIZE:  # refused before anything changes, as lib9p does
            await self.send(wire.Rerror(m.tag, str(errors.MSIZE_TOO_SMALL(msize=m.msize, least=MIN_MSIZE))))
            return
        # Abort everything outstanding, unanswered, and clunk every fid.
        for request in list(self.outstanding.values()):
            request.silent = True
            request.scope.cancel()
        for request in list(self.outstanding.values()):
            await request.done.wait()
        self.flushes.clear()
        await self.clunk_all()
        msize = min(m.msize, self.server.max_msize)
        if m.version.startswith(wire.VERSION):
            version = wire.VERSION  # 9P2000.u and 9P2000.L are answered 9P2000
            self.msize = msize
            self.decoder.msize = msize
        else:
            version = "unknown"
            self.msize = 0
        await self.send(wire.Rversion(m.tag, msize, version))

    async def do_flush(self, m: wire.Tflush) -> Message:
        me = self.outstanding[m.tag]
        old = me.flushing
        if old is not None and old is not me:
            old.scope.cancel()
            with trio.CancelScope(shield=True):  # a flush waits for the old request to settle
                await old.done.wait()
        if me.after is not None:
            with trio.CancelScope(shield=True):
                await me.after.done.wait()
        if self.flushes.get(m.oldtag) is me:
            del self.flushes[m.oldtag]
        return wire.Rflush(m.tag)

    async def do_auth(self, m: wire.Tauth) -> Message:
        if self.server.authenticator is None:
            raise errors.NO_AUTH()
        return await self.server.authenticator.auth(self, m)

    async def do_attach(self, m: wire.Tattach) -> Message:
        self.check_new_fid(m.fid)
        if len(m.uname.encode()) > errors.MAX_NAME or len(m.aname.encode()) > errors.MAX_NAME:
            raise errors.UNAME_TOO_LONG()
        if self.server.authenticator is not None:
            await self.server.authenticator.check_attach(self, m)
        caller = Caller(m.uname, self.info, m.aname)
        root = await self.server.tree.attach(caller)
        self.check_new_fid(m.fid)
        self.fids[m.fid] = Fid(m.fid, caller, [root])
        return wire.Rattach(m.tag, root.qid)

    # -- fids --------------------------------------------------------------------

    def check_new_fid(self, num: int) -> None:
        if num == NOFID:
            raise errors.UNKNOWN_FID()
        if num in self.fids:
            raise errors.FID_IN_USE()

    def fid(self, num: int) -> Fid:
        fid = self.fids.get(num)
        if fid is None:
            raise errors.UNKNOWN_FID()
        return fid

    def open_fid(self, num: int) -> Fid:
        fid = self.fid(num)
        if fid.handle is None:
            raise errors.FID_NOT_OPEN()
        return fid

    def iounit(self) -> int:
        return self.msize - wire.IOHDRSZ

    async def do_walk(self, m: wire.Twalk) -> Message:
        fid = self.fid(m.fid)
        if fid.handle is not None or fid.opening:
            raise errors.WALK_OPEN_FID()
        if m.newfid != m.fid:
            self.check_new_fid(m.newfid)
        if len(m.wnames) > wire.MAXWELEM:
            raise errors.TOO_MANY_NAMES()
        path = list(fid.path)
        qids = []
        for i, name in enumerate(m.wnames):
            try:
                if not path[-1].is_dir:
                    raise errors.WALK_NOT_DIR()
                if name == "..":
                    if len(path) > 1:
                        path.pop()
                elif name in (".", "") or "/" in name:
                    raise (errors.BAD_NAME if name != "." else errors.NOT_FOUND)()
                else:
                    path.append(await path[-1].walk(name, fid.caller))
            except StyxError:
                if i == 0:
                    raise
                return wire.Rwalk(m.tag, tuple(qids))  # short walk: no new fid
            qids.append(path[-1].qid)
        if m.newfid == m.fid:
            fid.path = path
        else:
            self.check_new_fid(m.newfid)
            self.fids[m.newfid] = Fid(m.newfid, fid.caller, path)
        return wire.Rwalk(m.tag, tuple(qids))

    async def do_open(self, m: wire.Topen) -> Message:
        fid = self.fid(m.fid)
        if fid.handle is not None or fid.opening:
            raise errors.FID_OPEN()
        entry = fid.entry
        entry.check_open(m.mode)
        fid.opening = True
        try:
            handle = await entry.open(m.mode, fid.caller)
        finally:
            fid.opening = False
        if self.fids.get(m.fid) is not fid:  # clunked meanwhile
            await handle.clunk(aborted=True)
            raise errors.UNKNOWN_FID()
        fid.handle, fid.mode = handle, m.mode
        return wire.Ropen(m.tag, handle.entry.qid, self.iounit())

    async def do_create(self, m: wire.Tcreate) -> Message:
        fid = self.fid(m.fid)
        if fid.handle is not None or fid.opening:
            raise errors.FID_OPEN()
        if not fid.entry.is_dir:
            raise errors.NOT_DIR()
        if m.name in ("", ".", "..") or "/" in m.name:
            raise errors.BAD_NAME()
        if len(m.name.encode()) > errors.MAX_NAME:
            raise errors.NAME_TOO_LONG()
        fid.opening = True
        try:
            handle = await fid.entry.create(m.name, m.perm, m.mode, fid.caller)
        finally:
            fid.opening = False
        if self.fids.get(m.fid) is not fid:  # clunked meanwhile
            await handle.clunk(aborted=True)
            raise errors.UNKNOWN_FID()
        fid.path.append(handle.entry)
        fid.handle, fid.mode = handle, m.mode
        return wire.Rcreate(m.tag, handle.entry.qid, self.iounit())

    async def do_read(self, m: wire.Tread) -> Message:
        fid = self.open_fid(m.fid)
        if (fid.mode & 3) == wire.OWRITE:
            raise errors.WRITE_ONLY()
        count = min(m.count, self.iounit())
        data = await fid.handle.read(m.offset, count)
        return wire.Rread(m.tag, data[:count])

    async def do_write(self, m: wire.Twrite) -> Message:
        fid = self.open_fid(m.fid)
        if fid.entry.is_dir:
            raise errors.DIR_WRITE()
        if (fid.mode & 3) not in (wire.OWRITE, wire.ORDWR):
            raise errors.READ_ONLY()
        count = await fid.handle.write(m.offset, m.data)
        return wire.Rwrite(m.tag, count)

    async def do_clunk(self, m: wire.Tclunk) -> Message:
        fid = self.fid(m.fid)
        del self.fids[m.fid]
        if fid.handle is not None:
            await fid.handle.clunk(aborted=False)
        return wire.Rclunk(m.tag)

    async def do_remove(self, m: wire.Tremove) -> Message:
        fid = self.fid(m.fid)
        del self.fids[m.fid]  # remove clunks the fid even when it fails
        try:
            await fid.entry.remove(fid.caller)
        finally:
            if fid.handle is not None:
                await fid.handle.clunk(aborted=False)
        return wire.Rremove(m.tag)

    async def do_stat(self, m: wire.Tstat) -> Message:
        fid = self.fid(m.fid)
        return wire.Rstat(m.tag, fid.entry.stat(fid.caller))

    async def do_wstat(self, m: wire.Twstat) -> Message:
        fid = self.fid(m.fid)
        await fid.entry.wstat(m.stat, fid.caller)
        return wire.Rwstat(m.tag)


