"""The 9P2000 codec (styxfs.wire): round trips, the frame decoder fed in every
way (whole, a byte at a time, random chunks, with trailing garbage), each
named error, and an independent check against python-9p (plan9port's C codec).
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from styxfs import wire
from styxfs.wire import (
    Dir,
    FrameDecoder,
    LocalProtocolError,
    Qid,
    RemoteProtocolError,
)

py9p = pytest.importorskip("py9p")

ALL_TYPES = sorted(wire.MESSAGE_TYPES.values(), key=lambda cls: cls.TYPE)

# ---- strategies --------------------------------------------------------------


def ints(top: int) -> st.SearchStrategy[int]:
    # Bias towards the edges, where codecs break.
    return st.one_of(st.sampled_from([0, 1, top]), st.integers(0, top))


# UTF-8 text without NUL (9P strings are C strings in every implementation)
# and without lone surrogates (not encodable as UTF-8).
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    max_size=40,
)


def field_strategy(kind: wire.Kind, *, limit64=None, max_names=20):
    """Values of a kind of wire.KINDS, by its shape: integers up to its top,
    lists of its items, records of their fields, text or bytes."""
    if kind.top is not None:
        return ints(limit64 if limit64 is not None and kind.bits == 64 else kind.top)
    if kind.item is not None:
        return st.lists(field_strategy(kind.item, limit64=limit64), max_size=max_names).map(tuple)
    if kind.record is not None:
        return record_strategy(kind.record, limit64=limit64, max_names=max_names)
    return texts if kind.type is str else st.binary(max_size=300)


def record_strategy(cls, **options):
    """Messages, qids and stats, each field from its kind."""
    return st.builds(cls, **{name: field_strategy(kind, **options) for name, kind in wire.fields(cls)})


dirs = record_strategy(Dir)
any_message = st.one_of([record_strategy(cls) for cls in ALL_TYPES])


# ---- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_type(cls, data):
    message = data.draw(record_strategy(cls))
    frame = wire.encode(message)
    size, type_code, tag = struct.unpack_from("<IBH", frame)
    assert size == len(frame)
    assert type_code == cls.TYPE
    assert tag == message.tag
    assert wire.decode(frame) == message
    assert message.encode() == frame


@given(dirs)
def test_dir_round_trip(d):
    raw = d.encode()
    assert struct.unpack_from("<H", raw)[0] == len(raw) - 2
    assert Dir.decode(raw) == d


@given(st.lists(dirs, max_size=8))
def test_decode_dirs(ds):
    assert wire.decode_dirs(b"".join(d.encode() for d in ds)) == ds


def test_dir_nochange_is_all_ones():
    raw = Dir.nochange().encode()
    # size[2] then type[2] dev[4] qid[13] mode[4] atime[4] mtime[4] length[8]: all ~0
    assert raw[2 : 2 + wire.STATFIXED - 2] == b"\xff" * (wire.STATFIXED - 2)
    assert raw[2 + wire.STATFIXED - 2 :] == b"\0\0" * 4  # four empty strings
    assert Dir.nochange(name="x").name == "x"


def test_messages_are_frozen():
    m = wire.Tclunk(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.fid = 3


def test_known_bytes():
    # Tversion tag ~0 msize 8192 "9P2000", as every 9P client sends first.
    assert wire.encode(wire.Tversion(wire.NOTAG, 8192, "9P2000")) == bytes.fromhex(
        "13000000 64 ffff 00200000 0600 395032303030".replace(" ", "")
    )
    assert wire.encode(wire.Rclunk(7)) == bytes.fromhex("07000000790700")


# ---- the frame decoder -----------------------------------------------------------

message_lists = st.lists(any_message, min_size=1, max_size=12)


def drain(decoder: FrameDecoder) -> list:
    return list(decoder)


@given(message_lists)
def test_stream_whole(messages):
    decoder = FrameDecoder(msize=1 << 20)
    decoder.feed(b"".join(wire.encode(m) for m in messages))
    assert drain(decoder) == messages
    assert decoder.pending == 0
    assert decoder.next_message() is None


@settings(max_examples=40)
@given(message_lists)
def test_stream_byte_by_byte(messages):
    decoder = FrameDecoder(msize=1 << 20)
    stream = b"".join(wire.encode(m) for m in messages)
    out = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        out.extend(decoder)
    assert out == messages
    assert decoder.pending == 0


@given(message_lists, st.data())
def test_stream_random_chunks(messages, data):
    decoder = FrameDecoder(msize=1 << 20)
    stream = b"".join(wire.encode(m) for m in messages)
    out, at = [], 0
    while at < len(stream):
        n = data.draw(st.integers(1, max(1, len(stream) - at)), label="chunk")
        decoder.feed(stream[at : at + n])
        at += n
        out.extend(decoder)
    assert out == messages
    assert decoder.pending == 0


@given(any_message, st.binary(min_size=1, max_size=3))
def test_trailing_partial_size_stays_pending(message, tail):
    decoder = FrameDecoder(msize=1 << 20)
    decoder.feed(wire.encode(message) + tail)
    assert decoder.next_message() == message
    assert decoder.next_message() is None
    assert decoder.pending == len(tail)


@given(any_message, any_message, st.data())
def test_trailing_partial_frame_stays_pending(first, second, data):
    decoder = FrameDecoder(msize=1 << 20)
    frame = wire.encode(second)
    cut = data.draw(st.integers(4, len(frame) - 1))
    decoder.feed(wire.encode(first) + frame[:cut])
    assert drain(decoder) == [first]
    assert decoder.pending == cut
    decoder.feed(frame[cut:])  # the rest arrives: the frame completes
    assert drain(decoder) == [second]
    assert decoder.pending == 0


@pytest.mark.parametrize("garbage", [
    struct.pack("<I", 3) + b"abc",  # size < 7
    struct.pack("<I", 0),
    struct.pack("<I", 0xFFFFFFFF),  # size > msize
    struct.pack("<IBH", 7, 99, 0),  # unknown type
    struct.pack("<IBH", 8, 120, 0) + b"x",  # Tclunk with 1 byte for a 4-byte fid
], ids=["short", "zero", "huge", "type99", "truncated"])
def test_trailing_bad_frame_raises_after_the_good_one(garbage):
    decoder = FrameDecoder(msize=8192)
    good = wire.Tclunk(1, 2)
    decoder.feed(wire.encode(good) + garbage)
    assert decoder.next_message() == good  # the valid frame still comes out first
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


# ---- each named error ----------------------------------------------------------------


def decode_error(frame: bytes, msize: int = 8192) -> str:
    """Feed the frame to a decoder and to decode(); both must refuse it."""
    decoder = FrameDecoder(msize)
    decoder.feed(frame)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_message()
    return str(info.value)


def test_frame_over_msize_refused_as_soon_as_size_arrives():
    decoder = FrameDecoder(msize=8192)
    decoder.feed(struct.pack("<I", 8193)[:3])
    assert decoder.next_message() is None  # size not complete yet
    decoder.feed(struct.pack("<I", 8193)[3:])
    with pytest.raises(RemoteProtocolError, match="exceeds msize"):
        decoder.next_message()  # before any of the body
    # exactly msize is fine
    frame = wire.encode(wire.Rread(1, bytes(8192 - 11)))
    assert len(frame) == 8192
    decoder = FrameDecoder(msize=8192)
    decoder.feed(frame)
    assert decoder.next_message() == wire.Rread(1, bytes(8192 - 11))


def test_msize_can_be_lowered():
    decoder = FrameDecoder(msize=65536)
    decoder.msize = 256
    decoder.feed(wire.encode(wire.Rread(1, bytes(300))))
    with pytest.raises(RemoteProtocolError, match="exceeds msize"):
        decoder.next_message()


@pytest.mark.parametrize("size", [0, 1, 4, 6])
def test_size_under_header(size):
    assert "shorter than a 9P header" in decode_error(struct.pack("<I", size) + bytes(10))
    with pytest.raises(RemoteProtocolError):
        wire.decode(struct.pack("<I", size) + bytes(max(0, size - 4)))


@pytest.mark.parametrize("type_code", [106, 99, 200, 0, 128, 255])
def test_unknown_type(type_code):
    frame = struct.pack("<IBH", 7, type_code, 1)
    assert f"unknown message type {type_code}" in decode_error(frame)
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        wire.decode(frame)


def retype_body(frame: bytes, body: bytes) -> bytes:
    """The frame's header with a new body and a size that matches it."""
    return struct.pack("<I", 5 + len(body)) + frame[4:5] + body


