"""Bad input, table-driven: each case gets the error it must, and the node
carries on serving (a fresh client's prompt is answered after every case)."""

from __future__ import annotations

import struct

import pytest
import trio

from styxfs import client, wire
from styxfs.wire import NOFID, NOTAG

from .support import wait_until

PROMPT = "Once upon a time"


class Raw:
    """A bare 9P connection: frames out, messages in."""

    def __init__(self, stream):
        self.stream, self.decoder = stream, wire.FrameDecoder(1 << 20)

    async def send(self, *messages, raw: bytes = b""):
        await self.stream.send_all(b"".join(wire.encode(m) for m in messages) + raw)

    async def receive(self):
        with trio.fail_after(5):
            while (m := self.decoder.next_message()) is None:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None  # closed by the server
                self.decoder.feed(data)
            return m

    async def rpc(self, message):
        await self.send(message)
        return await self.receive()


async def raw_session(address: str, msize: int = 8192) -> Raw:
    stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit("!", 1)[1]))
    raw = Raw(stream)
    assert isinstance(await raw.rpc(wire.Tversion(NOTAG, msize, "9P2000")), wire.Rversion)
    assert isinstance(await raw.rpc(wire.Tattach(1, 0, NOFID, "glenda", "")), wire.Rattach)
    return raw


def error(ename_part):
    def check(reply):
        assert isinstance(reply, wire.Rerror) and ename_part in reply.ename, reply
    return check


def closed(reply):
    assert reply is None, reply


async def frame_over_msize(raw):
    await raw.send(raw=struct.pack("<IB", 100_000, 116) + b"\0" * 64)
    return await raw.receive()


async def duplicate_tag(raw):
    """Both answered, the connection kept (tests/transcripts/bad-duplicate-tag.txt
    pins the words, with a read that is surely still outstanding)."""
    await raw.rpc(wire.Twalk(2, 0, 1, ("new",)))
    await raw.send(wire.Tread(7, 0, 0, 10), wire.Tread(7, 0, 0, 10))  # fid 0 is not open
    first = await raw.receive()
    second = await raw.receive()
    return [first, second]


def both_refused(replies):
    assert all(isinstance(r, wire.Rerror) for r in replies), replies


async def walk_above_root(raw):
    reply = await raw.rpc(wire.Twalk(2, 0, 1, ("..", "..", "..")))
    assert isinstance(reply, wire.Rwalk) and len(reply.wqids) == 3
    return await raw.rpc(wire.Tstat(3, 1))


async def open_and(raw, path, mode, then=None):
    reply = await raw.rpc(wire.Twalk(2, 0, 1, tuple(path.split("/"))))
    assert isinstance(reply, wire.Rwalk), reply
    reply = await raw.rpc(wire.Topen(3, 1, mode))
    if then is None or isinstance(reply, wire.Rerror):
        return reply
    return await raw.rpc(then)


def ctl(command):
    return lambda raw: open_and(raw, "clone", wire.ORDWR, wire.Twrite(4, 1, 0, command.encode()))


def root_ctl(command):
    return lambda raw: open_and(raw, "ctl", wire.OWRITE, wire.Twrite(4, 1, 0, command.encode()))


async def big_prompt(raw):
    await open_and(raw, "new/data", wire.ORDWR)
    reply = None
    for k in range(0, 10 << 20, 8000):  # 10 MB in Inferno-sized writes: refused past the cap
        reply = await raw.rpc(wire.Twrite(4, 1, k, b"x" * 8000))
        if isinstance(reply, wire.Rerror):
            break
    return reply


async def bad_utf8(raw):
    await open_and(raw, "new/data", wire.ORDWR)
    await raw.rpc(wire.Twrite(4, 1, 0, b"\xff\xfe\xc3("))
    return await raw.rpc(wire.Tread(5, 1, 0, 100))


