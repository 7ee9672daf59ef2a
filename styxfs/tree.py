"""The file-tree API the server dispatches to, and helpers for synthetic files.

A tree is made of `Entry` objects (files and directories).  The server owns
fids and the protocol's generic checks (as Inferno's styxservers does); an
entry answers walk, stat, directory listing, open, create, remove and wstat;
`open` returns a `Handle` that holds per-open state and answers read, write
and clunk.  Every operation may block (they are async) and may be cancelled
by a Tflush: a blocking read is just an `await`.

Qid paths are the tree's to choose: one a file, stable, and below 2**32 so
that 9pfuse's inode numbers stay stable.  A file's owner (uid) is the tree's
to give too; one that gives none has files owned by `NOBODY`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from . import errors
from .wire import DMDIR, ORDWR, OTRUNC, OWRITE, QTDIR, Dir, Qid

START_TIME = int(time.time())
NOBODY = "none"  # Plan 9's user of no particular name
SYNC = Dir.nochange()  # a wstat that changes nothing
TRUNCATE = Dir.nochange(length=0)  # one that sets the length to 0, and nothing else


@dataclass(eq=False)
class Connection:
    """What a file tree may know of one 9P connection."""

    id: int
    state: dict[str, Any] = field(default_factory=dict)  # for the tree's own use


@dataclass(frozen=True, eq=False)
class Caller:
    """Who makes a request: the attach's uname, on which connection."""

    uname: str
    conn: Connection
    aname: str = ""


def wants_write(mode: int) -> bool:
    return (mode & 3) in (OWRITE, ORDWR)


def wants_read(mode: int) -> bool:
    return (mode & 3) != OWRITE


class Entry:
    """A file or directory.  Subclasses override what they support."""

    def __init__(self, name: str, qid_path: int, perm: int = 0o444, uid: str = NOBODY):
        self.name = name
        self.perm = perm
        self.uid = uid
        self.qid = Qid(QTDIR if perm & DMDIR else 0, 0, qid_path)

    @property
    def is_dir(self) -> bool:
        return bool(self.perm & DMDIR)

    def length(self) -> int:
        return 0

    def stat(self, caller: Caller) -> Dir:
        return Dir(
            qid=self.qid, mode=self.perm, atime=START_TIME, mtime=START_TIME,
            length=self.length(), name=self.name, uid=self.uid, gid=self.uid, muid=self.uid,
        )

    def check_open(self, mode: int) -> None:
        """The generic permission checks of an open, by the file's mode bits."""
        if mode & ~(3 | OTRUNC | 0x40):
            raise errors.BAD_MODE()
        if self.is_dir and (wants_write(mode) or mode & OTRUNC):
            raise errors.DIR_WRITE()
        if wants_write(mode) and not self.perm & 0o222:
            raise errors.READ_ONLY()
        if wants_read(mode) and not self.perm & 0o444:
            raise errors.WRITE_ONLY()

    async def walk(self, name: str, caller: Caller) -> Entry:
        if not self.is_dir:
            raise errors.WALK_NOT_DIR()
        for child in await self.children(caller):
            if child.name == name:
                return child
        raise errors.NOT_FOUND()

    async def children(self, caller: Caller) -> list[Entry]:
        return []

    async def open(self, mode: int, caller: Caller) -> Handle:
        if self.is_dir:
            return DirHandle(self, caller)
        return Handle(self)

    async def create(self, name: str, perm: int, mode: int, caller: Caller) -> Handle:
        raise errors.NO_CREATE()

    async def remove(self, caller: Caller) -> None:
        raise errors.NO_REMOVE()

    async def wstat(self, new: Dir, caller: Caller) -> None:
        """A wstat that changes nothing is Plan 9's sync and succeeds on every
        file; on a file that may be written, truncation to zero length succeeds
        too (a shell's `>` through 9pfuse or v9fs is that, as OTRUNC at open).
        Anything else is refused."""
        if new == SYNC or (new == TRUNCATE and not self.is_dir and self.perm & 0o222):
            return
        raise errors.NO_WSTAT()


