"""9P messages as one-line text, and back: for transcript tests and traces.

    Twalk tag 1 fid 0 newfid 1 wnames new/data
    Rwalk tag 1 wqids 1:0:d,258:0:f
    Rread tag 2 data 'hello\\n'
    Rstat tag 3 stat name=ctl,mode=0666,length=0,qid=1:0:f

Numbers are decimal; NOFID and NOTAG name the all-ones values; perm and
mode bits of stat and create are octal, a leading d for DMDIR.  Qids are
path:version:type (d directory, a auth, f file).  Names of a walk are joined
with /; lists of qids with commas.  Data is quoted text (\\n and \\\\
escaped) or hex:....  In an expected line, a value `*` matches anything, data
`len:N` matches N bytes of anything, and a stat matches the keys it names.
"""

from __future__ import annotations

import dataclasses

from . import wire
from .tree import quote, tokenize
from .wire import DMDIR, NOFID, NOTAG, QTAUTH, QTDIR, Dir, Message, Qid

_OCTAL_FIELDS = {"perm"}
_DIR_KEYS = ("name", "mode", "length", "qid", "uid", "gid", "muid", "mtime", "atime")


def format_qid(qid: Qid) -> str:
    kind = "d" if qid.type & QTDIR else "a" if qid.type & QTAUTH else "f"
    return f"{qid.path}:{qid.version}:{kind}"


def parse_qid(text: str) -> Qid | str:
    """A Qid, or the text itself when it holds a * (a pattern)."""
    if "*" in text:
        return text
    path, version, kind = text.split(":")
    qtype = {"d": QTDIR, "a": QTAUTH, "f": 0}[kind]
    return Qid(qtype, int(version), int(path))


def format_perm(perm: int) -> str:
    return ("d" if perm & DMDIR else "") + "0%o" % (perm & ~DMDIR)


def parse_perm(text: str) -> int:
    if text.startswith("d"):
        return DMDIR | int(text[1:], 8)
    return int(text, 8)


def format_data(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + data.hex()
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        return "hex:" + data.hex()
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "''") + "'"


def parse_data(text: str) -> bytes:
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


def format_dir(d: Dir) -> str:
    return ",".join([f"name={d.name}", f"mode={format_perm(d.mode)}", f"length={d.length}",
                     f"qid={format_qid(d.qid)}", f"uid={d.uid}"])


def parse_dir(text: str) -> dict[str, object]:
    """The keys a stat text names (an expectation or a wstat)."""
    values: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in _DIR_KEYS:
            raise ValueError(f"unknown stat key {key!r}")
        if key == "mode":
            values[key] = parse_perm(value)
        elif key == "qid":
            values[key] = parse_qid(value)
        elif key in ("length", "mtime", "atime"):
            values[key] = int(value)
        else:
            values[key] = value
    return values


def _format_int(name: str, value: int) -> str:
    if name in ("fid", "newfid", "afid") and value == NOFID:
        return "NOFID"
    if name in ("tag", "oldtag") and value == NOTAG:
        return "NOTAG"
    if name in _OCTAL_FIELDS:
        return format_perm(value)
    return str(value)


def _parse_int(name: str, text: str) -> int:
    if text == "NOFID" or (text == "-1" and name in ("fid", "newfid", "afid")):
        return NOFID
    if text == "NOTAG" or (text == "-1" and name in ("tag", "oldtag")):
        return NOTAG
    if name in _OCTAL_FIELDS:
        return parse_perm(text)
    return int(text, 0)


def format_message(m: Message) -> str:
    parts = [m.type_name]
    for f in dataclasses.fields(m):
        value = getattr(m, f.name)
        kind = f.metadata["kind"]
        if kind == "s":
            text = quote(value)
        elif kind == "qid":
            text = format_qid(value)
        elif kind == "qids":
            text = ",".join(format_qid(q) for q in value) or "''"
        elif kind == "strings":
            text = quote("/".join(value))
        elif kind == "data":
            text = format_data(value)
        elif kind == "stat":
            text = format_dir(value)
        else:
            text = _format_int(f.name, value)
        parts += [f.name, text]
    return " ".join(parts)


class Pattern:
    """A parsed expectation: which fields must equal what."""

    def __init__(self, cls: type[Message], fields: dict[str, object]):
        self.cls, self.fields = cls, fields

    def matches(self, m: Message) -> bool:
        return type(m) is self.cls and all(
            _match(want, getattr(m, name)) for name, want in self.fields.items())

    def message(self) -> Message:
        values = dict(self.fields)
        for f in dataclasses.fields(self.cls):
            if f.name not in values:
                raise ValueError(f"{self.cls.__name__} needs {f.name}")
            if isinstance(values[f.name], dict):
                values[f.name] = Dir.nochange(**values[f.name])
        return self.cls(**values)


def _match(want, have) -> bool:
    if want == "*":
        return True
    if isinstance(want, str) and isinstance(have, Qid):  # a qid pattern like *:*:d
        return all(w in ("*", h) for w, h in zip(want.split(":"), format_qid(have).split(":")))
    if isinstance(want, dict):  # a partial stat
        return all(getattr(have, k) == v for k, v in want.items())
    if isinstance(want, str) and want.startswith("len:") and isinstance(have, bytes):
        return len(have) == int(want[4:])
    if isinstance(want, tuple) and isinstance(have, tuple):
        return len(want) == len(have) and all(map(_match, want, have))
    return want == have


def parse_line(line: str) -> Pattern:
    fields = tokenize(line)
    name, rest = fields[0], fields[1:]
    cls = next((c for c in wire.MESSAGE_TYPES.values() if c.__name__ == name), None)
    if cls is None:
        raise ValueError(f"unknown message {name!r}")
    if len(rest) % 2:
        raise ValueError(f"{line!r}: fields come in name value pairs")
    kinds = {f.name: f.metadata["kind"] for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    for key, text in zip(rest[::2], rest[1::2]):
        if key not in kinds:
            raise ValueError(f"{name} has no field {key!r}")
        kind = kinds[key]
        if text == "*" or (kind == "data" and text.startswith("len:")):
            values[key] = text
        elif kind == "s":
            values[key] = text
        elif kind == "qid":
            values[key] = parse_qid(text)
        elif kind == "qids":
            values[key] = tuple(parse_qid(q) for q in text.split(",") if q)
        elif kind == "strings":
            values[key] = tuple(n for n in text.split("/") if n) if text else ()
        elif kind == "data":
            values[key] = parse_data(text)
        elif kind == "stat":
            values[key] = parse_dir(text)
        else:
            values[key] = _parse_int(key, text)
    return Pattern(cls, values)
