"""Fuzz a live ramfs server: random bytes, mutated frames and random (valid but
senseless) requests from many connections; then a normal client must still
work and the server must hold nothing left over.  What the server must do
is the fuzz oracle's (bench/fuzz/oracle.py, the fuzz targets' too).

Seeded: a failure names its seed and connection, and reruns the same bytes
(the interleaving of connections may differ).
"""

from __future__ import annotations

import os
import random
import struct

import pytest
import trio

from bench.fuzz import oracle
from styxfs import client, dial, errors, ramfs, wire
from styxfs.wire import NOFID, NOTAG, Dir

SEED = int(os.environ.get("STYXFS_FUZZ_SEED", "0x9F2000"), 0)  # to hunt: try others
CONNECTIONS = 20
CONCURRENT = 8
FRAMES_PER_CONNECTION = 300


NAMES = ["a", "b", "dir", "f", "..", ".", "", "x/y", "long" * 20, "\u00e9t\u00e9"]


class Conn:
    """One fuzzing connection: what it sent and what came back."""

    def __init__(self, index: int, seed: int):
        self.index, self.seed = index, seed
        self.rng = random.Random(seed)
        self.decoder = wire.FrameDecoder(msize=1 << 24)
        self.replies: list[wire.Message] = []
        self.sent_tags: set[int] = set()
        self.next_tag = 1
        self.answered: set[int] = set()
        self.eof = False
        self.sent = bytearray()
        self.unanswered: list[int] = []

    def tag(self, lawful: bool) -> int:
        r = self.rng.random()
        if not lawful and r < 0.3:
            tag = NOTAG
        elif not lawful and self.sent_tags:
            tag = self.rng.choice(sorted(self.sent_tags))  # maybe still in use
        else:
            tag, self.next_tag = self.next_tag, (self.next_tag + 1) % NOTAG
        self.sent_tags.add(tag)
        return tag

    # -- valid frames that make no particular sense ---------------------------------

    def fid(self) -> int:
        return self.rng.choice([0, 0, 0, 1, 1, 2, 2, 3, 4, 5, NOFID, self.rng.randrange(1 << 32)])

    def name(self) -> str:
        return self.rng.choice(NAMES[:4] * 4 + NAMES)

    def random_request(self, lawful: bool = True) -> wire.Message:
        """A well-formed request; `lawful=False` may also break the protocol
        (a tag in use, NOTAG, a reply sent as a request), which ends the connection."""
        r = self.rng
        tag = self.tag(lawful)
        kind = r.choices(
            ["walk", "open", "create", "read", "write", "clunk", "remove", "stat", "wstat",
             "flush", "attach", "auth", "version", "reply"],
            [12, 6, 6, 8, 8, 4, 2, 3, 3, 5, 2, 1, 1 if lawful else 3, 0 if lawful else 3],
        )[0]
        if kind == "walk":
            names = tuple(self.name() for _ in range(r.choice([0, 1, 1, 2, 3, 17])))
            return wire.Twalk(tag, self.fid(), self.fid(), names)
        if kind == "open":
            return wire.Topen(tag, self.fid(), r.choice([0, 1, 2, 3, 0x10, 0x11, 0x40, 0x42, 0x80, 0xFF]))
        if kind == "create":
            perm = r.choice([0o644, 0o600, wire.DMDIR | 0o755, 0o444, wire.DMAPPEND | 0o666, 0xFFFFFFFF])
            mode = r.choice([0, 1, 2, 0x12, 0x40, 0x41])
            name = self.name()
            if mode & wire.ORCLOSE and not perm & wire.DMDIR:
                name = f"rc-{self.index}-{r.randrange(1000)}"  # must vanish when clunked
            return wire.Tcreate(tag, self.fid(), name, perm, mode)
        if kind == "read":
            offset = r.choice([0, 0, 1, 100, 7000, 1 << 40, (1 << 64) - 1, r.randrange(1 << 64)])
            return wire.Tread(tag, self.fid(), offset, r.choice([0, 1, 100, 2048, 8192, 1 << 31]))
        if kind == "write":
            data = r.randbytes(r.choice([0, 1, 10, 1000, 8000]))
            return wire.Twrite(tag, self.fid(), r.choice([0, 0, 5, 4096, 1 << 20, 1 << 40, (1 << 64) - 1]), data)
        if kind == "clunk":  # rarely the attach fid, or nothing else is reachable
            return wire.Tclunk(tag, self.fid() if r.random() < 0.1 else r.randint(1, 5))
        if kind == "remove":
            return wire.Tremove(tag, self.fid() if r.random() < 0.1 else r.randint(1, 5))
        if kind == "stat":
            return wire.Tstat(tag, self.fid())
        if kind == "wstat":
            changes = r.choice([
                {"name": self.name()}, {"mode": 0o600}, {"length": r.choice([0, 3, 100, 1 << 40])},
                {"uid": "someone"}, {"mtime": 5}, {"atime": 5}, {"type": 1}, {},
                {"mode": wire.DMDIR | 0o777}, {"length": 1, "name": self.name()},
            ])
            return wire.Twstat(tag, self.fid(), Dir.nochange(**changes))
        if kind == "flush":
            old = r.choice(sorted(self.sent_tags)) if self.sent_tags and r.random() < 0.7 else r.randrange(1 << 16)
            return wire.Tflush(tag, old)
        if kind == "attach":
            return wire.Tattach(tag, r.choice([0, self.fid()]), r.choice([NOFID, NOFID, 0, 7]), r.choice(["fuzz", "", "\u00e9"]), r.choice(["", "x"]))
        if kind == "auth":
            return wire.Tauth(tag, self.fid(), "fuzz", "")
        if kind == "version":
            msize = r.choice([0, 255, 256, 4096, 8192, 8192, 8192, 1 << 20, (1 << 32) - 1])
            version = r.choice(["9P2000"] * 6 + ["9P2000.L", "9P2000.u", "9P", "styx", ""])
            return wire.Tversion(NOTAG, msize, version)
        # a reply sent to the server: a protocol error on its part
        return r.choice([wire.Rclunk(tag), wire.Rerror(tag, "no"), wire.Rread(tag, b"x")])

    # -- mutations --------------------------------------------------------------------

    def mutate(self, frame: bytes) -> bytes:
        r = self.rng
        data = bytearray(frame)
        how = r.choice(["flip", "flip", "truncate", "size", "type", "insert", "splice"])
        if how == "flip":
            for _ in range(r.randint(1, 4)):
                i = r.randrange(len(data))
                data[i] ^= 1 << r.randrange(8)
        elif how == "truncate":
            del data[r.randrange(len(data)) :]
        elif how == "size":
            size = r.choice([0, 4, 6, 7, len(data) - 1, len(data) + 1, len(data) + 100, 8193, 1 << 31, (1 << 32) - 1])
            data[:4] = struct.pack("<I", size)
        elif how == "type":
            data[4] = r.choice([0, 99, 101, 106, 107, 128, 200, 255, r.randrange(256)])
        elif how == "insert":
            i = r.randrange(len(data) + 1)
            data[i:i] = r.randbytes(r.randint(1, 8))
        else:  # the head of this frame with the tail of random bytes
            i = r.randrange(len(data))
            data[i:] = r.randbytes(r.randint(0, 20))
        return bytes(data)

    def recipe(self) -> list[wire.Message]:
        """A coherent little sequence, so that the fuzz reaches open files:
        clone the root, create or walk to a file, open it, write, read."""
        r = self.rng
        k = r.choice([1, 2, 3, 4, 5])
        name = r.choice(["a", "b", "f", f"own-{self.index}"])
        steps: list[wire.Message] = [wire.Twalk(self.tag(True), 0, k, ())]
        if r.random() < 0.5:
            steps.append(wire.Tcreate(self.tag(True), k, name, 0o666, r.choice([1, 2, 0x12])))
        else:
            steps[0] = wire.Twalk(steps[0].tag, 0, k, (name,))
            steps.append(wire.Topen(self.tag(True), k, r.choice([0, 2, 0x12])))
        for _ in range(r.randint(1, 4)):
            steps.append(wire.Twrite(self.tag(True), k, r.choice([0, 10, 5000]), r.randbytes(r.choice([1, 100, 3000]))))
            steps.append(wire.Tread(self.tag(True), k, r.choice([0, 10, 4000]), r.choice([1, 100, 8192])))
        if r.random() < 0.7:
            steps.append(r.choice([wire.Tclunk, wire.Tremove])(self.tag(True), k))
        return steps

    def frames(self) -> list[tuple[bytes, int | None]]:
        """What this connection sends after its handshake: each frame with
        the tag to wait for before sending on (None: pipeline it)."""
        r = self.rng
        style = self.index % 4
        out: list[tuple[bytes, int | None]] = []
        if style == 0:  # nothing but noise, no handshake at all
            for _ in range(r.randint(1, 5)):
                out.append((r.randbytes(r.randint(1, 300)), None))
            return out
        # style 1: lawful requests with a few mutated frames (some are still valid);
        # style 2: requests that may also break the protocol; style 3: lawful
        # requests ending in half a frame.  Some in lockstep, some pipelined.
        desynced = False
        while len(out) < FRAMES_PER_CONNECTION:
            if r.random() < 0.35:
                messages = self.recipe()
            else:
                messages = [self.random_request(lawful=style != 2 or r.random() < 0.9)]
                if isinstance(messages[0], wire.Tversion) and r.random() < 0.8:
                    # a Tversion clunked every fid: attach again, mostly
                    messages.append(wire.Tattach(self.tag(True), 0, NOFID, "fuzz", ""))
            lockstep = r.random() < 0.6
            for m in messages:
                frame = wire.encode(m)
                if style == 1 and r.random() < 0.04:
                    frame = self.mutate(frame)
                    desynced = True  # what the server makes of the rest is anyone's guess
                out.append((frame, m.tag if lockstep and not desynced else None))
        if style == 3:
            last = out[-1][0]
            out.append((last[: r.randrange(1, len(last))], None))
        return out

    # -- replies ---------------------------------------------------------------------------

    def take(self, data: bytes) -> None:
        self.decoder.feed(data)
        for message in self.decoder:
            self.replies.append(message)
            self.answered.add(message.tag)

    async def wait_reply(self, tag: int) -> None:
        """Wait for the answer to a request sent in lockstep (nothing else of
        ours outstanding but pipelined requests): the server must answer it."""
        with trio.move_on_after(2) as scope:
            while tag not in self.answered and not self.eof:
                await trio.sleep(0.0005)
        if scope.cancelled_caught:
            self.unanswered.append(tag)
        self.answered.discard(tag)


