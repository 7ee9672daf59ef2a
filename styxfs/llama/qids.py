"""The qid paths of /n/llama, on a node and on a coordinator: the layout in one place.

A path is `(session << 8) | file`, as Inferno's styxservers numbers them:
session 0 holds the root's files, session N its own; the low 8 bits of each
file are its row's in the file table (namespace.py).  Session numbers stay
below 2**23, so that these paths stay below 2**31: the upper half, up to
2**32, is a coordinator's, for the files of the nodes it proxies under
nodes/ (coordinator/proxy.py).  Every path stays below 2**32, so that
9pfuse's inode numbers stay stable."""

FILE_BITS = 8
MAX_SESSION = (1 << 23) - 1
MODEL_FILES = 0x20  # models/NAME/…'s low bits start here (modeldirs.py); sessions' files stay below
PROXIED = (1 << 31, 1 << 32)  # [low, high): the coordinator's paths for proxied files


def qpath(session: int, file: int) -> int:
    return (session << FILE_BITS) | file
