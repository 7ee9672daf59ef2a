"""Rerror strings and the mechanism for them: `StyxError`, `Error`, and
the errors of the protocol and of files that any 9P server answers.  A
server built on the toolkit keeps its own in the same form (the llamafs
node's and coordinator's are in styxfs/llama/errors.py).

Short, human, naming the problem, as Plan 9's own servers write them, and
worded so that clients which turn strings into errno values get a sensible
one.  plan9port's 9pfuse (`src/cmd/9pfuse/errstr.c`) looks for keywords, in
this order: "permitted" EPERM, "permission" EACCES, "exists" EEXIST,
"exist"/"no such"/"not found" ENOENT, "not implemented" ENOSYS, "i/o" EIO,
"timed out" ETIMEDOUT, "too long" E2BIG, "interrupt" EINTR, "bad file"/" fid "
EBADF, "temporar" EAGAIN, "memory" ENOMEM, "is a directory" EISDIR,
"directory" ENOTDIR, "argument"/"invalid"/"illegal" EINVAL, "in use"/"busy"
EBUSY, "read-only" EROFS, "proto" EPROTO; anything else becomes ERANGE
("Numerical result out of range"), which is never what we mean.  Linux's
v9fs matches whole strings of Plan 9's (`net/9p/error.c`): where one fits,
it is used as it is ("file does not exist", "permission denied").

Each error is an `Error`: its text, or a template whose fixed prefix comes
before any `{field}`, and the errno 9pfuse gives it (tests/test_errors.py
checks every one).  `raise errors.NOT_FOUND()` or
`raise errors.FILE_TOO_LARGE(size=…)`, the fields named as in the template;
`str(errors.PERM)` is its text.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass


class StyxError(Exception):
    """An error to be answered as Rerror; str(error) is the ename."""


@dataclass(frozen=True)
class Error:
    text: str  # the string, or a template: a fixed prefix, then {fields}
    errno: int  # what plan9port's 9pfuse makes of it

    def __call__(self, **fields) -> StyxError:
        return StyxError(self.format(**fields))

    def format(self, **fields) -> str:
        return self.text.format(**fields) if fields else self.text

    def __str__(self) -> str:
        return self.text

    @property
    def prefix(self) -> str:
        """What every message of it begins with."""
        return self.text.split("{", 1)[0]


E = _errno

# ---- the protocol: fids, tags, versions ---------------------------------------------------
FID_IN_USE = Error("fid in use", E.EBUSY)
UNKNOWN_FID = Error("bad file: unknown fid", E.EBADF)
FID_OPEN = Error("bad file: fid already open", E.EBADF)
FID_NOT_OPEN = Error("bad file: fid not open", E.EBADF)
WALK_OPEN_FID = Error("bad file: cannot walk from an open fid", E.EBADF)
WALK_NOT_DIR = Error("walk in non-directory", E.ENOTDIR)
TOO_MANY_NAMES = Error("walk too long: more than 16 names", E.E2BIG)
DUPLICATE_TAG = Error("duplicate tag: tag in use", E.EBUSY)
NOT_NEGOTIATED = Error("protocol botch: version not negotiated", E.EPROTO)
MSIZE_TOO_SMALL = Error("invalid msize {msize}: at least {least}", E.EINVAL)
NO_AUTH = Error("authentication not required: Tauth not implemented", E.ENOSYS)
AUTH_FAILED = Error("authentication failed: permission denied", E.EACCES)
INTERRUPTED = Error("interrupted", E.EINTR)
INTERNAL = Error("i/o error: internal error", E.EIO)
REPLY_TOO_LARGE = Error("reply too long for msize", E.E2BIG)

# ---- files ------------------------------------------------------------------------------------
NOT_FOUND = Error("file does not exist", E.ENOENT)
EXISTS = Error("file already exists", E.EEXIST)
PERM = Error("permission denied", E.EACCES)
DIR_WRITE = Error("is a directory", E.EISDIR)
READ_ONLY = Error("file is read-only", E.EROFS)
WRITE_ONLY = Error("permission denied: file is write-only", E.EACCES)
NOT_DIR = Error("not a directory", E.ENOTDIR)
BAD_MODE = Error("invalid open mode", E.EINVAL)
BAD_OFFSET = Error("invalid offset: not the start of an entry", E.EINVAL)
BAD_COUNT = Error("invalid count: too small for a stat entry", E.EINVAL)
NOT_EMPTY = Error("directory not empty: a file exists in it", E.EEXIST)
NO_CREATE = Error("create not permitted", E.EPERM)
NO_REMOVE = Error("remove not permitted", E.EPERM)
NO_WSTAT = Error("wstat not permitted: only truncation to zero length", E.EPERM)
WSTAT_REFUSED = Error("wstat not permitted: cannot change {what}", E.EPERM)
BAD_NAME = Error("invalid file name", E.EINVAL)
NAME_TOO_LONG = Error("file name too long", E.E2BIG)
UNAME_TOO_LONG = Error("user name too long", E.E2BIG)
FILE_TOO_LARGE = Error("file too long: over {size} bytes", E.E2BIG)
FS_FULL = Error("out of memory: file system full", E.ENOMEM)
MAX_NAME = 255  # bytes of a file or user name: a stat record then stays small

# ---- ctl requests -------------------------------------------------------------------------------
BAD_CTL = Error("invalid ctl request: {why}", E.EINVAL)  # why: what is wrong, and the usage

ALL = {name: value for name, value in list(globals().items()) if isinstance(value, Error)}
__all__ = ["StyxError", "Error", *ALL]  # what a server's own errors module takes with `import *`
