"""Every error the tree answers is in styxfs/llama/errors.py (the node's and
the coordinator's) or in the toolkit's styxfs/errors.py, which it takes whole;
each turns into a sensible errno in plan9port's 9pfuse, never ERANGE."""

from __future__ import annotations

import ast
import errno
import string
from pathlib import Path

import pytest

from styxfs.llama import errors

ROOT = Path(__file__).resolve().parent.parent

# plan9port src/cmd/9pfuse/errstr.c, in its order: the first keyword found
# anywhere in the string (case-insensitive) decides; none gives ERANGE.
NINEPFUSE = [
    ("permitted", errno.EPERM), ("permission", errno.EACCES), ("access", errno.EACCES),
    ("exists", errno.EEXIST), ("exist", errno.ENOENT), ("no such", errno.ENOENT), ("not found", errno.ENOENT),
    ("not implemented", errno.ENOSYS), ("input/output", errno.EIO), ("timeout", errno.ETIMEDOUT),
    ("timed out", errno.ETIMEDOUT), ("i/o", errno.EIO), ("too long", errno.E2BIG), ("interrupt", errno.EINTR),
    ("no such", errno.ENODEV), ("bad file", errno.EBADF), (" fid ", errno.EBADF), ("temporar", errno.EAGAIN),
    ("memory", errno.ENOMEM), ("is a directory", errno.EISDIR), ("directory", errno.ENOTDIR),
    ("argument", errno.EINVAL), ("pipe", errno.EPIPE), ("in use", errno.EBUSY), ("busy", errno.EBUSY),
    ("illegal", errno.EINVAL), ("invalid", errno.EINVAL), ("read-only", errno.EROFS), ("read only", errno.EROFS),
    ("stale ", errno.ESTALE), ("proto", errno.EPROTO), ("entry", errno.ENOENT),
]


def ninepfuse_errno(text: str) -> int:
    lower = text.lower()
    for keyword, number in NINEPFUSE:
        if keyword in lower:
            return number
    return errno.ERANGE


def example(error: errors.Error) -> str:
    """The error as it would be sent, its fields filled with plain words."""
    fields = {name for _, name, _, _ in string.Formatter().parse(error.text) if name}
    return error.format(**{name: "x" for name in fields})


@pytest.mark.parametrize("name", sorted(errors.ALL))
def test_each_error_becomes_its_errno_in_9pfuse(name):
    error = errors.ALL[name]
    got = ninepfuse_errno(example(error))
    assert got != errno.ERANGE, f"{name}: {example(error)!r} is ERANGE to 9pfuse"
    assert got == error.errno, f"{name}: {example(error)!r} is {errno.errorcode[got]} to 9pfuse"
    # The fixed prefix alone decides: no field can change it.
    assert ninepfuse_errno(error.prefix) == error.errno, name


def test_the_table_is_whole():
    assert len(errors.ALL) >= 50
    texts = [e.text for e in errors.ALL.values()]
    assert len(set(texts)) == len(texts)


def calls_with_literal_messages(path: Path) -> list[str]:
    """StyxError("…"), EngineError(f"…"), Rerror(tag, "…") and set_state("error", "…")
    written with a literal message rather than one from the errors module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        args = node.args
        message = None
        if name in ("StyxError", "EngineError") and args:
            message = args[0]
        elif name == "Rerror" and len(args) == 2:
            message = args[1]
        elif name == "set_state" and len(args) == 2:
            message = args[1]
        if isinstance(message, (ast.Constant, ast.JoinedStr)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_error_is_written_outside_the_errors_module():
    literal = []
    for package in ("styxfs", "coordinator"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "errors.py":
                literal += calls_with_literal_messages(path)
    assert not literal, literal
