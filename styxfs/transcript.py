"""9P messages as one-line text, and back: for transcript tests and traces.

    Twalk tag 1 fid 0 newfid 1 wnames new/data
    Rwalk tag 1 wqids 1:0:d,258:0:f
    Rread tag 2 data 'hello world\\n'
    Rstat tag 3 stat name=ctl,mode=0666,length=0,qid=1:0:f

A message's name, then each field's name and value, a word each, quoted as
Plan 9's tokenize reads them.  Each kind of field is written as styxfs.wire's
KINDS says: numbers are decimal; NOFID and NOTAG name the all-ones values;
perm and mode bits of stat and create are octal, a leading d for DMDIR.  Qids
are path:version:type (d directory, a auth, f file).  Names of a walk are
joined with /; lists of qids with commas.  Data is text (\\n and \\\\ escaped)
or hex:....  In an expected line, a value `*` matches anything, data `len:N`
matches N bytes of anything, a qid with a * in it matches the parts given,
and a stat matches the keys it names.
"""

from __future__ import annotations

from . import wire
from .tree import quote, tokenize
from .wire import Dir, Message, Qid

MESSAGES = {cls.__name__: cls for cls in wire.MESSAGE_TYPES.values()}


def format_message(m: Message) -> str:
    words = [m.type_name]
    for name, kind in wire.fields(m):
        words += [name, quote(kind.format(getattr(m, name)))]
    return " ".join(words)


class Pattern:
    """A parsed expectation: which fields must equal what."""

    def __init__(self, cls: type[Message], fields: dict[str, object]):
        self.cls, self.fields = cls, fields

    def matches(self, m: Message) -> bool:
        return type(m) is self.cls and all(
            _match(want, getattr(m, name)) for name, want in self.fields.items())

    def message(self) -> Message:
        values = dict(self.fields)
        for name, _ in wire.fields(self.cls):
            if name not in values:
                raise ValueError(f"{self.cls.__name__} needs {name}")
            if isinstance(values[name], dict):
                values[name] = Dir.nochange(**values[name])
        return self.cls(**values)


def _match(want, have) -> bool:
    if want == "*":
        return True
    if isinstance(want, str) and isinstance(have, Qid):  # a qid pattern like *:*:d
        return all(w in ("*", h) for w, h in zip(want.split(":"), wire.QID.format(have).split(":")))
    if isinstance(want, dict):  # a partial stat
        return all(_match(v, getattr(have, k)) for k, v in want.items())
    if isinstance(want, str) and want.startswith("len:") and isinstance(have, bytes):
        return len(have) == int(want[4:])
    if isinstance(want, tuple) and isinstance(have, tuple):
        return len(want) == len(have) and all(map(_match, want, have))
    return want == have


def parse_line(line: str) -> Pattern:
    words = tokenize(line)
    name, rest = words[0], words[1:]
    cls = MESSAGES.get(name)
    if cls is None:
        raise ValueError(f"unknown message {name!r}")
    if len(rest) % 2:
        raise ValueError(f"{line!r}: fields come in name value pairs")
    kinds = dict(wire.fields(cls))
    values: dict[str, object] = {}
    for key, text in zip(rest[::2], rest[1::2]):
        if key not in kinds:
            raise ValueError(f"{name} has no field {key!r}")
        values[key] = text if text == "*" else kinds[key].parse(text)
    return Pattern(cls, values)
