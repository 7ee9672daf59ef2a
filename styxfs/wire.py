"""9P2000 (Styx) messages: frozen dataclasses, an encoder and a frame decoder.

Sans-I/O, standard library only (as h11 is for HTTP): feed bytes in, take
messages out; encode messages to bytes.  No sockets, no trio.

    decoder = FrameDecoder(msize=8192)
    decoder.feed(chunk)
    for message in decoder: ...
    data = encode(Rversion(tag=NOTAG, msize=8192, version="9P2000"))
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

VERSION = "9P2000"
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
MAXWELEM = 16
HEADER_SIZE = 7  # size[4] type[1] tag[2]
IOHDRSZ = 24  # room for a Twrite/Rread header within msize
STATFIXED = 2 + 2 + 4 + 13 + 4 + 4 + 4 + 8  # a stat record without its strings

# Qid types and the directory mode bit.
QTDIR = 0x80
QTAPPEND = 0x40
QTEXCL = 0x20
QTAUTH = 0x08
QTFILE = 0x00
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMAUTH = 0x08000000

# Open modes.
OREAD, OWRITE, ORDWR, OEXEC = 0, 1, 2, 3
OTRUNC = 0x10
ORCLOSE = 0x40


class ProtocolError(Exception):
    """Bytes or values that are not 9P2000."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not valid 9P2000."""


class LocalProtocolError(ProtocolError):
    """We were asked to encode something that is not valid 9P2000."""


# ---- field kinds -----------------------------------------------------------

_INT_FORMATS = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}


def _field(kind: str, **kw):
    return field(metadata={"kind": kind}, **kw)


def u8():
    return _field("u8")


def u16():
    return _field("u16")


def u32():
    return _field("u32")


def u64():
    return _field("u64")


def string():
    return _field("s")


@dataclass(frozen=True)
class Qid:
    type: int = 0
    version: int = 0
    path: int = 0

    SIZE: ClassVar[int] = 13

    @property
    def is_dir(self) -> bool:
        return bool(self.type & QTDIR)


@dataclass(frozen=True)
class Dir:
    """A stat record.  `Dir.nochange()` is a wstat that changes nothing."""

    type: int = 0
    dev: int = 0
    qid: Qid = Qid()
    mode: int = 0
    atime: int = 0
    mtime: int = 0
    length: int = 0
    name: str = ""
    uid: str = ""
    gid: str = ""
    muid: str = ""

    @classmethod
    def nochange(cls, **changes) -> "Dir":
        blank = cls(
            type=0xFFFF, dev=0xFFFFFFFF, qid=Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF),
            mode=0xFFFFFFFF, atime=0xFFFFFFFF, mtime=0xFFFFFFFF,
            length=0xFFFFFFFFFFFFFFFF,
        )
        return dataclasses.replace(blank, **changes)

    def encode(self) -> bytes:
        out = bytearray()
        _put_int(out, "u16", self.type, "type")
        _put_int(out, "u32", self.dev, "dev")
        _put_qid(out, self.qid)
        for name, kind in (("mode", "u32"), ("atime", "u32"), ("mtime", "u32"), ("length", "u64")):
            _put_int(out, kind, getattr(self, name), name)
        for name in ("name", "uid", "gid", "muid"):
            _put_string(out, getattr(self, name), name)
        if len(out) > 0xFFFF:
            raise LocalProtocolError(f"stat record of {len(out)} bytes is more than 9P allows")
        return struct.pack("<H", len(out)) + bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> "Dir":
        """One whole stat record (with its leading size[2]), nothing after it."""
        reader = _Reader(data, "stat")
        size = reader.int("u16")
        if size != len(data) - 2:
            raise RemoteProtocolError(f"stat size {size} does not match its {len(data) - 2} bytes")
        d = cls(
            type=reader.int("u16"), dev=reader.int("u32"), qid=reader.qid(),
            mode=reader.int("u32"), atime=reader.int("u32"), mtime=reader.int("u32"),
            length=reader.int("u64"), name=reader.string(), uid=reader.string(),
            gid=reader.string(), muid=reader.string(),
        )
        reader.end()
        return d


def decode_dirs(data: bytes) -> list[Dir]:
    """Split the body of a directory read into stat records."""
    dirs, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            raise RemoteProtocolError("truncated stat in directory read")
        (size,) = struct.unpack_from("<H", data, at)
        dirs.append(Dir.decode(data[at : at + 2 + size]))
        at += 2 + size
    return dirs


