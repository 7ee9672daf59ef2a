"""The server's fid table against requests that race: a fid clunked while
its open or create is still running."""

from __future__ import annotations

import pytest
import trio

from styxfs import errors, wire
from styxfs.server import Server, StaticTree
from styxfs.tree import Caller, Directory, Entry, Handle
from styxfs.wire import NOFID, NOTAG

from .conftest import start_server
from .test_bad_input import Raw


class Gate(Handle):
    def __init__(self, entry, clunked: list):
        super().__init__(entry)
        self.clunked = clunked

    async def clunk(self, aborted: bool) -> None:
        self.clunked.append(aborted)


class SlowDir(Directory):
    """create and open of its file wait until `release` is set."""

    def __init__(self):
        super().__init__("/", 0, [SlowFile(self)])
        self.entered, self.release = trio.Event(), trio.Event()
        self.clunked: list[bool] = []

    async def create(self, name: str, perm: int, mode: int, caller: Caller) -> Handle:
        self.entered.set()
        await self.release.wait()
        return Gate(Entry(name, 7, 0o666), self.clunked)


class SlowFile(Entry):
    def __init__(self, parent: SlowDir):
        super().__init__("slow", 8, 0o666)
        self.parent = parent

    async def open(self, mode: int, caller: Caller) -> Handle:
        self.parent.entered.set()
        await self.parent.release.wait()
        return Gate(self, self.parent.clunked)


@pytest.mark.parametrize("request_kind", ["create", "open"])
async def test_a_fid_clunked_during_its_open_or_create_lets_go_of_the_handle(nursery, request_kind):
    root = SlowDir()
    address = await start_server(nursery, Server(StaticTree(root)))
    raw = Raw(await trio.open_tcp_stream("127.0.0.1", int(address.rsplit("!", 1)[1])))
    assert isinstance(await raw.rpc(wire.Tversion(NOTAG, 8192, "9P2000")), wire.Rversion)
    assert isinstance(await raw.rpc(wire.Tattach(1, 0, NOFID, "glenda", "")), wire.Rattach)
    names = ("slow",) if request_kind == "open" else ()
    assert isinstance(await raw.rpc(wire.Twalk(2, 0, 1, names)), wire.Rwalk)
    if request_kind == "open":
        await raw.send(wire.Topen(3, 1, wire.ORDWR))
    else:
        await raw.send(wire.Tcreate(3, 1, "new", 0o666, wire.ORDWR))
    with trio.fail_after(5):
        await root.entered.wait()
    assert isinstance(await raw.rpc(wire.Tclunk(4, 1)), wire.Rclunk)  # while it waits
    root.release.set()
    reply = await raw.receive()
    assert isinstance(reply, wire.Rerror) and reply.ename == str(errors.UNKNOWN_FID), reply
    assert root.clunked == [True]  # the handle it made is let go at once, not leaked
