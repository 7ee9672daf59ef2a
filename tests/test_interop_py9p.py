"""Interoperability with python-9p (plan9port's C codec behind a sync client)
against `python -m styxfs.ramfs` run as a real subprocess."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from styxfs import wire

from .support import stop_process

py9p = pytest.importorskip("py9p")

REPO = Path(__file__).resolve().parent.parent
ORDWR, OREAD, OWRITE, OTRUNC = 2, 0, 1, 0x10
DMDIR = 0x80000000


def start_ramfs() -> tuple[subprocess.Popen, int]:
    """`python -m styxfs.ramfs` on the port the OS chose, which it prints, once it serves."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "styxfs.ramfs", "--listen", "tcp!127.0.0.1!0"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    said = proc.stdout.readline()  # "ramfs: serving on tcp!127.0.0.1!PORT", or nothing at its end
    if not said.startswith("ramfs: serving on "):
        proc.kill()
        raise RuntimeError(f"ramfs did not start: {proc.communicate()[1][-2000:]}")
    return proc, int(said.rsplit("!", 1)[1])


@pytest.fixture(scope="module")
def ramfs_port():
    proc, port = start_ramfs()
    yield port
    stop_process(proc)


@pytest.fixture
def connect(ramfs_port):
    """connect(uname) -> a negotiated, attached py9p client (root on fid 0)."""
    clients = []

    def make(uname: str = "glenda"):
        c = py9p.Client.connect_tcp("127.0.0.1", ramfs_port, timeout=10)
        clients.append(c)
        reply = c.negotiate()
        assert (reply.msize, reply.version) == (8192, "9P2000")
        qid = c.attach(0, uname=uname)
        assert qid.type & wire.QTDIR
        return c

    yield make
    for c in clients:
        c.close()


def read_all(c, fid: int, count: int | None = None) -> bytes:
    out, offset = [], 0
    while data := c.read(fid, count, offset):
        out.append(data)
        offset += len(data)
    return b"".join(out)


def split_stats(data: bytes) -> list[bytes]:
    records, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 2], "little")
        records.append(data[at : at + 2 + size])
        at += 2 + size
    return records


def ls(c, fid_for_listing: int = 99, count: int | None = None) -> list:
    """The root's entries decoded by plan9port's convM2D, checked against ours."""
    c.walk(0, fid_for_listing, [])
    try:
        qid, iounit = c.open(fid_for_listing, OREAD)
        assert qid.type & wire.QTDIR
        assert iounit == 8192 - wire.IOHDRSZ
        data = read_all(c, fid_for_listing, count)
    finally:
        c.clunk(fid_for_listing)
    theirs = [py9p.decode_dir(record) for record in split_stats(data)]
    ours = wire.decode_dirs(data)
    assert [d.name for d in theirs] == [d.name for d in ours]
    assert [(d.qid.path, d.qid.type, d.length, d.mode) for d in theirs] == \
           [(d.qid.path, d.qid.type, d.length, d.mode) for d in ours]
    return theirs


def make_file(c, fid: int, name: str, data: bytes = b"", mode: int = ORDWR) -> None:
    c.walk(0, fid, [])
    c.create(fid, name, 0o644, mode)
    if data:
        assert c.write(fid, data, 0) == len(data)


def test_empty_root_stat(connect):
    c = connect()
    d = c.stat(0)
    assert d.name == "/" and d.mode & DMDIR and d.qid.type & wire.QTDIR


