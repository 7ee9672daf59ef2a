"""A 9P2000 client on trio.

    async with styxfs.client.connect("tcp!127.0.0.1!5640") as c:
        print(await c.read_file("model"))
        async with await c.open("new/data", OWRITE) as f:
            await f.write(b"Once upon a time")

Many requests run at once over one connection (tags are multiplexed by a
reader task).  A call that is cancelled while it waits sends Tflush and
waits for the Rflush before giving up.  An Rerror raises `ServerError`.
"""

from __future__ import annotations

import dataclasses
import getpass
import itertools
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from . import dial, tls, wire
from .trioutil import unwrapped
from .wire import NOFID, NOTAG, OREAD, Dir, Message, Qid

log = logging.getLogger("styxfs.client")


class Error(Exception):
    """A failure talking to a 9P server."""


class ServerError(Error):
    """The server answered Rerror; str(error) is its text."""

    def __init__(self, ename: str):
        super().__init__(ename)
        self.ename = ename


class ConnectionLost(Error):
    pass


class _Pending:
    def __init__(self):
        self.event = trio.Event()
        self.reply: Message | None = None


class Call:
    """A request sent, its reply to come."""

    def __init__(self, client: "Client", message: Message):
        self.client, self.message = client, message
        self.waiter = client.pending[message.tag] = _Pending()

    async def result(self) -> Message:
        """The reply; Rerror raises ServerError.  Cancelled, it flushes."""
        try:
            await self.waiter.event.wait()
        except trio.Cancelled:
            await self.abandon()
            raise
        self.free()
        reply = self.waiter.reply
        if reply is None:
            raise ConnectionLost(str(self.client.closed))
        if isinstance(reply, wire.Rerror):
            raise ServerError(reply.ename)
        if reply.TYPE != self.message.TYPE + 1:
            raise Error(f"{self.message.type_name} answered by {reply.type_name}")
        return reply

    def free(self) -> None:
        if self.client.pending.get(self.message.tag) is self.waiter:
            del self.client.pending[self.message.tag]
            self.client.free_tags.append(self.message.tag)

    async def abandon(self) -> None:
        """Give up on the reply: flush the request (its tag is reused only after that)."""
        if self.client.pending.get(self.message.tag) is not self.waiter:
            return
        del self.client.pending[self.message.tag]
        with trio.CancelScope(shield=True):
            await self.client._flush(self.message.tag)
        self.client.free_tags.append(self.message.tag)