class Handle:
    """One open of an entry.  `entry` is what the fid now refers to: an open
    of `clone` rebinds its fid to the new session's ctl, as in webfs."""

    def __init__(self, entry: Entry):
        self.entry = entry

    async def read(self, offset: int, count: int) -> bytes:
        raise errors.WRITE_ONLY()

    async def write(self, offset: int, data: bytes) -> int:
        raise errors.READ_ONLY()

    async def clunk(self, aborted: bool) -> None:
        """The fid is gone.  `aborted`: by a lost connection or a Tversion,
        not by the client's Tclunk."""


class DirHandle(Handle):
    """Directory reads over a snapshot taken at offset 0, so that a read at
    any offset this handle handed out resumes at the right entry."""

    def __init__(self, entry: Entry, caller: Caller):
        super().__init__(entry)
        self.caller = caller
        self.records: list[bytes] = []
        self.starts: dict[int, int] = {}  # byte offset -> record index

    async def read(self, offset: int, count: int) -> bytes:
        if offset == 0:
            children = await self.entry.children(self.caller)
            self.records = [child.stat(self.caller).encode() for child in children]
            self.starts, at = {}, 0
            for index, record in enumerate(self.records):
                self.starts[at] = index
                at += len(record)
            self.starts[at] = len(self.records)
        index = self.starts.get(offset)
        if index is None:
            raise errors.BAD_OFFSET()
        out = bytearray()
        for record in self.records[index:]:
            if len(out) + len(record) > count:
                break
            out += record
        if not out and index < len(self.records):
            raise errors.BAD_COUNT()
        return bytes(out)


def read_slice(content: bytes, offset: int, count: int) -> bytes:
    return content[offset : offset + count]


class Directory(Entry):
    """A directory with a fixed or computed list of children."""

    def __init__(self, name: str, qid_path: int, entries: list[Entry] | None = None,
                 perm: int = 0o555, uid: str = NOBODY):
        super().__init__(name, qid_path, DMDIR | perm, uid)
        self.entries = entries if entries is not None else []

    async def children(self, caller: Caller) -> list[Entry]:
        return list(self.entries)


Reader = Callable[[Caller], "str | bytes | Awaitable[str | bytes]"]
Writer = Callable[[Caller, bytes], "None | Awaitable[None]"]


async def _maybe_await(value):
    if hasattr(value, "__await__"):
        return await value
    return value


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class TextFile(Entry):
    """A synthetic file: reading gives `read(caller)`, computed at the first
    read at offset 0 of each open and served from that snapshot after, as
    Plan 9's synthetic files do; each write is handed whole to
    `write(caller, data)`, which raises StyxError to refuse it."""

    def __init__(self, name: str, qid_path: int, read: Reader | None = None,
                 write: Writer | None = None, perm: int | None = None, uid: str = NOBODY):
        if perm is None:
            perm = (0o444 if read else 0) | (0o222 if write else 0)
        super().__init__(name, qid_path, perm, uid)
        self.reader, self.writer = read, write

    async def open(self, mode: int, caller: Caller) -> Handle:
        return TextHandle(self, caller)


class TextHandle(Handle):
    def __init__(self, entry: TextFile, caller: Caller):
        super().__init__(entry)
        self.caller = caller
        self.content: bytes | None = None

    async def read(self, offset: int, count: int) -> bytes:
        if self.entry.reader is None:
            raise errors.WRITE_ONLY()
        if offset == 0 or self.content is None:
            self.content = _as_bytes(await _maybe_await(self.entry.reader(self.caller)))
        return read_slice(self.content, offset, count)

    async def write(self, offset: int, data: bytes) -> int:
        if self.entry.writer is None:
            raise errors.READ_ONLY()
        await _maybe_await(self.entry.writer(self.caller, data))
        return len(data)


# ---- ctl files: Plan 9 parsecmd rules and a webfs-style verb table ---------


