"""The server target: one connection's bytes to a fresh ramfs server (see __init__)."""

from __future__ import annotations

import trio
import trio.testing

from styxfs import ramfs, wire
from styxfs.wire import NOFID, NOTAG

from . import oracle
from .inputs import chunks, frames
from .oracle import check

HANG_SECONDS = 60.0  # virtual (autojumping) seconds for each phase of an input
MEMORY_BUDGET = 256 << 20  # what one connection (one input, at most 70 kB) may make ramfs hold
SERVER_MSIZE = 8192
SMALL_MSIZE = 256  # the least the server takes: frames near msize fit in a fuzz input
# The mode byte of a server input: how the bytes are chunked (and, for random
# chunks, bits 2-3 seed them), the msize of the handshake, quiesce before the
# end, abort (close both ways) rather than EOF, an unbuffered (lockstep) stream.
Q_CHUNK, Q_SMALL, Q_QUIESCE, Q_ABORT, Q_LOCKSTEP = 0x03, 0x10, 0x20, 0x40, 0x80


def _ramfs_bytes(server) -> int:
    """The bytes the server's ramfs files hold."""
    total, stack = 0, [server.tree.root]
    while stack:
        entry = stack.pop()
        total += len(getattr(entry, "data", b""))
        stack.extend(getattr(entry, "files", {}).values())
    return total


def _pieces(mode: int, payload: bytes) -> list[bytes]:
    if mode & Q_CHUNK == 1:  # (small pieces of the first 4 KiB only: a piece costs a pass of the loop)
        return chunks(payload[:4096], (mode >> 2 & 3) + 1) + [payload[4096:]]
    if mode & Q_CHUNK == 2:
        return frames(payload)
    if mode & Q_CHUNK == 3:
        return [payload[i : i + 1] for i in range(min(len(payload), 64))] + [payload[64:]]
    return [payload]


async def server_input(data: bytes, log: oracle.ErrorLog, stats: dict | None = None) -> None:
    """One input against a fresh ramfs server; raises Finding if it breaks a property."""
    try:
        await _server_input(data, log, stats)
    except BaseExceptionGroup as group:  # a nursery's: let the one exception out
        e = oracle.single(group)
        if isinstance(e, BaseExceptionGroup):
            raise
        raise e from None


async def _server_input(data: bytes, log: oracle.ErrorLog, stats: dict | None) -> None:
    log.clear()  # what an earlier input that failed early left
    mode, payload = (data[0], bytes(data[1:])) if data else (0, b"")
    msize = SMALL_MSIZE if mode & Q_SMALL else SERVER_MSIZE
    handshake = wire.encode(wire.Tversion(NOTAG, msize, wire.VERSION)) + wire.encode(wire.Tattach(0, 0, NOFID, "fuzz", ""))
    server = ramfs.make_server()
    make_pair = trio.testing.lockstep_stream_pair if mode & Q_LOCKSTEP else trio.testing.memory_stream_pair
    cs, ss = make_pair()
    replies: list = []
    bad_output: list = []
    served, drained = trio.Event(), trio.Event()

    async def serve():
        try:
            await server.handle_stream(ss)
        finally:
            served.set()

    async def read_replies():
        decoder = wire.FrameDecoder(server.max_msize)
        try:
            while chunk := await cs.receive_some(65536):
                decoder.feed(chunk)
                replies.extend(decoder)
        except wire.ProtocolError as e:
            bad_output.append(e)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            drained.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(read_replies)
        with trio.move_on_after(HANG_SECONDS) as scope:
            await cs.send_all(handshake)
            await trio.testing.wait_all_tasks_blocked()
            check(replies[:1] == [wire.Rversion(NOTAG, msize, wire.VERSION)]
                  and len(replies) == 2 and isinstance(replies[1], wire.Rattach), "handshake failed", repr(replies))
            (conn,) = server.connections
            try:
                for piece in _pieces(mode, payload):
                    if piece:
                        await cs.send_all(piece)
                    if mode & Q_CHUNK == 2:
                        await trio.testing.wait_all_tasks_blocked()  # a lockstep client
                    else:
                        await trio.sleep(0)
                if mode & Q_QUIESCE:
                    await trio.testing.wait_all_tasks_blocked()
                if mode & Q_ABORT:
                    await cs.aclose()
                else:
                    await cs.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await cs.aclose()  # the server hung up on a protocol error
            await served.wait()
            await drained.wait()
        nursery.cancel_scope.cancel()
    log.check()
    check(not scope.cancelled_caught, "hang: connection not closed after the client's EOF",
          f"served={served.is_set()} fids={sorted(conn.fids)} outstanding={sorted(conn.outstanding)}")
    check(not bad_output, "server sent undecodable bytes", repr(bad_output[:1]))
    check(not conn.fids, "fids left after close", repr(sorted(conn.fids)))
    check(not conn.outstanding, "requests outstanding after close", repr(sorted(conn.outstanding)))
    oracle.check_released(server)
    oracle.check_replies(replies, handshake + payload, msize)
    held = _ramfs_bytes(server)
    check(held <= MEMORY_BUDGET, "one connection made ramfs hold too much memory",
          f"{held >> 20} MiB in files from a {len(data)}-byte input")
    if stats is not None:
        for m in replies[2:]:
            stats["kinds"][m.type_name] = stats["kinds"].get(m.type_name, 0) + 1
    await oracle.normal_client(server, HANG_SECONDS)
    log.check()
    oracle.check_released(server, "server holds the normal client's connection")