async def _receive_until_eof(stream: trio.abc.Stream, conn: Conn) -> None:
    try:
        while data := await stream.receive_some(65536):
            conn.take(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the server reset a connection it refused: as good as EOF
    conn.eof = True


async def fuzz_one(port: int, conn: Conn, limiter: trio.CapacityLimiter) -> None:
    async with limiter:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            frames = conn.frames()
            if conn.index % 4 != 0:
                handshake = (wire.encode(wire.Tversion(NOTAG, 8192, "9P2000"))
                             + wire.encode(wire.Tattach(0, 0, NOFID, "fuzz", "")))
                conn.sent += handshake
                await stream.send_all(handshake)
                with trio.fail_after(5):
                    while len(conn.replies) < 2:
                        data = await stream.receive_some(65536)
                        assert data, f"connection {conn.index}: closed during the handshake"
                        conn.take(data)
                assert conn.replies[0] == wire.Rversion(NOTAG, 8192, "9P2000")
                assert isinstance(conn.replies[1], wire.Rattach)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_receive_until_eof, stream, conn)
                try:
                    for frame, tag in frames:
                        conn.sent += frame
                        await stream.send_all(frame)
                        if tag is not None:
                            await conn.wait_reply(tag)
                    await stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass  # the server has hung up on a protocol error
                # Whatever was sent, the server must finish with us and close.
                with trio.fail_after(5):
                    await _eof_seen(nursery)
        finally:
            await trio.aclose_forcefully(stream)