@pytest.mark.parametrize("message", [
    wire.Tversion(1, 8192, "9P2000"),
    wire.Twalk(1, 2, 3, ("a", "bc")),
    wire.Rwalk(1, (Qid(1, 2, 3),)),
    wire.Twrite(1, 2, 3, b"hello"),
    wire.Rstat(1, Dir(name="n", uid="u")),
    wire.Tclunk(1, 2),
], ids=lambda m: m.type_name)
def test_truncated_body(message):
    frame = wire.encode(message)
    for cut in range(7, len(frame)):  # every shortening, size field made consistent
        short = struct.pack("<I", cut) + frame[4:cut]
        assert "truncated" in decode_error(short)


@pytest.mark.parametrize("message", [
    wire.Tversion(1, 8192, "9P2000"),
    wire.Rclunk(3),
    wire.Twalk(1, 2, 3, ()),
    wire.Rread(1, b"abc"),
    wire.Twstat(1, 2, Dir.nochange()),
], ids=lambda m: m.type_name)
def test_body_with_bytes_too_many(message):
    frame = wire.encode(message) + b"\0"
    frame = struct.pack("<I", len(frame)) + frame[4:]
    assert "1 bytes too many" in decode_error(frame)


def test_stat_size_mismatch_inside_rstat():
    raw = bytearray(Dir(name="x").encode())
    raw[0] += 1  # the inner size says one byte more than the record has
    frame = wire.encode(wire.Rstat(1, Dir(name="x")))
    body = frame[7:9] + bytes(raw)
    bad = struct.pack("<IBH", 9 + len(raw), wire.Rstat.TYPE, 1) + body
    with pytest.raises(RemoteProtocolError, match="stat size 49 does not match its 48 bytes"):
        wire.decode(bad)
    with pytest.raises(RemoteProtocolError, match="truncated stat"):
        wire.decode_dirs(Dir(name="x").encode() + b"\x01")


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"9P\xc3", b"\xed\xa0\x80", b"\xc0\x80"],
                         ids=["ff", "cut", "surrogate", "overlong-nul"])
