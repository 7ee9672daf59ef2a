"""Protocol behaviour as plain-text T/R transcripts (tests/transcripts/*.txt),
in the style of 9fans.net/go/plan9/srv9p's testdata.

Each T line is sent as it is read; each R line must match the next message
the server sends (see styxfs/transcript.py for the notation).  Directives:
`closed` (the server must close the connection), `raw HEX` (send bytes),
`sleep SECONDS`.  The server is a ramfs whose root also holds `block`, a file
whose reads wait until flushed, `slow`, whose reads answer after 0.2 s, and
`ctl`, a synthetic file that takes writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from styxfs import errors, wire
from styxfs.ramfs import RamFS
from styxfs.server import Server, StaticTree
from styxfs.transcript import format_message, parse_line
from styxfs.tree import Caller, Entry, Handle, TextFile

from .conftest import start_server

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.txt"))


class WaitingHandle(Handle):
    def __init__(self, entry, delay):
        super().__init__(entry)
        self.delay = delay

    async def read(self, offset, count):
        await trio.sleep(self.delay)
        return b"slow"[offset : offset + count]


class WaitingFile(Entry):
    def __init__(self, name, qid_path, delay):
        super().__init__(name, qid_path, 0o444)
        self.delay = delay

    async def open(self, mode, caller: Caller):
        return WaitingHandle(self, self.delay)


def make_server() -> Server:
    fs = RamFS(owner="ramfs")
    fs.root.files["block"] = WaitingFile("block", 1000, float("inf"))
    fs.root.files["slow"] = WaitingFile("slow", 1001, 0.2)
    fs.root.files["ctl"] = TextFile("ctl", 1002, read=lambda caller: "ok\n", write=lambda caller, data: None)
    return Server(StaticTree(fs.root), max_msize=8192)


class Conversation:
    def __init__(self, stream):
        self.stream = stream
        self.decoder = wire.FrameDecoder(1 << 20)

    async def next_message(self) -> wire.Message | None:
        while True:
            message = self.decoder.next_message()
            if message is not None:
                return message
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.feed(data)


async def run_transcript(path: Path, address: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit("!", 1)[1]))
    talk = Conversation(stream)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        where = f"{path.name}:{number}: {line}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("T"):
            await stream.send_all(wire.encode(parse_line(line).message()))
        elif line.startswith("R"):
            expected = parse_line(line)
            with trio.fail_after(5):
                got = await talk.next_message()
            assert got is not None, f"{where}: connection closed"
            assert expected.matches(got), f"{where}\n  got: {format_message(got)}"
        elif line == "closed":
            with trio.fail_after(5):
                got = await talk.next_message()
            assert got is None, f"{where}: got {format_message(got)}"
        elif line.startswith("raw "):
            await stream.send_all(bytes.fromhex(line[4:].replace(" ", "")))
        elif line.startswith("sleep "):
            await trio.sleep(float(line.split()[1]))
        else:
            raise AssertionError(f"{where}: unknown directive")
    await stream.aclose()


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
async def test_transcript(path, nursery):
    server = make_server()
    address = await start_server(nursery, server)
    await run_transcript(path, address)
    # Whatever the transcript did, the server lets go of everything it held.
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    assert server.fid_count() == 0 and server.outstanding_count() == 0


def test_there_are_transcripts():
    assert len(TRANSCRIPTS) >= 5
    # The transcripts spell the server's words as the errors module has them.
    flush = (Path(__file__).parent / "transcripts" / "flush.txt").read_text()
    assert f"ename {errors.INTERRUPTED}\n" in flush


@pytest.mark.parametrize("message", [
    wire.Tversion(wire.NOTAG, 8192, "9P2000"),
    wire.Tattach(1, 0, wire.NOFID, "glenda", "a b"),
    wire.Twalk(2, 0, 1, ("new", "data")),
    wire.Rwalk(2, (wire.Qid(wire.QTDIR, 0, 1), wire.Qid(0, 3, 258))),
    wire.Rwalk(2, ()),
    wire.Tcreate(3, 1, "d", wire.DMDIR | 0o755, wire.OREAD),
    wire.Rread(4, b"it's\tme\n\\"),
    wire.Rread(4, b"\0\xff"),
    wire.Rread(4, b"hex:41"),
    wire.Rread(4, b""),
    wire.Rerror(5, "file does not exist"),
    wire.Rstat(6, wire.Dir(qid=wire.Qid(0, 0, 7), mode=0o644, length=12, name="hello", uid="glenda")),
    wire.Twstat(7, 1, wire.Dir(qid=wire.Qid(wire.QTDIR, 1, 2), mode=wire.DMDIR | 0o700, name="renamed")),
], ids=lambda m: m.type_name)
def test_text_round_trip(message):
    # Every kind of field written as text (wire.KINDS) reads back as it was.
    assert parse_line(format_message(message)).matches(message), format_message(message)


def test_text_of_a_message():
    assert format_message(wire.Twalk(1, 0, wire.NOFID, ("a", "b c"))) == "Twalk tag 1 fid 0 newfid NOFID wnames 'a/b c'"
    assert format_message(wire.Rread(2, b"hello world\n")) == r"Rread tag 2 data 'hello world\n'"
    assert (format_message(wire.Rstat(3, wire.Dir(qid=wire.Qid(0, 0, 1), mode=0o666, name="ctl")))
            == "Rstat tag 3 stat name=ctl,mode=0666,length=0,qid=1:0:f,uid=")