async def _eof_seen(nursery: trio.Nursery) -> None:
    while nursery.child_tasks:
        await trio.sleep(0.005)


def check_replies(conn: Conn, msize: int) -> None:
    """The fuzz oracle's checks of one connection's replies, and that each
    request sent in lockstep was answered."""
    where = f"seed {conn.seed:#x} connection {conn.index}"
    assert not conn.unanswered, f"{where}: no answer to tags {conn.unanswered}"
    try:
        oracle.check_replies(conn.replies, bytes(conn.sent), msize)
    except oracle.Finding as e:
        raise AssertionError(f"{where}: {e}") from None


async def wait_drained(server, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while server.connections:
            await trio.sleep(0.01)


@pytest.fixture
def error_log():
    with oracle.ErrorLog() as log:
        yield log


async def test_fuzz_live_ramfs(nursery, error_log):
    server = ramfs.make_server()
    port = dial.listening_port(await nursery.start(server.serve, "tcp!127.0.0.1!0"))
    address = f"tcp!127.0.0.1!{port}"

    seeds = random.Random(SEED)
    conns = [Conn(i, seeds.randrange(1 << 32)) for i in range(CONNECTIONS)]
    limiter = trio.CapacityLimiter(CONCURRENT)
    with trio.fail_after(20):
        async with trio.open_nursery() as fuzzers:
            for conn in conns:
                fuzzers.start_soon(fuzz_one, port, conn, limiter)
    for conn in conns:
        check_replies(conn, server.max_msize)
    # The fuzz did reach the file code, not only the frame decoder.
    kinds = {type(reply).__name__ for conn in conns for reply in conn.replies}
    assert {"Rwalk", "Rcreate", "Rwrite", "Rread", "Rclunk", "Rerror", "Rflush"} <= kinds, kinds

    await wait_drained(server)
    oracle.check_released(server)  # no fid, no request left
    error_log.check()  # handlers never failed with an exception (they answer StyxError, or nothing)

    # A well-behaved client still works, and it is the only thing the server holds.
    async with client.connect(address, uname="glenda") as c:
        assert len(server.connections) == 1
        assert server.fid_count() == 1  # its attach fid
        assert server.outstanding_count() == 0
        names = {d.name for d in await c.listdir()}
        assert not [n for n in names if n.startswith("rc-")], f"ORCLOSE files left: {names}"
        async with await c.create("after-fuzz", 0o644, wire.ORDWR) as f:
            assert await f.write(b"still here" * 1000) == 10000
        assert await c.read_file("after-fuzz") == b"still here" * 1000
        assert (await c.stat("after-fuzz")).length == 10000
        await c.remove("after-fuzz")
        assert server.fid_count() == 1
    await wait_drained(server)
    oracle.check_released(server)


async def test_oversized_frame_closes_only_that_connection(nursery):
    server = ramfs.make_server()
    port = dial.listening_port(await nursery.start(server.serve, "tcp!127.0.0.1!0"))
    async with client.connect(f"tcp!127.0.0.1!{port}", uname="glenda") as good:
        async with await good.create("kept") as f:
            await f.write(b"ok")
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(wire.encode(wire.Tversion(NOTAG, 8192, "9P2000")))
        decoder = wire.FrameDecoder()
        with trio.fail_after(5):
            decoder.feed(await bad.receive_some(65536))
            assert decoder.next_message() == wire.Rversion(NOTAG, 8192, "9P2000")
            # Only the size of a frame over msize: the server must hang up without the body.
            await bad.send_all(struct.pack("<I", 8193))
            assert await _read_to_eof(bad) == b""
        await bad.aclose()
        assert await good.read_file("kept") == b"ok"
    await wait_drained(server)


async def _read_to_eof(stream) -> bytes:
    out = b""
    try:
        while data := await stream.receive_some(65536):
            out += data
    except (trio.BrokenResourceError, OSError):
        pass
    return out


async def test_huge_write_offset(nursery):
    """Once a MemoryError ('internal error'), and at 2**34 it would take 16 GB."""
    server = ramfs.make_server()
    port = dial.listening_port(await nursery.start(server.serve, "tcp!127.0.0.1!0"))
    async with client.connect(f"tcp!127.0.0.1!{port}", uname="glenda") as c:
        f = await c.create("big", 0o644, wire.ORDWR)
        for offset in (1 << 62, (1 << 64) - 1):
            with pytest.raises(client.ServerError) as info:
                await f.fid.write(b"x", offset)
            assert info.value.ename != str(errors.INTERNAL)
        with pytest.raises(client.ServerError) as info:
            await c.wstat("big", Dir.nochange(length=1 << 62))
        assert info.value.ename != str(errors.INTERNAL)


async def test_rename_through_a_fid_on_a_removed_file(nursery):
    """Once a KeyError ('internal error'), or it unlinked the new file of that name."""
    server = ramfs.make_server()
    port = dial.listening_port(await nursery.start(server.serve, "tcp!127.0.0.1!0"))
    async with client.connect(f"tcp!127.0.0.1!{port}", uname="glenda") as c:
        await (await c.create("a")).close()
        stale = await c.walk("a")
        await c.remove("a")
        async with await c.create("a") as f:  # a new file of the same name
            await f.write(b"new")
        try:
            await stale.wstat(Dir.nochange(name="b"))
        except client.ServerError as e:
            assert e.ename != str(errors.INTERNAL)
        assert await c.read_file("a") == b"new"
        assert "b" not in {d.name for d in await c.listdir()}
