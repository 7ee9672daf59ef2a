"""What a fuzzed 9P server must do, whatever it was sent: the one oracle of
the server fuzz target and of tests/test_fuzz.py.

- Its replies (check_replies): each is a reply, fits the msize in force (an
  Rread within its iounit), is never "internal error", and no tag is answered
  more often than requests with that tag were sent.
- Its log (ErrorLog): nothing at level ERROR; a handler answers StyxError or
  nothing, it never fails with an exception.
- Its hold (check_released): once its connections are closed, no connection,
  fid or outstanding request is left.
- Its service (normal_client): a well-behaved client still works afterwards.

A broken property raises Finding, an AssertionError whose `kind` is its
signature.
"""

from __future__ import annotations

import logging
import os
import traceback

import trio
import trio.testing

from styxfs import errors, wire
from styxfs.wire import NOFID, NOTAG

NORMAL_MSIZE = 8192  # the normal client's


class Finding(AssertionError):
    """An input broke a property.  `kind` is its signature."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def check(condition: bool, kind: str, detail: str = "") -> None:
    if not condition:
        raise Finding(kind, detail)


def single(group: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, if there is one."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


def where(e: BaseException) -> str:
    """An exception's type and innermost frame, for a finding's signature."""
    e = single(e)
    kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
    tb = traceback.extract_tb(e.__traceback__)
    return f"{kind} at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else kind


# ---- replies ---------------------------------------------------------------------


def requests_by_tag(sent: bytes) -> dict[int, int]:
    """How many requests of each tag the server could have decoded from the
    bytes sent (up to the first that are not 9P; a mutated frame may carry a
    tag of its own)."""
    decoder, tags = wire.FrameDecoder(1 << 32), {}
    decoder.feed(sent)
    try:
        for m in decoder:
            tags[m.tag] = tags.get(m.tag, 0) + 1
    except wire.ProtocolError:
        pass
    return tags


def check_replies(replies: list, sent: bytes, msize: int) -> None:
    """The replies of one connection to the bytes sent on it, whose msize was
    `msize` before any Rversion (0: not bounded); each Rversion sets it anew."""
    limit = msize
    budget = requests_by_tag(sent)
    for m in replies:
        check(not wire.is_request(m), "server sent a request", repr(m))
        size = len(wire.encode(m))
        if limit:
            check(size <= limit, "reply larger than msize", f"{m.type_name} of {size} bytes, msize {limit}")
        if isinstance(m, wire.Rread) and limit:
            check(len(m.data) <= limit - wire.IOHDRSZ, "Rread over the iounit", f"{len(m.data)} bytes, msize {limit}")
        if isinstance(m, wire.Rerror):
            check(m.ename != str(errors.INTERNAL), "internal error", repr(m))
        if isinstance(m, wire.Rversion):
            limit = m.msize if m.version == wire.VERSION else 0
        budget[m.tag] = budget.get(m.tag, 0) - 1
        check(budget[m.tag] >= 0, "more replies than requests for a tag", repr(m))


# ---- the log and the hold ------------------------------------------------------------


class ErrorLog:
    """Records styxfs's log records of level ERROR (handler exceptions) from
    when it is made until uninstall() (or the end of its with block)."""

    def __init__(self):
        self.records: list = []
        self.handler = logging.Handler(logging.ERROR)
        self.handler.emit = self.records.append
        self.logger = logging.getLogger("styxfs")
        self.saved = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.ERROR)  # protocol-error warnings are the fuzz's daily bread
        self.logger.propagate = False
        self.logger.addHandler(self.handler)

    def __enter__(self) -> "ErrorLog":
        return self

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def uninstall(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]

    def clear(self) -> None:
        self.records.clear()

    def check(self) -> None:
        """No error logged since the last check (or clear)."""
        records = list(self.records)
        self.clear()
        if records:
            first = records[0]
            text = first.getMessage() + "\n" + ("".join(traceback.format_exception(*first.exc_info)) if first.exc_info else "")
            raise Finding(f"server logged an error ({where(first.exc_info[1]) if first.exc_info else ''})", text)


def check_released(server, kind: str = "server holds a closed connection") -> None:
    check(not server.connections and server.fid_count() == 0 and server.outstanding_count() == 0, kind,
          f"{len(server.connections)} connections, {server.fid_count()} fids, {server.outstanding_count()} requests")


# ---- service -----------------------------------------------------------------------


async def normal_client(server, hang_seconds: float) -> None:
    """A well-behaved client, one request at a time, on the server a fuzz
    left behind.  The fuzz may have chmod'ed or filled the root, so only what
    nothing can refuse is required: version, attach, a new file of its own,
    its data, its removal; a directory listing must decode if it is readable.
    (Raw frames rather than styxfs.client: its Client() costs 2 ms to make.)"""
    cs, ss = trio.testing.memory_stream_pair()
    served = trio.Event()
    decoder = wire.FrameDecoder(NORMAL_MSIZE)

    async def serve():
        try:
            await server.handle_stream(ss)
        finally:
            served.set()

    async def rpc(request, want=None):
        await cs.send_all(wire.encode(request))
        while (reply := decoder.next_message()) is None:
            data = await cs.receive_some(65536)
            check(bool(data), "normal client: connection closed", repr(request))
            decoder.feed(data)
        check(reply.tag == request.tag, "normal client: reply to another tag", f"{request!r} -> {reply!r}")
        if want is not None:
            why = reply.ename if isinstance(reply, wire.Rerror) else reply.type_name
            check(isinstance(reply, want), f"normal client: {request.type_name} refused ({why})", f"{request!r} -> {reply!r}")
        return reply

    body = bytes(range(256)) * 31
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with trio.move_on_after(hang_seconds) as scope:
            try:
                await rpc(wire.Tversion(NOTAG, NORMAL_MSIZE, wire.VERSION), wire.Rversion)
                await rpc(wire.Tattach(1, 100, NOFID, "glenda", ""), wire.Rattach)
                for i in range(8):
                    name = f"after-fuzz-{i}"
                    await rpc(wire.Twalk(1, 100, 101, ()), wire.Rwalk)
                    reply = await rpc(wire.Tcreate(1, 101, name, 0o644, wire.ORDWR))
                    if isinstance(reply, wire.Rcreate):
                        break
                    check(reply == wire.Rerror(1, str(errors.EXISTS)), "normal client: create refused", repr(reply))
                    await rpc(wire.Tclunk(1, 101), wire.Rclunk)
                written = await rpc(wire.Twrite(1, 101, 0, body))
                if written != wire.Rerror(1, str(errors.FS_FULL)):  # the fuzz may have filled ramfs: a clear, fair refusal
                    check(written == wire.Rwrite(1, len(body)), "normal client: short write", repr(written))
                    check(await rpc(wire.Tread(1, 101, 0, 8000)) == wire.Rread(1, body), "normal client: read back differs")
                    check((await rpc(wire.Tstat(1, 101), wire.Rstat)).stat.length == len(body), "normal client: stat length")
                await rpc(wire.Tclunk(1, 101), wire.Rclunk)
                await rpc(wire.Twalk(1, 100, 102, ()), wire.Rwalk)
                if isinstance(await rpc(wire.Topen(1, 102, wire.OREAD)), wire.Ropen):  # the fuzz may have made the root unreadable
                    names, offset = [], 0
                    while (data := (await rpc(wire.Tread(1, 102, offset, NORMAL_MSIZE - wire.IOHDRSZ), wire.Rread)).data):
                        names += [d.name for d in wire.decode_dirs(data)]
                        offset += len(data)
                    check(name in names, "normal client: new file not listed", repr(names))
                await rpc(wire.Tclunk(1, 102), wire.Rclunk)
                await rpc(wire.Twalk(1, 100, 103, (name,)), wire.Rwalk)
                await rpc(wire.Tremove(1, 103), wire.Rremove)
                check(server.fid_count() == 1, "normal client: fids left", str(server.fid_count()))
                check(server.outstanding_count() == 0, "normal client: requests outstanding")
            except wire.ProtocolError as e:
                raise Finding("normal client: bad reply", f"{type(e).__name__}: {e}") from None
            await cs.aclose()
            await served.wait()
        nursery.cancel_scope.cancel()
    check(not scope.cancelled_caught, "hang: normal client")