def test_invalid_utf8(raw):
    body = struct.pack("<HIH", 1, 8192, len(raw)) + raw
    frame = struct.pack("<IB", 5 + len(body), wire.Tversion.TYPE) + body
    assert "not UTF-8" in decode_error(frame)


@pytest.mark.parametrize("raw", [b"\0", b"9P\x002000", b"abc\0"])
def test_nul_in_string(raw):
    body = struct.pack("<HIIH", 1, 7, 8, 1) + struct.pack("<H", len(raw)) + raw
    frame = struct.pack("<IB", 5 + len(body), wire.Twalk.TYPE) + body
    assert "NUL" in decode_error(frame)
    # and in a stat record's name
    d = Dir(name="ab").encode().replace(b"ab", b"a\0")
    with pytest.raises(RemoteProtocolError, match="NUL"):
        Dir.decode(d)


def test_a_reply_is_decoded_too():
    # The decoder is symmetric: it does not judge direction (the server does).
    decoder = FrameDecoder()
    decoder.feed(wire.encode(wire.Rerror(5, "no")))
    assert decoder.next_message() == wire.Rerror(5, "no")
    assert not wire.is_request(wire.Rerror(5, "no"))
    assert wire.is_request(wire.Tclunk(5, 1))


# ---- encoding what cannot be 9P ---------------------------------------------------------


@pytest.mark.parametrize("message", [
    wire.Tversion(-1, 8192, "9P2000"),
    wire.Tversion(0x10000, 8192, "9P2000"),
    wire.Tversion(1, 1 << 32, "9P2000"),
    wire.Topen(1, 2, 256),
    wire.Topen(1, 2, -1),
    wire.Tread(1, 2, 1 << 64, 1),
    wire.Tread(1, 2, 0, -5),
    wire.Rattach(1, Qid(256, 0, 0)),
    wire.Rattach(1, Qid(0, 1 << 32, 0)),
    wire.Rattach(1, Qid(0, 0, 1 << 64)),
    wire.Rwalk(1, (Qid(0, 0, -1),)),
    wire.Rstat(1, Dir(type=0x10000)),
    wire.Rstat(1, Dir(length=-1)),
    wire.Tflush(1, 0x10000),
    wire.Tclunk(1, "3"),
    wire.Tclunk(1, 3.0),
    wire.Tclunk(True, 3),
    wire.Tversion(1, 8192, b"9P2000"),
    wire.Rerror(1, "x" * 0x10000),
    wire.Rerror(1, "\u00e9" * 0x8000),  # 0x10000 bytes of UTF-8
    wire.Twalk(1, 2, 3, ("ok", "y" * 70000)),
    wire.Rstat(1, Dir(name="z" * 0x10000)),
], ids=lambda m: m.type_name)
def test_encode_refuses(message):
    with pytest.raises(LocalProtocolError):
        wire.encode(message)


