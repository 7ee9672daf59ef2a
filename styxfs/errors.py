"""The Rerror strings the server and file trees answer with.

Short, human, naming the problem (as Plan 9's own servers do).  A file tree
raises `StyxError(text)`; the server turns it into an Rerror.
"""


class StyxError(Exception):
    """An error to be answered as Rerror; str(error) is the ename."""


# fids and the protocol
FID_IN_USE = "fid in use"
UNKNOWN_FID = "unknown fid"
FID_OPEN = "fid already open"
FID_NOT_OPEN = "fid not open"
WALK_OPEN_FID = "cannot walk from an open fid"
WALK_NOT_DIR = "walk in non-directory"
TOO_MANY_NAMES = "too many names in walk"
DUPLICATE_TAG = "duplicate tag"
NOT_NEGOTIATED = "version not negotiated"
NO_AUTH = "authentication not required"
AUTH_FAILED = "authentication failed"
INTERRUPTED = "interrupted"

# files
NOT_FOUND = "file does not exist"
EXISTS = "file already exists"
PERM = "permission denied"
DIR_WRITE = "is a directory"
READ_ONLY = "file is read-only"
WRITE_ONLY = "file is write-only"
NOT_DIR = "not a directory"
BAD_MODE = "bad open mode"
BAD_OFFSET = "bad offset in directory read"
NOT_EMPTY = "directory not empty"
NO_CREATE = "cannot create here"
NO_REMOVE = "cannot remove this file"
NO_WSTAT = "wstat not allowed"
BAD_NAME = "bad file name"
BAD_COUNT = "bad count"
NAME_TOO_LONG = "file name too long"
UNAME_TOO_LONG = "user name too long"
REPLY_TOO_LARGE = "reply too large for msize"
MAX_NAME = 255  # bytes of a file or user name: a stat record then stays small
