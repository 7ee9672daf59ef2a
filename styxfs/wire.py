"""9P2000 (Styx) messages: frozen dataclasses, an encoder and a frame decoder.

Sans-I/O, standard library only (as h11 is for HTTP): feed bytes in, take
messages out; encode messages to bytes.  No sockets, no trio.

    decoder = FrameDecoder(msize=8192)
    decoder.feed(chunk)
    for message in decoder: ...
    data = encode(Rversion(tag=NOTAG, msize=8192, version="9P2000"))

KINDS is the table of field kinds (u16, fid, string, qid, data, ...).
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
#
# Every field of a message, of a qid and of a stat record has a kind, and
# KINDS is the one table of them: for each kind, how a value is encoded (put),
# decoded (get), written as one word of text and read back (format, parse:
# transcripts and traces; styxfs.transcript quotes the words of a line) and
# made up for a fuzzer (random).  Nothing else switches over kinds.


class _Unfit(Exception):
    """A value its kind cannot encode; `path` names the field, innermost first."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.path: list[str] = []

    def named(self, what: str) -> LocalProtocolError:
        return LocalProtocolError(".".join([what, *reversed(self.path)]) + " " + self.args[0])


class _Reader:
    def __init__(self, data: bytes, what: str, at: int = 0):
        self.data, self.at, self.what = data, at, what

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RemoteProtocolError(f"truncated {self.what}")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def end(self) -> None:
        left = len(self.data) - self.at
        if left:
            raise RemoteProtocolError(f"{self.what} has {left} bytes too many")