# ---- messages --------------------------------------------------------------

MESSAGE_TYPES: dict[int, type["Message"]] = {}


class Message:
    TYPE: ClassVar[int]

    def encode(self) -> bytes:
        return encode(self)

    @property
    def type_name(self) -> str:
        return type(self).__name__


def _message(type_code: int):
    def register(cls):
        cls = dataclass(frozen=True)(cls)
        cls.TYPE = type_code
        MESSAGE_TYPES[type_code] = cls
        return cls

    return register


@_message(100)
class Tversion(Message):
    tag: int = u16()
    msize: int = u32()
    version: str = string()


@_message(101)
class Rversion(Message):
    tag: int = u16()
    msize: int = u32()
    version: str = string()


@_message(102)
class Tauth(Message):
    tag: int = u16()
    afid: int = u32()
    uname: str = string()
    aname: str = string()


@_message(103)
class Rauth(Message):
    tag: int = u16()
    aqid: Qid = _field("qid")


@_message(104)
class Tattach(Message):
    tag: int = u16()
    fid: int = u32()
    afid: int = u32()
    uname: str = string()
    aname: str = string()


@_message(105)
class Rattach(Message):
    tag: int = u16()
    qid: Qid = _field("qid")


@_message(107)
class Rerror(Message):
    tag: int = u16()
    ename: str = string()


@_message(108)
class Tflush(Message):
    tag: int = u16()
    oldtag: int = u16()


@_message(109)
class Rflush(Message):
    tag: int = u16()


@_message(110)
class Twalk(Message):
    tag: int = u16()
    fid: int = u32()
    newfid: int = u32()
    wnames: tuple[str, ...] = _field("strings")


@_message(111)
class Rwalk(Message):
    tag: int = u16()
    wqids: tuple[Qid, ...] = _field("qids")


@_message(112)
class Topen(Message):
    tag: int = u16()
    fid: int = u32()
    mode: int = u8()


@_message(113)
class Ropen(Message):
    tag: int = u16()
    qid: Qid = _field("qid")
    iounit: int = u32()


@_message(114)
class Tcreate(Message):
    tag: int = u16()
    fid: int = u32()
    name: str = string()
    perm: int = u32()
    mode: int = u8()


@_message(115)
class Rcreate(Message):
    tag: int = u16()
    qid: Qid = _field("qid")
    iounit: int = u32()


@_message(116)
class Tread(Message):
    tag: int = u16()
    fid: int = u32()
    offset: int = u64()
    count: int = u32()


@_message(117)
class Rread(Message):
    tag: int = u16()
    data: bytes = _field("data")


@_message(118)
class Twrite(Message):
    tag: int = u16()
    fid: int = u32()
    offset: int = u64()
    data: bytes = _field("data")


@_message(119)
class Rwrite(Message):
    tag: int = u16()
    count: int = u32()


@_message(120)
class Tclunk(Message):
    tag: int = u16()
    fid: int = u32()


@_message(121)
class Rclunk(Message):
    tag: int = u16()


@_message(122)
class Tremove(Message):
    tag: int = u16()
    fid: int = u32()


@_message(123)
class Rremove(Message):
    tag: int = u16()


@_message(124)
class Tstat(Message):
    tag: int = u16()
    fid: int = u32()


@_message(125)
class Rstat(Message):
    tag: int = u16()
    stat: Dir = _field("stat")


@_message(126)
class Twstat(Message):
    tag: int = u16()
    fid: int = u32()
    stat: Dir = _field("stat")


@_message(127)
class Rwstat(Message):
    tag: int = u16()


def _fields(cls) -> list[tuple[str, str]]:
    return [(f.name, f.metadata["kind"]) for f in dataclasses.fields(cls)]


# ---- encoding --------------------------------------------------------------


def _put_int(out: bytearray, kind: str, value, what: str) -> None:
    fmt = _INT_FORMATS[kind]
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"{what} must be an integer, not {value!r}")
    try:
        out += struct.pack(fmt, value)
    except struct.error:
        raise LocalProtocolError(f"{what} {value} does not fit in {kind}") from None


