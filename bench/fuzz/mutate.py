"""Mutators: bytes, and a 9P-aware one for the server target.

Byte mutations of a stream of frames mostly break a size field, and the
server hangs up at once.  Often mutate_server works on whole frames instead:
mutate one frame's body and fix its size, change one field of a decoded
request (a value made up by the field's kind, styxfs.wire.KINDS, from the
fuzzer's favourite names and numbers and the input's tags) and re-encode it,
insert a new request or a little coherent scenario (create, use, list), or
drop, repeat or swap frames.
"""

from __future__ import annotations

import dataclasses
import random
import struct

from styxfs import wire
from styxfs.wire import NOFID, NOTAG, Dir

from .inputs import frames as split_frames
from .inputs import typical_messages

NAMES = ["", ".", "..", "a", "b", "f", "d", "a/b", "\u00e9t\u00e9", "x" * 200, "after-fuzz-0"]
INTS = [0, 1, 2, 3, 5, 7, 0x10, 0x40, 0x80, 0xFF, 0x100, 0xFFFF, 1 << 16, 1 << 20, 8168, 8192,
        (1 << 26) - 1, 1 << 26, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63), (1 << 64) - 1]


def mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int = 4096) -> bytes:
    """A few byte mutations: flips, inserts, deletions, sizes, splices."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4))):
        how = rng.randrange(8)
        i = rng.randrange(len(b) + 1)
        if how == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif how == 1:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif how == 2:
            del b[i : i + rng.randint(1, 16)]
        elif how == 3 and len(b) >= 4:
            at = rng.randrange(len(b) - 3)
            b[at : at + 4] = struct.pack("<I", rng.choice([0, 1, 7, 255, 256, 1 << 16, 1 << 31, (1 << 32) - 1, rng.getrandbits(32)]))
        elif how == 4:
            other = rng.choice(corpus)
            j = rng.randrange(len(other) + 1)
            b[i:] = other[j:]
        elif how == 5 and b:
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 64)]
        elif how == 6 and b:
            b[min(i, len(b) - 1)] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        else:
            del b[i:]
    return bytes(b[:max_len])


def _tweak(rng: random.Random, m: wire.Message, tags: list[int]) -> wire.Message:
    """The message with one field made up anew by its kind."""
    name, kind = rng.choice(wire.fields(m))
    ints = tags if tags and rng.random() < 0.25 else INTS
    return dataclasses.replace(m, **{name: kind.random(rng, getattr(m, name), ints=ints, names=NAMES)})


def _new_request(rng: random.Random, tags: list[int]) -> wire.Message:
    m = rng.choice([m for m in typical_messages() if wire.is_request(m)])
    tag = rng.choice(tags) if tags and rng.random() < 0.3 else rng.randrange(1, 64)
    return dataclasses.replace(m, tag=tag)


def _scenario(rng: random.Random) -> list[bytes]:
    """A coherent little sequence: (re-version and attach,) clone the root, create
    a file or directory (often with a long name), use it, maybe list the root."""
    k, t = rng.randint(1, 5), rng.randrange(1, 200)
    long_name = "n" * rng.choice((230, 8150, 65400))
    name = rng.choice(NAMES[:8] + [long_name] * 3)
    out = []
    if rng.random() < 0.3:
        out += [wire.Tversion(NOTAG, rng.choice((256, 8192, 65536)), wire.VERSION),
                wire.Tattach(t, 0, NOFID, rng.choice(["fuzz", "u" * rng.choice((200, 8000, 60000))]), "")]
    out += [wire.Twalk(t + 1, 0, k, ()),
            wire.Tcreate(t + 2, k, name, rng.choice((0o644, 0o600, 0o444, wire.DMDIR | 0o755, 0)), rng.choice((0, 1, 2, 0x12, 0x40, 0x42)))]
    for i in range(rng.randint(1, 4)):
        tag = t + 3 + i
        out.append(rng.choice([
            wire.Tstat(tag, k), wire.Tclunk(tag, k), wire.Tremove(tag, k),
            wire.Twrite(tag, k, rng.choice(INTS), rng.randbytes(rng.choice((1, 100, 1000)))),
            wire.Tread(tag, k, rng.choice((0, 1, 100)), rng.choice((0, 1, 100, 8192))),
            wire.Twstat(tag, k, Dir.nochange(name=rng.choice(NAMES[:8] + [long_name]))),
            wire.Twstat(tag, k, Dir.nochange(length=rng.choice(INTS))),
        ]))
    if rng.random() < 0.5:
        out += [wire.Twalk(t + 8, 0, 9, ()), wire.Topen(t + 9, 9, 0), wire.Tread(t + 10, 9, 0, rng.choice((100, 8192, 65536))), wire.Tclunk(t + 11, 9)]
    return [wire.encode(m) for m in out]


def mutate_server(data: bytes, max_size: int, seed: int, byte_mutate=None) -> bytes:
    """One mutation of a server input.  `byte_mutate(data, max_size)` is
    libFuzzer's own mutator (atheris.Mutate), or mutate_bytes."""
    rng = random.Random(seed)
    byte_mutate = byte_mutate or (lambda d, n: mutate_bytes(rng, d, [d], n))
    if len(data) < 1 or rng.random() < 0.4:
        return byte_mutate(data, max_size)
    mode, frames = data[0], split_frames(data[1:])
    op = rng.randrange(8)
    if op == 0:
        mode ^= 1 << rng.randrange(8)
    elif op == 1 and frames:  # a byte mutation inside one frame, its size fixed
        i = rng.randrange(len(frames))
        body = byte_mutate(frames[i][4:], max(8, max_size // 2))
        frames[i] = struct.pack("<I", len(body) + 4) + body
    elif op in (2, 3) and frames:  # one field of one request
        i = rng.randrange(len(frames))
        try:
            m = wire.decode(frames[i])
        except wire.ProtocolError:
            return byte_mutate(data, max_size)
        tags = [struct.unpack_from("<H", f, 5)[0] for f in frames if len(f) >= 7][:32]
        try:
            frames[i] = wire.encode(_tweak(rng, m, tags))
        except wire.ProtocolError:
            pass
    elif op == 4:  # a new request somewhere
        frames.insert(rng.randint(0, len(frames)), wire.encode(_new_request(rng, [])))
    elif op == 5 and frames:
        i = rng.randrange(len(frames))
        if rng.random() < 0.5:
            del frames[i]
        else:
            frames.insert(rng.randint(0, len(frames)), frames[i])
    elif op == 6 and len(frames) >= 2:
        i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
        frames[i], frames[j] = frames[j], frames[i]
    elif op == 7:
        i = rng.randint(0, len(frames))
        frames[i:i] = _scenario(rng)
    out = bytes([mode]) + b"".join(frames)
    return out[:max_size]
