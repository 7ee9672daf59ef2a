"""The client's calls that are sent now and answered later (Client.start)."""

from __future__ import annotations

import pytest
import trio

from styxfs import client, ramfs, wire
from styxfs.server import Server, StaticTree
from styxfs.tree import Directory, TextFile
from styxfs.trioutil import unwrapped

from .conftest import start_server


async def test_started_calls_are_answered_later_and_free_their_tags(nursery):
    address = await start_server(nursery, ramfs.make_server())
    async with client.connect(address) as c:
        tags = len(c.free_tags)
        async with await c.create("f", 0o644, wire.ORDWR) as f:
            write = await f.fid.start_write(b"abc", 0)
            stat = await c.start(wire.Tstat(0, f.fid.num))
            assert len(c.free_tags) == tags - 2  # both outstanding at once
            assert (await write.result()).count == 3
            assert (await stat.result()).stat.name == "f"
            assert len(c.free_tags) == tags and not c.pending
            # An error is the result's, not the start's.
            bad = await c.start(wire.Tread(0, 9999, 0, 10))
            with pytest.raises(client.ServerError, match="fid"):
                await bad.result()
            # Given up on: flushed, and its tag is free again.
            await (await f.fid.start_write(b"d", 3)).abandon()
            assert len(c.free_tags) == tags and not c.pending
        assert await c.read_file("f") in (b"abc", b"abcd")  # the flush may come after the write


async def test_unwrapped_lets_a_failure_out_of_a_cancelled_scope():
    async def fail():
        raise client.ConnectionLost("gone")

    # As when a node is marked down (its requests' scope cancelled) while a call fails.
    with pytest.raises(client.ConnectionLost, match="gone"), trio.CancelScope() as scope:
        async with unwrapped(), trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            scope.cancel()
            await trio.sleep(1)


async def test_cancelling_a_connection_with_a_read_in_flight_flushes_it_at_once(nursery):
    """The scope around connect() and a blocked read is cancelled: the read is
    flushed and the file clunked, and their replies are taken in, since the
    reader outlives the cancel.  Before, the reader was cancelled with the
    rest and each Rflush went unread until flush_timeout ran out."""
    reading, flushed = trio.Event(), trio.Event()

    async def never(caller):
        reading.set()
        try:
            await trio.sleep_forever()
        finally:
            flushed.set()

    root = Directory("/", 1, [TextFile("slow", 2, read=never)], perm=0o555)
    address = await start_server(nursery, Server(StaticTree(root)))
    with trio.fail_after(20):  # far less than the flush timeout
        with trio.CancelScope() as scope:
            async with client.connect(address, flush_timeout=60) as c, trio.open_nursery() as inner:
                inner.start_soon(c.read_file, "slow")
                await reading.wait()
                scope.cancel()
    assert flushed.is_set()
    assert scope.cancelled_caught