def test_longest_string_encodes():
    m = wire.Rerror(1, "x" * 0xFFFF)
    assert wire.decode(wire.encode(m)) == m


def test_protocol_errors_are_distinct():
    assert issubclass(LocalProtocolError, wire.ProtocolError)
    assert issubclass(RemoteProtocolError, wire.ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# ---- against python-9p (plan9port's lib9/convM2S.c and convS2M.c) ------------------------------

_RENAME = {"wnames": "wname", "wqids": "wqid", "Qid.version": "vers"}  # python-9p's names


def to_py9p(value):
    """A message, qid or stat (or a tuple of them) as python-9p's: the same
    classes and fields, each field's value converted in turn."""
    if isinstance(value, tuple):
        return tuple(map(to_py9p, value))
    if not hasattr(value, "FIELDS"):
        return value
    cls = type(value).__name__
    return getattr(py9p, cls)(**{
        _RENAME.get(f"{cls}.{name}", _RENAME.get(name, name)): to_py9p(getattr(value, name))
        for name, _ in wire.fields(value)
    })


# python-9p's limits: 64-bit offsets and lengths are signed (vlong), at most 16 walk elements.
py9p_messages = st.one_of([
    record_strategy(cls, limit64=0x7FFFFFFFFFFFFFFF, max_names=wire.MAXWELEM) for cls in ALL_TYPES
])


@settings(max_examples=400)
@given(py9p_messages)
def test_same_bytes_as_python_9p(message):
    ours = wire.encode(message)
    theirs = py9p.encode_message(to_py9p(message))
    assert ours == theirs
    assert py9p.decode_message(ours) == to_py9p(message)
    assert wire.decode(theirs) == message


@pytest.mark.parametrize("message", [
    wire.Tversion(wire.NOTAG, 8216, "9P2000"),
    wire.Tattach(1, 0, wire.NOFID, "glenda", ""),
    wire.Twalk(2, 0, 1, ("usr", "glenda", "lib", "profile")),
    wire.Rwalk(2, (Qid(wire.QTDIR, 0, 1), Qid(0, 3, 2))),
    wire.Topen(3, 1, wire.OWRITE | wire.OTRUNC),
    wire.Tcreate(3, 1, "f\u00fcr", wire.DMDIR | 0o755, 0),
    wire.Twrite(4, 1, 8192, b"\0\xffhello"),
    wire.Rread(4, b""),
    wire.Rerror(5, "file does not exist"),
    wire.Tflush(6, 5),
    wire.Rstat(7, Dir(qid=Qid(wire.QTDIR, 3, 42), mode=wire.DMDIR | 0o555, name="/",
                      uid="llamafs", gid="llamafs", muid="", length=0, atime=1, mtime=2)),
], ids=lambda m: m.type_name)
def test_handpicked_against_python_9p(message):
    ours = wire.encode(message)
    assert ours == py9p.encode_message(to_py9p(message))
    assert wire.decode(py9p.encode_message(to_py9p(message))) == message


def test_dir_against_python_9p():
    d = Dir(type=1, dev=2, qid=Qid(0, 9, 10), mode=0o644, atime=3, mtime=4, length=7000,
            name="data", uid="u", gid="g", muid="m")
    assert d.encode() == py9p.encode_dir(to_py9p(d))
    assert py9p.decode_dir(d.encode()) == to_py9p(d)
    # Dir.nochange(): python-9p cannot build it (its length is a signed vlong),
    # but plan9port's decoder accepts our bytes.
    got = py9p.decode_dir(Dir.nochange(name="new").encode())
    assert got.name == "new" and got.mode == 0xFFFFFFFF and got.qid.path == 0xFFFFFFFFFFFFFFFF


def test_python_9p_rejects_what_we_reject():
    # A frame ours calls truncated, plan9port's convM2S refuses too.
    frame = wire.encode(wire.Twalk(1, 2, 3, ("a", "b")))
    short = struct.pack("<I", len(frame) - 1) + frame[4:-1]
    with pytest.raises(RemoteProtocolError):
        wire.decode(short)
    with pytest.raises(py9p.CodecError):
        py9p.decode_message(short)