class Kind:
    """One kind of field.  `type` is the Python type of its values; `top` an
    integer's largest value, `item` the kind of a list's items, `record` the
    dataclass whose fields (each with its kind) make a qid or a stat."""

    name: str
    type: type
    top: int | None = None
    item: "Kind | None" = None
    record: type | None = None

    def put(self, out: bytearray, value) -> None:
        raise NotImplementedError

    def get(self, reader: _Reader):
        raise NotImplementedError

    def format(self, value) -> str:
        """The value as one word of text (unquoted)."""
        return str(value)

    def parse(self, text: str):
        """A word of text as a value.  Text that is a pattern of a transcript
        (a qid with a *, data len:N) stays text."""
        return self.type(text)

    def random(self, rng, like=None, *, ints=(), names=()):
        """A value made up for a fuzzer with `rng` (a random.Random): mostly
        edges (0, all ones, empty, long), the fuzzer's own `ints` and `names`,
        or something near `like`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<wire kind {self.name}>"


def format_perm(perm: int) -> str:
    return ("d" if perm & DMDIR else "") + "0%o" % (perm & ~DMDIR)


def parse_perm(text: str) -> int:
    if text.startswith("d"):
        return DMDIR | int(text[1:], 8)
    return int(text, 8)


class _Int(Kind):
    type = int

    def __init__(self, name: str, bits: int, *, none: str | None = None, octal: bool = False):
        self.name, self.bits, self.top = name, bits, (1 << bits) - 1
        self.none, self.octal = none, octal  # none: the word for all ones (NOFID, NOTAG)
        self.struct = struct.Struct({8: "<B", 16: "<H", 32: "<I", 64: "<Q"}[bits])

    def put(self, out, value):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Unfit(f"must be an integer, not {value!r}")
        if not 0 <= value <= self.top:
            raise _Unfit(f"{value} does not fit in u{self.bits}")
        out += self.struct.pack(value)

    def get(self, reader):
        return self.struct.unpack(reader.take(self.struct.size))[0]

    def format(self, value):
        if self.none and value == self.top:
            return self.none
        return format_perm(value) if self.octal else str(value)

    def parse(self, text):
        if self.none and text in (self.none, "-1"):
            return self.top
        return parse_perm(text) if self.octal else int(text, 0)

    def random(self, rng, like=None, *, ints=(), names=()):
        pick = rng.randrange(4)
        if pick == 0 and ints:
            value = rng.choice(ints)
        elif pick == 1 and like is not None:
            value = like + rng.choice((-1, 1))
        elif pick == 2:
            value = rng.choice((0, 1, 2, 3, 4, 5, self.top))
        else:
            value = rng.getrandbits(self.bits)
        return value & self.top


U8, U16, U32, U64 = _Int("u8", 8), _Int("u16", 16), _Int("u32", 32), _Int("u64", 64)
TAG = _Int("tag", 16, none="NOTAG")
FID = _Int("fid", 32, none="NOFID")
PERM = _Int("perm", 32, octal=True)  # 0644, d0755


class _String(Kind):
    name, type = "s", str

    def put(self, out, value):
        if not isinstance(value, str):
            raise _Unfit(f"must be a str, not {type(value).__name__}")
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise _Unfit(f"is {len(raw)} bytes, more than a 9P string holds")
        out += U16.struct.pack(len(raw)) + raw

    def get(self, reader):
        raw = reader.take(U16.get(reader))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"bad string in {reader.what}: not UTF-8") from None
        if "\0" in text:
            raise RemoteProtocolError(f"bad string in {reader.what}: contains NUL")
        return text

    def random(self, rng, like=None, *, ints=(), names=()):
        # long ones: near msize 256 and 8192, and past what a stat record holds
        near = [like * 2, like + "x" * rng.randint(1, 300)] if like is not None else []
        return rng.choice([*(names or ("", ".", "..", "a")), *near, "n" * rng.choice((230, 8150, 65400))])


STRING = _String()


class _List(Kind):
    """A count[2] and that many items; as text, the items joined by `sep`."""

    type = tuple

    def __init__(self, name: str, item: Kind, sep: str):
        self.name, self.item, self.sep = name, item, sep

    def put(self, out, value):
        U16.put(out, len(value))
        for item in value:
            self.item.put(out, item)

    def get(self, reader):
        return tuple(self.item.get(reader) for _ in range(U16.get(reader)))

    def format(self, value):
        return self.sep.join(self.item.format(v) for v in value)

    def parse(self, text):
        return tuple(self.item.parse(t) for t in text.split(self.sep) if t)

    def random(self, rng, like=None, *, ints=(), names=()):
        items = list(like or ())
        if items and rng.random() < 0.3:
            del items[rng.randrange(len(items))]
        else:
            items.insert(rng.randint(0, len(items)), self.item.random(rng, ints=ints, names=names))
        return tuple(items[: rng.choice((MAXWELEM, MAXWELEM + 1, 40))])


def _put_record(out: bytearray, record, kinds) -> None:
    for name, kind in kinds:
        try:
            kind.put(out, getattr(record, name))
        except _Unfit as e:
            e.path.append(name)
            raise


def _get_record(reader: _Reader, cls):
    return cls(*[kind.get(reader) for _, kind in cls.FIELDS])


def _of(kind: Kind, **kw):
    return field(metadata={"kind": kind}, **kw)


def _record(cls):
    """A frozen dataclass whose FIELDS are its (name, kind) pairs in wire order."""
    cls = dataclass(frozen=True)(cls)
    cls.FIELDS = tuple((f.name, f.metadata["kind"]) for f in dataclasses.fields(cls))
    return cls


def fields(record) -> tuple[tuple[str, Kind], ...]:
    """A message's, qid's or stat's fields (of a class or an instance) in wire order, each with its kind."""
    return record.FIELDS


@_record
class Qid:
    type: int = _of(U8, default=0)
    version: int = _of(U32, default=0)
    path: int = _of(U64, default=0)

    SIZE: ClassVar[int] = 13
    FIELDS: ClassVar[tuple]

    @property
    def is_dir(self) -> bool:
        return bool(self.type & QTDIR)


class _Qid(Kind):
    """As text path:version:type, the type d (directory), a (auth) or f."""

    name, type, record = "qid", Qid, Qid

    def put(self, out, value):
        _put_record(out, value, Qid.FIELDS)

    def get(self, reader):
        return _get_record(reader, Qid)

    def format(self, value):
        kind = "d" if value.type & QTDIR else "a" if value.type & QTAUTH else "f"
        return f"{value.path}:{value.version}:{kind}"

    def parse(self, text):
        if "*" in text:
            return text
        path, version, kind = text.split(":")
        return Qid({"d": QTDIR, "a": QTAUTH, "f": 0}[kind], int(version), int(path))

    def random(self, rng, like=None, *, ints=(), names=()):
        name, kind = rng.choice(Qid.FIELDS)
        return dataclasses.replace(like or Qid(), **{name: kind.random(rng, ints=ints, names=names)})


QID = _Qid()
QIDS = _List("qids", QID, ",")