def test_create_write_read_stat_rename_remove(connect):
    c = connect()
    payload = bytes((i * 7 + i // 256) & 0xFF for i in range(7000))
    c.walk(0, 1, [])
    qid, iounit = c.create(1, "data", 0o640, ORDWR)
    assert qid.type == 0 and iounit == 8192 - wire.IOHDRSZ
    for at in range(0, 7000, 1000):
        assert c.write(1, payload[at : at + 1000], at) == 1000
    pieces = []
    for at in range(0, 7000, 700):
        pieces.append(c.read(1, 700, at))
        assert len(pieces[-1]) == 700
    assert b"".join(pieces) == payload
    assert c.read(1, 700, 7000) == b""  # EOF
    c.clunk(1)

    c.walk(0, 2, ["data"])
    d = c.stat(2)
    assert (d.name, d.length, d.mode & 0o777, d.uid) == ("data", 7000, 0o640, "glenda")
    assert "data" in [e.name for e in ls(c)]

    # Rename: a wstat that changes nothing but the name (Plan 9's nulldir:
    # python-9p cannot make ~0 lengths from a Dir, so send our bytes).
    c.wstat(2, wire.Dir.nochange(name="renamed").encode())
    assert c.stat(2).name == "renamed"
    names = [e.name for e in ls(c)]
    assert "renamed" in names and "data" not in names
    with pytest.raises(py9p.RemoteError, match="file does not exist"):
        c.walk(0, 3, ["data"])
    # A wstat through a python-9p Dir: the mode only (other fields as they are).
    now = c.stat(2)
    c.wstat(2, py9p.Dir(type=now.type, dev=now.dev, qid=now.qid, mode=0o600, atime=now.atime,
                        mtime=now.mtime, length=now.length, name="", uid="", gid="", muid=""))
    assert c.stat(2).mode & 0o777 == 0o600
    assert c.stat(2).length == 7000

    c.remove(2)
    assert "renamed" not in [e.name for e in ls(c)]
    with pytest.raises(py9p.RemoteError, match="unknown fid"):
        c.stat(2)  # remove clunked the fid


def test_directory_read_with_small_counts(connect):
    """Many entries read back in small pieces, resuming at the offsets given."""
    c = connect()
    c.walk(0, 1, [])
    c.create(1, "many", DMDIR | 0o755, OREAD)
    c.clunk(1)
    for i in range(40):
        c.walk(0, 2, ["many"])
        c.create(2, f"entry-{i:02d}-{'x' * i}", 0o644, OWRITE)
        c.clunk(2)
    c.walk(0, 3, ["many"])
    c.open(3, OREAD)
    data = read_all(c, 3, 200)  # fewer than two records a read
    c.clunk(3)
    names = sorted(d.name for d in map(py9p.decode_dir, split_stats(data)))
    assert names == [f"entry-{i:02d}-{'x' * i}" for i in range(40)]
    with pytest.raises(py9p.RemoteError, match="directory not empty"):
        c.walk(0, 4, ["many"])
        c.remove(4)


def test_two_clients_see_each_others_files(connect):
    alice, bob = connect("alice"), connect("bob")
    make_file(alice, 1, "from-alice", b"hello bob")
    alice.clunk(1)
    make_file(bob, 1, "from-bob", b"hello alice")  # the same fid number, its own connection
    bob.clunk(1)
    assert {"from-alice", "from-bob"} <= {d.name for d in ls(alice)}
    assert {"from-alice", "from-bob"} <= {d.name for d in ls(bob)}

    bob.walk(0, 2, ["from-alice"])
    bob.open(2, OREAD)
    assert read_all(bob, 2) == b"hello bob"
    assert bob.stat(2).uid == "alice"
    bob.clunk(2)
    alice.walk(0, 2, ["from-bob"])
    alice.open(2, ORDWR | OTRUNC)
    alice.write(2, b"overwritten", 0)
    alice.clunk(2)
    bob.walk(0, 3, ["from-bob"])
    bob.open(3, OREAD)
    assert read_all(bob, 3) == b"overwritten"
    # bob removes alice's file while alice holds it open: her fid is still hers to clunk.
    alice.walk(0, 4, ["from-alice"])
    alice.open(4, OREAD)
    bob.walk(0, 5, ["from-alice"])
    bob.remove(5)
    assert "from-alice" not in {d.name for d in ls(alice)}
    alice.clunk(4)
    bob.clunk(3)
    bob.walk(0, 6, ["from-bob"])
    bob.remove(6)


def test_concurrent_requests_from_threads(connect):
    """python-9p multiplexes tags from many threads over one connection."""
    c = connect()
    for i in range(8):
        make_file(c, 10 + i, f"thread-{i}", bytes([i]) * 5000)
    errors: list[BaseException] = []

    def reader(i: int) -> None:
        try:
            for _ in range(20):
                assert c.read(10 + i, 5000, 0) == bytes([i]) * 5000
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for i in range(8):
        c.remove(10 + i)


def test_error_texts(connect):
    c = connect()
    with pytest.raises(py9p.RemoteError, match="^file does not exist$"):
        c.walk(0, 1, ["no-such-file"])
    # a failure after the first name: a short Rwalk, and no new fid
    make_file(c, 2, "plain", b"x")
    c.clunk(2)
    qids = c.walk(0, 3, ["plain", "deeper"])
    assert len(qids) == 1
    with pytest.raises(py9p.RemoteError, match="unknown fid"):
        c.stat(3)
    with pytest.raises(py9p.RemoteError, match="fid in use"):
        c.attach(0, uname="glenda")
    with pytest.raises(py9p.RemoteError, match="file already exists"):
        make_file(c, 4, "plain")
    c.clunk(4)
    with pytest.raises(py9p.RemoteError, match="fid not open"):
        c.walk(0, 5, ["plain"])
        c.read(5, 10, 0)
    with pytest.raises(py9p.RemoteError, match="is a directory"):
        c.walk(0, 6, [])
        c.open(6, OWRITE)
    with pytest.raises(py9p.RemoteError, match="authentication not required"):
        c.rpc(py9p.Tauth(afid=7, uname="glenda", aname=""))
    c.walk(0, 8, ["plain"])
    c.remove(8)


def test_a_node_runs_the_plan9_loop_past_its_cap(fake_model):
    """python-9p, the Plan 9 way through one connection: `echo prompt >
    new/data; cat reply` 40 times on a node with a cap of 8 sessions."""
    from .support import start_node_process

    proc, address = start_node_process(fake_model, threads=1, extra=["--max-sessions", "8"], fake=True)
    try:
        c = py9p.Client.connect_tcp("127.0.0.1", int(address.rsplit("!", 1)[1]), timeout=10)
        c.negotiate()
        c.attach(0, uname=getpass.getuser())  # the node's owner, who may set its defaults

        def write(path: list[str], data: bytes) -> None:
            c.walk(0, 1, path)
            c.open(1, OWRITE | OTRUNC)
            c.write(1, data, 0)
            c.clunk(1)  # submits the prompt

        def read(path: list[str]) -> bytes:
            c.walk(0, 2, path)
            c.open(2, OREAD)
            try:
                return read_all(c, 2)
            finally:
                c.clunk(2)

        write(["ctl"], b"defaults temperature 0\ndefaults maxtokens 4\n")
        replies = []
        for i in range(40):
            write(["new", "data"], f"Once upon a time {i % 2}\n".encode())
            replies.append(read(["reply"]))
        assert all(replies) and set(replies[0::2]) == {replies[0]} and set(replies[1::2]) == {replies[1]}
        metrics = read(["metrics"]).decode()
        assert "llamafs_sessions 8\n" in metrics and "llamafs_sessions_reclaimed_total 32\n" in metrics
        c.close()
    finally:
        stop_process(proc)