def tokenize(line: str) -> list[str]:
    """Split a line into fields as Plan 9's tokenize does: blanks separate,
    single quotes group, a doubled quote inside quotes is a quote."""
    fields: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t\r":
            i += 1
        if i >= n:
            return fields
        token: list[str] = []
        quoting = False
        while i < n and (quoting or line[i] not in " \t\r"):
            c = line[i]
            if c == "'":
                if quoting and i + 1 < n and line[i + 1] == "'":
                    token.append("'")
                    i += 2
                    continue
                quoting = not quoting
            else:
                token.append(c)
            i += 1
        if quoting:
            raise errors.BAD_CTL(why="unterminated quote")
        fields.append("".join(token))


def quote(text: str) -> str:
    """A field as tokenize reads it back (Plan 9's quotestrdup)."""
    if text and not any(c in text for c in " \t\r\n'"):
        return text
    return "'" + text.replace("'", "''") + "'"


def split_lines(text: str, raw: frozenset[str] = frozenset()) -> list[str]:
    """Lines as tokenize reads them: a newline inside quotes is part of its
    word, not the line's end ('' inside quotes is a quote).  A line whose
    verb is in raw ends at its first newline, whatever quotes it holds."""
    lines, start = [], 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        verb = text[start:end].lstrip(" \t\r").partition(" ")[0].rstrip("\r")
        if verb not in raw and "'" in text[start:end]:
            quoting, end = False, start
            while end < len(text) and (quoting or text[end] != "\n"):
                quoting ^= text[end] == "'"  # a doubled quote toggles twice: still quoting
                end += 1
        lines.append(text[start:end])
        start = end + 1
    return lines


def parse_commands(data: bytes, raw: frozenset[str] = frozenset()) -> list[list[str]]:
    """A ctl write: one command a line (a quoted newline is part of its word),
    blank lines ignored.  A verb in raw takes the rest of its line as it is
    (one argument, or none if empty)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.BAD_CTL(why="not UTF-8") from None
    commands = []
    for line in split_lines(text, raw):
        verb, _, rest = line.lstrip(" \t\r").partition(" ")
        if verb.rstrip("\r") in raw:
            rest = rest.rstrip("\r")
            commands.append([verb.rstrip("\r")] + ([rest] if rest else []))
        elif fields := tokenize(line):
            commands.append(fields)
    return commands


@dataclass
class Verb:
    name: str
    usage: str  # the arguments, as in "PATH [ctx N]"
    min_args: int
    max_args: int  # -1: any number
    run: Callable[..., Any]
    raw: bool = False  # takes the rest of the line as it is

    def usage_line(self) -> str:
        return f"usage: {self.name} {self.usage}".rstrip()


class Commands:
    """A verb table: `commands.verb("load", "PATH [ctx N]", 1, 9)(fn)`, where
    fn(caller, args) may be async and raises StyxError to refuse.  Unknown
    verbs and wrong argument counts become errors that name the verb and
    show its usage."""

    def __init__(self):
        self.verbs: dict[str, Verb] = {}

    def verb(self, name: str, usage: str = "", min_args: int = 0, max_args: int | None = None, raw: bool = False):
        def register(fn):
            self.verbs[name] = Verb(name, usage, min_args,
                                    min_args if max_args is None else max_args, fn, raw)
            return fn
        return register

    async def run(self, caller: Caller, data: bytes) -> None:
        raw = frozenset(name for name, verb in self.verbs.items() if verb.raw)
        for fields in parse_commands(data, raw):
            name, args = fields[0], fields[1:]
            verb = self.verbs.get(name)
            if verb is None:
                raise errors.BAD_CTL(why=f"{name}: verbs are {' '.join(self.verbs)}")
            if len(args) < verb.min_args or (verb.max_args >= 0 and len(args) > verb.max_args):
                raise errors.BAD_CTL(why=verb.usage_line())
            await _maybe_await(verb.run(caller, args))


def parse_number(verb: str, text: str, kind=int, low=None, high=None):
    """A ctl argument as a number in [low, high], or a clear error."""
    try:
        value = kind(text)
    except ValueError:
        raise errors.BAD_CTL(why=f"{verb}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise errors.BAD_CTL(why=f"{verb}: {text!r} is not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise errors.BAD_CTL(why=f"{verb}: {text} is out of range [{low}, {high}]")
    return value