@_record
class Dir:
    """A stat record.  `Dir.nochange()` is a wstat that changes nothing."""

    type: int = _of(U16, default=0)
    dev: int = _of(U32, default=0)
    qid: Qid = _of(QID, default=Qid())
    mode: int = _of(PERM, default=0)
    atime: int = _of(U32, default=0)
    mtime: int = _of(U32, default=0)
    length: int = _of(U64, default=0)
    name: str = _of(STRING, default="")
    uid: str = _of(STRING, default="")
    gid: str = _of(STRING, default="")
    muid: str = _of(STRING, default="")

    FIELDS: ClassVar[tuple]

    @classmethod
    def nochange(cls, **changes) -> "Dir":
        blank = cls(
            type=0xFFFF, dev=0xFFFFFFFF, qid=Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF),
            mode=0xFFFFFFFF, atime=0xFFFFFFFF, mtime=0xFFFFFFFF,
            length=0xFFFFFFFFFFFFFFFF,
        )
        return dataclasses.replace(blank, **changes)

    def encode(self) -> bytes:
        try:
            return _stat_bytes(self)
        except _Unfit as e:
            raise e.named("stat") from None

    @classmethod
    def decode(cls, data: bytes) -> "Dir":
        """One whole stat record (with its leading size[2]), nothing after it."""
        reader = _Reader(data, "stat")
        size = U16.get(reader)
        if size != len(data) - 2:
            raise RemoteProtocolError(f"stat size {size} does not match its {len(data) - 2} bytes")
        d = _get_record(reader, cls)
        reader.end()
        return d


def _stat_bytes(d: Dir) -> bytes:
    out = bytearray(2)
    _put_record(out, d, Dir.FIELDS)
    if len(out) - 2 > 0xFFFF:
        raise _Unfit(f"record of {len(out) - 2} bytes is more than 9P allows")
    U16.struct.pack_into(out, 0, len(out) - 2)
    return bytes(out)


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


class _Stat(Kind):
    """A stat in a message: size[2] and the record (which starts with its own
    size).  As text key=value pairs joined by commas; parse gives a dict of
    the keys it names (a partial stat: an expectation or a wstat)."""

    name, type, record = "stat", Dir, Dir
    SHOWN = ("name", "mode", "length", "qid", "uid")

    def put(self, out, value):
        raw = _stat_bytes(value)
        U16.put(out, len(raw))
        out += raw

    def get(self, reader):
        return Dir.decode(reader.take(U16.get(reader)))

    def format(self, value):
        kinds = dict(Dir.FIELDS)
        return ",".join(f"{key}={kinds[key].format(getattr(value, key))}" for key in self.SHOWN)

    def parse(self, text):
        kinds, values = dict(Dir.FIELDS), {}
        for item in filter(None, text.split(",")):
            key, _, value = item.partition("=")
            if key not in kinds:
                raise ValueError(f"unknown stat key {key!r}")
            values[key] = kinds[key].parse(value)
        return values

    def random(self, rng, like=None, *, ints=(), names=()):
        """A wstat that changes one thing."""
        name, kind = rng.choice(Dir.FIELDS)
        return Dir.nochange(**{name: kind.random(rng, ints=ints, names=names)})


STAT = _Stat()