class Client:
    def __init__(self, stream: trio.abc.Stream, msize: int = 8192):
        self.stream = stream
        self.msize = msize
        self.decoder = wire.FrameDecoder(msize)
        self.pending: dict[int, _Pending] = {}
        self.free_tags = list(range(0xFFFE, -1, -1))
        self.fid_numbers = itertools.count(1)
        self.send_lock = trio.StrictFIFOLock()
        self.closed: BaseException | None = None
        self.root: Fid | None = None
        self.flush_timeout = 10.0  # how long a cancelled call waits for its Rflush
        # The reader outlives a cancel of the scope it runs in: a cancelled
        # call's Tflush and the clunks that follow still need their replies.
        # stop() (or leaving connect()) ends it.
        self.reader_scope = trio.CancelScope(shield=True)

    # -- the connection ---------------------------------------------------------

    async def _reader(self) -> None:
        with self.reader_scope:
            await self._read_replies()

    def stop(self) -> None:
        """End the reader: no more replies are taken in."""
        self.reader_scope.cancel()

    async def _read_replies(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise ConnectionLost("connection closed by the server")
                self.decoder.feed(data)
                for message in self.decoder:
                    waiter = self.pending.get(message.tag)
                    if waiter is None:
                        log.warning("reply for no outstanding request: %s", message)
                        continue
                    waiter.reply = message
                    waiter.event.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._fail(ConnectionLost(f"connection lost: {tls.why_lost(e)}"))
        except (ConnectionLost, wire.ProtocolError) as e:
            self._fail(e if isinstance(e, Error) else Error(str(e)))

    def _fail(self, exc: BaseException) -> None:
        if self.closed is None:
            self.closed = exc
        for waiter in self.pending.values():
            waiter.event.set()

    async def _send(self, message: Message) -> None:
        data = wire.encode(message)
        async with self.send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise ConnectionLost(f"connection lost: {tls.why_lost(e)}") from None

    async def _transact(self, message: Message, tag: int) -> Message:
        if self.closed is not None:
            raise ConnectionLost(str(self.closed))
        waiter = self.pending[tag] = _Pending()
        try:
            await self._send(message)
            await waiter.event.wait()
        finally:
            del self.pending[tag]
        if waiter.reply is None:
            raise ConnectionLost(str(self.closed))
        return waiter.reply

    async def rpc(self, message: Message) -> Message:
        """Send a request (its tag is filled in) and return the reply.
        Rerror raises ServerError."""
        return await (await self.start(message)).result()

    async def start(self, message: Message) -> "Call":
        """Send a request and return at once; `await call.result()` gives the
        reply.  Every call started must have its result awaited (that frees
        its tag)."""
        if self.closed is not None:
            raise ConnectionLost(str(self.closed))
        if not self.free_tags:
            raise Error("too many outstanding requests")
        call = Call(self, dataclasses.replace(message, tag=self.free_tags.pop()))
        try:
            await self._send(call.message)
        except trio.Cancelled:
            await call.abandon()  # it may have gone out, in part or whole
            raise
        except BaseException:
            call.free()
            raise
        return call

    async def _flush(self, oldtag: int) -> None:
        if self.closed is not None or not self.free_tags:
            return
        tag = self.free_tags.pop()
        # The old tag stays reserved until the Rflush: its reply may still come.
        self.pending.setdefault(oldtag, _Pending())
        try:
            with trio.move_on_after(self.flush_timeout):
                await self._transact(wire.Tflush(tag, oldtag), tag)
        except Error:
            pass
        finally:
            self.pending.pop(oldtag, None)
            self.free_tags.append(tag)

    async def version(self, msize: int | None = None) -> wire.Rversion:
        reply = await self._transact(wire.Tversion(NOTAG, msize or self.msize, wire.VERSION), NOTAG)
        if isinstance(reply, wire.Rerror):
            raise ServerError(reply.ename)
        if not isinstance(reply, wire.Rversion) or reply.version != wire.VERSION:
            raise Error(f"server does not speak {wire.VERSION}: {reply}")
        self.msize = reply.msize
        return reply

    async def attach(self, uname: str, aname: str = "", afid: int = NOFID) -> "Fid":
        num = next(self.fid_numbers)
        reply = await self.rpc(wire.Tattach(0, num, afid, uname, aname))
        self.root = Fid(self, num, reply.qid)
        return self.root

    async def aclose(self) -> None:
        self._fail(ConnectionLost("connection closed"))  # nobody waits on a reply that cannot come
        await trio.aclose_forcefully(self.stream)

    @property
    def iounit(self) -> int:
        return self.msize - wire.IOHDRSZ

    # -- paths ------------------------------------------------------------------

    async def walk(self, path: str | list[str] = "") -> "Fid":
        """A new fid for path, relative to the attach root."""
        return await self.root.walk(path)

    async def open(self, path: str, mode: int = OREAD) -> "File":
        fid = await self.walk(path)
        try:
            await fid.open(mode)
        except BaseException:
            await fid.clunk_quietly()
            raise
        return File(fid)

    async def create(self, path: str, perm: int = 0o644, mode: int = wire.OWRITE) -> "File":
        parent, _, name = path.rstrip("/").rpartition("/")
        fid = await self.walk(parent)
        try:
            await fid.create(name, perm, mode)
        except BaseException:
            await fid.clunk_quietly()
            raise
        return File(fid)

    async def read_file(self, path: str) -> bytes:
        async with await self.open(path) as f:
            return await f.read_all()

    async def write_file(self, path: str, data: bytes | str, mode: int = wire.OWRITE | wire.OTRUNC) -> None:
        async with await self.open(path, mode) as f:
            await f.write(data)

    async def listdir(self, path: str = "") -> list[Dir]:
        async with await self.open(path) as f:
            return wire.decode_dirs(await f.read_all())

    async def stat(self, path: str = "") -> Dir:
        fid = await self.walk(path)
        try:
            return await fid.stat()
        finally:
            await fid.clunk_quietly()

    async def remove(self, path: str) -> None:
        fid = await self.walk(path)
        await fid.remove()

    async def wstat(self, path: str, new: Dir) -> None:
        fid = await self.walk(path)
        try:
            await fid.wstat(new)
        finally:
            await fid.clunk_quietly()


def split_path(path: str | list[str]) -> list[str]:
    if isinstance(path, list):
        return path
    return [name for name in path.split("/") if name]


class Fid:
    def __init__(self, client: Client, num: int, qid: Qid):
        self.client, self.num, self.qid = client, num, qid
        self.iounit = client.iounit
        self.clunked = False

    async def walk(self, path: str | list[str] = "") -> "Fid":
        names = split_path(path)
        num = next(self.client.fid_numbers)
        qid = self.qid
        # Walk 16 names at a time (MAXWELEM), once at least (no names: a clone);
        # a short Rwalk means not found.
        for start in range(0, max(len(names), 1), wire.MAXWELEM):
            chunk = names[start : start + wire.MAXWELEM]
            reply = await self.client.rpc(wire.Twalk(0, num if start else self.num, num, tuple(chunk)))
            if len(reply.wqids) < len(chunk):
                if start:
                    await Fid(self.client, num, qid).clunk_quietly()
                raise ServerError(f"{'/'.join(names[: start + len(reply.wqids) + 1])}: file does not exist")
            if reply.wqids:
                qid = reply.wqids[-1]
        return Fid(self.client, num, qid)

    async def open(self, mode: int = OREAD) -> None:
        reply = await self.client.rpc(wire.Topen(0, self.num, mode))
        self.qid = reply.qid
        self.iounit = reply.iounit or self.client.iounit

    async def create(self, name: str, perm: int, mode: int) -> None:
        reply = await self.client.rpc(wire.Tcreate(0, self.num, name, perm, mode))
        self.qid = reply.qid
        self.iounit = reply.iounit or self.client.iounit

    async def read(self, count: int, offset: int) -> bytes:
        reply = await self.client.rpc(wire.Tread(0, self.num, offset, min(count, self.iounit)))
        return reply.data

    async def write(self, data: bytes, offset: int) -> int:
        reply = await self.client.rpc(wire.Twrite(0, self.num, offset, data))
        return reply.count

    async def start_read(self, count: int, offset: int) -> Call:
        """Send a Tread now; the Rread is `await call.result()`'s."""
        return await self.client.start(wire.Tread(0, self.num, offset, min(count, self.iounit)))

    async def start_write(self, data: bytes, offset: int) -> Call:
        """Send a Twrite now; the Rwrite is `await call.result()`'s."""
        return await self.client.start(wire.Twrite(0, self.num, offset, data))

    async def stat(self) -> Dir:
        return (await self.client.rpc(wire.Tstat(0, self.num))).stat

    async def wstat(self, new: Dir) -> None:
        await self.client.rpc(wire.Twstat(0, self.num, new))

    async def clunk(self) -> None:
        if not self.clunked:
            self.clunked = True
            await self.client.rpc(wire.Tclunk(0, self.num))

    async def clunk_quietly(self) -> None:
        """Clunk, even when cancelled, ignoring errors; a server that does not
        answer is given up on after a few seconds."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self.clunk()
            except Error:
                pass

    async def remove(self) -> None:
        self.clunked = True
        await self.client.rpc(wire.Tremove(0, self.num))


class File:
    """An open fid with a file offset, as a Unix file is."""

    def __init__(self, fid: Fid):
        self.fid = fid
        self.offset = 0

    async def read(self, count: int | None = None) -> bytes:
        data = await self.fid.read(count or self.fid.iounit, self.offset)
        self.offset += len(data)
        return data

    async def read_all(self) -> bytes:
        chunks = []
        while data := await self.read():
            chunks.append(data)
        return b"".join(chunks)

    async def stream(self) -> AsyncIterator[bytes]:
        """Each piece as it arrives, until EOF."""
        while data := await self.read():
            yield data

    async def write(self, data: bytes | str) -> int:
        if isinstance(data, str):
            data = data.encode()
        view = memoryview(data)
        written = 0
        while written < len(data) or not data:
            piece = bytes(view[written : written + self.fid.iounit])
            n = await self.fid.write(piece, self.offset)
            self.offset += n
            written += n
            if not data or n == 0:
                break
        return written

    async def close(self) -> None:
        await self.fid.clunk()

    async def __aenter__(self) -> "File":
        return self

    async def __aexit__(self, *exc) -> None:
        if exc[0] is None:
            await self.close()
        else:
            await self.fid.clunk_quietly()


@asynccontextmanager
async def connect(address: str | dial.Address, *, uname: str | None = None, aname: str = "",
                  msize: int = 8192, authenticate=None, flush_timeout: float = 10.0,
                  tls_context=None, tls_name: str | None = None) -> AsyncIterator[Client]:
    """Dial, version and attach; the client lives while the block runs.
    `authenticate(client, uname, aname) -> afid` runs the auth protocol when given;
    a tls! address is checked by tls_context (styxfs.tls.client_context), for tls_name if given."""
    if isinstance(address, str):
        address = dial.parse(address)
    try:
        stream = await dial.connect(address, tls_context, tls_name)
    except OSError as e:
        raise ConnectionLost(f"cannot connect to {address}: {e.strerror or e}") from None
    async with attached(stream, uname=uname, aname=aname, msize=msize, authenticate=authenticate,
                        flush_timeout=flush_timeout) as client:
        yield client


@asynccontextmanager
async def attached(stream: trio.abc.Stream, *, uname: str | None = None, aname: str = "", msize: int = 8192,
                   authenticate=None, flush_timeout: float = 10.0) -> AsyncIterator[Client]:
    """Version and attach over a stream already open; it is closed after the block."""
    client = Client(stream, msize)
    client.flush_timeout = flush_timeout
    try:
        async with unwrapped(), trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                await client.version(msize)
                uname = uname or getpass.getuser()
                afid = await authenticate(client, uname, aname) if authenticate else NOFID
                await client.attach(uname, aname, afid)
                yield client
            finally:
                client.stop()
    finally:
        await client.aclose()