def _put_string(out: bytearray, value: str, what: str) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be a str, not {type(value).__name__}")
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise LocalProtocolError(f"{what} is {len(raw)} bytes, more than a 9P string holds")
    out += struct.pack("<H", len(raw)) + raw


def _put_qid(out: bytearray, qid: Qid) -> None:
    _put_int(out, "u8", qid.type, "qid.type")
    _put_int(out, "u32", qid.version, "qid.version")
    _put_int(out, "u64", qid.path, "qid.path")


def encode(message: Message) -> bytes:
    """The message as one 9P frame."""
    out = bytearray()
    for name, kind in _fields(type(message)):
        value = getattr(message, name)
        what = f"{message.type_name}.{name}"
        if kind in _INT_FORMATS:
            _put_int(out, kind, value, what)
        elif kind == "s":
            _put_string(out, value, what)
        elif kind == "qid":
            _put_qid(out, value)
        elif kind == "strings":
            _put_int(out, "u16", len(value), what)
            for item in value:
                _put_string(out, item, what)
        elif kind == "qids":
            _put_int(out, "u16", len(value), what)
            for item in value:
                _put_qid(out, item)
        elif kind == "data":
            _put_int(out, "u32", len(value), what)
            out += value
        elif kind == "stat":
            raw = value.encode()
            _put_int(out, "u16", len(raw), what)
            out += raw
    size = 5 + len(out)
    return struct.pack("<IB", size, message.TYPE) + bytes(out)


# ---- decoding --------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.at, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RemoteProtocolError(f"truncated {self.what}")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def int(self, kind: str) -> int:
        fmt = _INT_FORMATS[kind]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.int("u16"))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"bad string in {self.what}: not UTF-8") from None
        if "\0" in text:
            raise RemoteProtocolError(f"bad string in {self.what}: contains NUL")
        return text

    def qid(self) -> Qid:
        return Qid(self.int("u8"), self.int("u32"), self.int("u64"))

    def end(self) -> None:
        left = len(self.data) - self.at
        if left:
            raise RemoteProtocolError(f"{self.what} has {left} bytes too many")


def decode(frame: bytes) -> Message:
    """One whole frame, size prefix included, to a message."""
    if len(frame) < HEADER_SIZE:
        raise RemoteProtocolError(f"frame of {len(frame)} bytes is shorter than a 9P header")
    size, type_code = struct.unpack_from("<IB", frame)
    if size != len(frame):
        raise RemoteProtocolError(f"frame size {size} does not match its {len(frame)} bytes")
    cls = MESSAGE_TYPES.get(type_code)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {type_code}")
    reader = _Reader(frame[5:], cls.__name__)
    values = {}
    for name, kind in _fields(cls):
        if kind in _INT_FORMATS:
            values[name] = reader.int(kind)
        elif kind == "s":
            values[name] = reader.string()
        elif kind == "qid":
            values[name] = reader.qid()
        elif kind == "strings":
            values[name] = tuple(reader.string() for _ in range(reader.int("u16")))
        elif kind == "qids":
            values[name] = tuple(reader.qid() for _ in range(reader.int("u16")))
        elif kind == "data":
            values[name] = reader.take(reader.int("u32"))
        elif kind == "stat":
            values[name] = Dir.decode(reader.take(reader.int("u16")))
    reader.end()
    return cls(**values)


class FrameDecoder:
    """Turns a byte stream into messages.  `msize` bounds a frame; it may be
    lowered once the version is negotiated.  A frame over msize is refused as
    soon as its size field arrives, so nothing oversized is buffered."""

    def __init__(self, msize: int = 8192):
        self.msize = msize
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def next_message(self) -> Message | None:
        if len(self._buffer) < 4:
            return None
        (size,) = struct.unpack_from("<I", self._buffer)
        if size > self.msize:
            raise RemoteProtocolError(f"frame of {size} bytes exceeds msize {self.msize}")
        if size < HEADER_SIZE:
            raise RemoteProtocolError(f"frame size {size} is shorter than a 9P header")
        if len(self._buffer) < size:
            return None
        frame = bytes(self._buffer[:size])
        del self._buffer[:size]
        return decode(frame)

    def __iter__(self) -> Iterator[Message]:
        while (message := self.next_message()) is not None:
            yield message


def is_request(message: Message) -> bool:
    return message.type_name.startswith("T")