class _Data(Kind):
    """count[4] bytes.  As text: UTF-8 with \\n and \\\\ escaped, or hex:...."""

    name, type = "data", bytes

    def put(self, out, value):
        U32.put(out, len(value))
        out += value

    def get(self, reader):
        return reader.take(U32.get(reader))

    def format(self, value):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return "hex:" + value.hex()
        if text.startswith(("hex:", "len:")) or any(ord(c) < 32 and c not in "\n\t" for c in text):
            return "hex:" + value.hex()
        return text.replace("\\", "\\\\").replace("\n", "\\n")

    def parse(self, text):
        if text.startswith("len:"):
            return text
        if text.startswith("hex:"):
            return bytes.fromhex(text[4:])
        out, i = [], 0
        while i < len(text):
            if text[i] == "\\" and i + 1 < len(text):
                out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(text[i + 1], text[i + 1]))
                i += 2
            else:
                out.append(text[i])
                i += 1
        return "".join(out).encode("utf-8")

    def random(self, rng, like=None, *, ints=(), names=()):
        like = like or b""
        return rng.choice([b"", like * 2, rng.randbytes(rng.choice((1, 100, 240, 1000, 4000))), like[: len(like) // 2]])


DATA = _Data()
STRINGS = _List("strings", STRING, "/")

KINDS: dict[str, Kind] = {k.name: k for k in (U8, U16, U32, U64, TAG, FID, PERM, STRING, STRINGS, QID, QIDS, STAT, DATA)}


# ---- messages --------------------------------------------------------------

MESSAGE_TYPES: dict[int, type["Message"]] = {}


class Message:
    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple]

    def encode(self) -> bytes:
        return encode(self)

    @property
    def type_name(self) -> str:
        return type(self).__name__


def _message(type_code: int):
    def register(cls):
        cls = _record(cls)
        cls.TYPE = type_code
        MESSAGE_TYPES[type_code] = cls
        return cls

    return register


@_message(100)
class Tversion(Message):
    tag: int = _of(TAG)
    msize: int = _of(U32)
    version: str = _of(STRING)


@_message(101)
class Rversion(Message):
    tag: int = _of(TAG)
    msize: int = _of(U32)
    version: str = _of(STRING)


@_message(102)
class Tauth(Message):
    tag: int = _of(TAG)
    afid: int = _of(FID)
    uname: str = _of(STRING)
    aname: str = _of(STRING)


@_message(103)
class Rauth(Message):
    tag: int = _of(TAG)
    aqid: Qid = _of(QID)


@_message(104)
class Tattach(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)
    afid: int = _of(FID)
    uname: str = _of(STRING)
    aname: str = _of(STRING)


@_message(105)
class Rattach(Message):
    tag: int = _of(TAG)
    qid: Qid = _of(QID)


@_message(107)
class Rerror(Message):
    tag: int = _of(TAG)
    ename: str = _of(STRING)


@_message(108)
class Tflush(Message):
    tag: int = _of(TAG)
    oldtag: int = _of(TAG)


@_message(109)
class Rflush(Message):
    tag: int = _of(TAG)


@_message(110)
class Twalk(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)
    newfid: int = _of(FID)
    wnames: tuple[str, ...] = _of(STRINGS)


@_message(111)
class Rwalk(Message):
    tag: int = _of(TAG)
    wqids: tuple[Qid, ...] = _of(QIDS)


@_message(112)
class Topen(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)
    mode: int = _of(U8)


@_message(113)
class Ropen(Message):
    tag: int = _of(TAG)
    qid: Qid = _of(QID)
    iounit: int = _of(U32)


@_message(114)
class Tcreate(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)
    name: str = _of(STRING)
    perm: int = _of(PERM)
    mode: int = _of(U8)


@_message(115)
class Rcreate(Message):
    tag: int = _of(TAG)
    qid: Qid = _of(QID)
    iounit: int = _of(U32)


@_message(116)
class Tread(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)
    offset: int = _of(U64)
    count: int = _of(U32)


@_message(117)
class Rread(Message):
    tag: int = _of(TAG)
    data: bytes = _of(DATA)


@_message(118)
class Twrite(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)
    offset: int = _of(U64)
    data: bytes = _of(DATA)


@_message(119)
class Rwrite(Message):
    tag: int = _of(TAG)
    count: int = _of(U32)


@_message(120)
class Tclunk(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)


@_message(121)
class Rclunk(Message):
    tag: int = _of(TAG)


@_message(122)
class Tremove(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)


@_message(123)
class Rremove(Message):
    tag: int = _of(TAG)


@_message(124)
class Tstat(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)


@_message(125)
class Rstat(Message):
    tag: int = _of(TAG)
    stat: Dir = _of(STAT)


@_message(126)
class Twstat(Message):
    tag: int = _of(TAG)
    fid: int = _of(FID)
    stat: Dir = _of(STAT)


@_message(127)
class Rwstat(Message):
    tag: int = _of(TAG)


# ---- encoding and decoding ---------------------------------------------------


def encode(message: Message) -> bytes:
    """The message as one 9P frame."""
    out = bytearray(5)  # size[4] type[1], filled in below
    try:
        _put_record(out, message, message.FIELDS)
    except _Unfit as e:
        raise e.named(message.type_name) from None
    struct.pack_into("<IB", out, 0, len(out), message.TYPE)
    return bytes(out)


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
    reader = _Reader(frame, cls.__name__, at=5)
    message = _get_record(reader, cls)
    reader.end()
    return message


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