async def session_cap(raw):
    reply = None
    for fid in range(10, 400):  # the cap is 256
        await raw.rpc(wire.Twalk(2, 0, fid, ("clone",)))
        reply = await raw.rpc(wire.Topen(3, fid, wire.ORDWR))
        if isinstance(reply, wire.Rerror):
            break
    return reply


CASES = [
    ("frame over msize", frame_over_msize, closed),
    ("zero msize", lambda raw: raw.rpc(wire.Tversion(NOTAG, 0, "9P2000")), error("invalid msize 0: at least 256")),
    ("tiny msize", lambda raw: raw.rpc(wire.Tversion(NOTAG, 100, "9P2000")), error("invalid msize 100")),
    ("walk of 17 names", lambda raw: raw.rpc(wire.Twalk(2, 0, 1, ("new",) * 17)), error("walk too long: more than 16 names")),
    (".. above the root", walk_above_root, lambda r: r.stat.name == "/" or pytest.fail(repr(r))),
    ("duplicate fid", lambda raw: raw.rpc(wire.Tattach(2, 0, NOFID, "glenda", "")), error("fid in use")),
    ("duplicate tag", duplicate_tag, both_refused),
    ("read at a huge offset", lambda raw: open_and(raw, "ctl", wire.OREAD, wire.Tread(4, 1, 1 << 63, 100)),
     lambda r: r.data == b"" or pytest.fail(repr(r))),
    ("write to a directory", lambda raw: open_and(raw, "new", wire.OWRITE), error("is a directory")),
    ("write to a read-only file", lambda raw: open_and(raw, "model", wire.OWRITE), error("file is read-only")),
    ("ctl line with too many fields", root_ctl("load a ctx 1 gpulayers 2 threads 3 batch 4 x 5"), error("usage: load")),
    ("unterminated quote", ctl("stop 'abc"), error("unterminated quote")),
    ("negative maxtokens", ctl("maxtokens -1"), error("out of range")),
    ("temperature NaN", ctl("temperature NaN"), error("not a finite number")),
    ("load outside the models dir", root_ctl("load ../../etc/passwd"), error("outside the models directory")),
    ("prompt of 10 MB", big_prompt, error("prompt too long: over 1048576 bytes")),
    ("invalid UTF-8", bad_utf8, error("invalid prompt: not UTF-8")),
    ("thousands of clone opens", session_cap, error("too many sessions: all busy, the cap is 256")),
]


@pytest.fixture
async def node_address(start_fake_node):
    address, node = await start_fake_node(max_connections=100)
    return address


async def still_serves(address):
    async with client.connect(address) as c:
        await c.write_file("new/ctl", "maxtokens 3")
        async with await c.open("data", wire.ORDWR) as f:
            await f.write(PROMPT)
            assert await f.read_all()


@pytest.mark.parametrize("action, check", [(a, c) for _, a, c in CASES], ids=[n for n, _, _ in CASES])
async def test_bad_input(node_address, action, check):
    raw = await raw_session(node_address)
    check(await action(raw))
    await raw.stream.aclose()
    await still_serves(node_address)


async def test_thousands_of_connections_meet_the_cap(node_address):
    port = int(node_address.rsplit("!", 1)[1])
    streams = []
    for _ in range(300):
        streams.append(await trio.open_tcp_stream("127.0.0.1", port))
    refused = 0
    for stream in streams:
        await stream.send_all(wire.encode(wire.Tversion(NOTAG, 8192, "9P2000")))
    for stream in streams:
        with trio.fail_after(5):
            try:
                data = await stream.receive_some(100)
            except trio.BrokenResourceError:
                data = b""
        refused += not data
    assert refused >= 200  # the cap is 100 connections: the rest are closed at once
    for stream in streams:
        await stream.aclose()

    async def serves() -> bool:
        try:
            await still_serves(node_address)
            return True
        except client.Error:  # refused while the closed connections still count
            return False

    await wait_until(serves, "the node to serve again", timeout=5, interval=0.1)
