"""The seeds of both targets, and how an input is cut into pieces."""

from __future__ import annotations

import random
import struct

from styxfs import wire
from styxfs.wire import NOFID, NOTAG, Dir, Qid


def typical_messages() -> list[wire.Message]:
    qid, dqid = Qid(0, 3, 17), Qid(wire.QTDIR, 1, 0)
    stat = Dir(qid=qid, mode=0o644, atime=1, mtime=2, length=10, name="f", uid="glenda", gid="glenda", muid="glenda")
    return [
        wire.Tversion(NOTAG, 8192, "9P2000"), wire.Rversion(NOTAG, 8192, "9P2000"),
        wire.Tversion(NOTAG, 256, "9P2000.L"), wire.Tauth(1, 5, "glenda", ""), wire.Rauth(1, Qid(wire.QTAUTH, 0, 9)),
        wire.Tattach(2, 0, NOFID, "glenda", ""), wire.Rattach(2, dqid), wire.Rerror(3, "file does not exist"),
        wire.Tflush(4, 3), wire.Rflush(4), wire.Twalk(5, 0, 1, ()), wire.Twalk(6, 0, 2, ("a", "..", "b")),
        wire.Rwalk(6, (dqid, qid)), wire.Topen(7, 1, wire.ORDWR | wire.OTRUNC), wire.Ropen(7, qid, 8168),
        wire.Tcreate(8, 1, "new", 0o644, wire.OWRITE), wire.Tcreate(8, 1, "d", wire.DMDIR | 0o755, wire.OREAD),
        wire.Rcreate(8, qid, 8168), wire.Tread(9, 1, 0, 8192), wire.Rread(9, b"hello"),
        wire.Rread(9, stat.encode() + Dir.nochange(name="x").encode()), wire.Twrite(10, 1, 5, b"world"),
        wire.Rwrite(10, 5), wire.Tclunk(11, 1), wire.Rclunk(11), wire.Tremove(12, 2), wire.Rremove(12),
        wire.Tstat(13, 0), wire.Rstat(13, stat), wire.Twstat(14, 1, Dir.nochange(name="renamed")), wire.Rwstat(14),
    ]


def decoder_seeds() -> list[bytes]:
    frames = [wire.encode(m) for m in typical_messages()]
    seeds = [b"\xff\x00" + f for f in frames]  # msize 1027, in one chunk
    seeds += [bytes([0xFF, chunking]) + b"".join(frames[i : i + 4]) for i, chunking in zip(range(0, len(frames), 4), (1, 3, 7, 40, 0, 200, 9, 64))]
    seeds += [b"\x10\x05" + frames[0], b"\xff\x01" + frames[19][:-3], b"\x00\x00" + b"\x07\x00\x00\x00"]
    return seeds


def server_seeds() -> list[bytes]:
    e = wire.encode
    file_life = [
        wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "f", 0o644, wire.ORDWR), wire.Twrite(3, 1, 0, b"hello world"),
        wire.Tread(4, 1, 0, 100), wire.Tstat(5, 1), wire.Twstat(6, 1, Dir.nochange(name="g", length=5)),
        wire.Tread(7, 1, 3, 100), wire.Tclunk(8, 1), wire.Twalk(9, 0, 2, ("g",)), wire.Tremove(10, 2),
    ]
    dirs = [
        wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "d", wire.DMDIR | 0o755, wire.OREAD), wire.Twalk(3, 0, 2, ("d",)),
        wire.Tcreate(4, 2, "x", 0o600, wire.OWRITE | wire.ORCLOSE), wire.Twrite(5, 2, 4096, b"z" * 10),
        wire.Twalk(6, 0, 3, ()), wire.Topen(7, 3, wire.OREAD), wire.Tread(8, 3, 0, 8192), wire.Tread(9, 3, 0, 50),
        wire.Tclunk(10, 2), wire.Twalk(11, 0, 4, ("d", "..", "d")), wire.Tremove(12, 4),
    ]
    flushes = [
        wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "f", 0o644, wire.ORDWR), wire.Tread(3, 1, 0, 10), wire.Tflush(4, 3),
        wire.Tflush(5, 3), wire.Tflush(6, 99), wire.Tclunk(7, 1),
    ]
    again = [
        wire.Twalk(1, 0, 1, ()), wire.Topen(2, 1, wire.OREAD), wire.Tversion(NOTAG, 4096, "9P2000"),
        wire.Tattach(3, 5, NOFID, "other", "x"), wire.Tstat(4, 5), wire.Tversion(NOTAG, 100, "9P2000"),
        wire.Tversion(NOTAG, 8192, "styx"), wire.Tstat(5, 5), wire.Tauth(6, 7, "u", ""),
    ]
    odd = [
        wire.Twalk(1, 0, 1, tuple("abcdefghijklmnopq")), wire.Twalk(2, 0, 0, ("..",)), wire.Topen(3, 0, 0xFF),
        wire.Tcreate(4, 0, "a/b", 0o644, 0), wire.Tcreate(5, 0, "..", 0o644, 0), wire.Tread(6, 0, 1 << 63, 1 << 31),
        wire.Twalk(7, 0, 9, ("e",)), wire.Tcreate(8, 9, "", 0, 0), wire.Tremove(9, 0), wire.Tclunk(10, 0),
        wire.Tclunk(11, 0), wire.Tstat(12, NOFID),
    ]
    bad_tags = [wire.Twalk(1, 0, 1, ()), wire.Tstat(1, 0), wire.Tstat(NOTAG, 0), wire.Rclunk(2)]
    streams = [b"".join(e(m) for m in seq) for seq in (file_life, dirs, flushes, again, odd, bad_tags)]
    seeds = []
    for i, s in enumerate(streams):
        for mode in (0x00, 0x02, 0x22, 0x41, 0x80 | 0x02, 0x03 | (i % 4 << 2), 0x12, 0x31):
            seeds.append(bytes([mode]) + s)
    seeds += [b"\x00" + e(wire.Tversion(NOTAG, 8192, "9P2000"))[:5], b"\x02" + struct.pack("<I", 1 << 20),
              b"\x00" + b"\x00" * 7, b"\x22" + e(file_life[0]) + e(file_life[1])[:-2]]
    return seeds


def seeds_for(target: str) -> list[bytes]:
    return decoder_seeds() if target == "decoder" else server_seeds()


def chunks(payload: bytes, how: int) -> list[bytes]:
    """The payload in pieces: whole (how 0), else of random sizes up to 1 + how % 37."""
    if how == 0:
        return [payload]
    rng = random.Random(how)
    most = 1 + how % 37
    out, at = [], 0
    while at < len(payload):
        n = rng.randint(1, most)
        out.append(payload[at : at + n])
        at += n
    return out


def frames(data: bytes) -> list[bytes]:
    """Split at the frame boundaries the size fields claim; the rest as one piece."""
    out, at = [], 0
    while at < len(data):
        size = struct.unpack_from("<I", data, at)[0] if at + 4 <= len(data) else 0
        if size < 7 or at + size > len(data):
            out.append(data[at:])
            break
        out.append(data[at : at + size])
        at += size
    return out
