"""The decoder target: bytes fed to a FrameDecoder in chunks (see __init__)."""

from __future__ import annotations

import struct

from styxfs import wire

from .inputs import chunks
from .oracle import Finding, check


def _decode_stream(pieces: list[bytes], msize: int):
    decoder = wire.FrameDecoder(msize)
    messages = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            messages.extend(decoder)
    except wire.ProtocolError as e:
        return messages, type(e).__name__, None
    return messages, None, decoder.pending


def _check_dirs(data: bytes) -> None:
    try:
        dirs = wire.decode_dirs(data)
    except wire.ProtocolError:
        return
    try:
        again = b"".join(d.encode() for d in dirs)
    except wire.ProtocolError as e:
        raise Finding("decoded stat does not re-encode", repr(e)) from None
    check(again == data, "stat round trip", f"{data.hex()} -> {again.hex()}")


def decoder_input(data: bytes, stats: dict | None = None) -> None:
    if len(data) < 2:
        return
    msize = wire.HEADER_SIZE + 4 * data[0]
    payload = bytes(data[2:])
    messages, error, pending = _decode_stream(chunks(payload, data[1]), msize)
    whole = _decode_stream([payload], msize)
    check((messages, error, pending) == whole, "result depends on chunking",
          f"chunked {messages!r} {error} {pending}, whole {whole!r}")
    at = 0
    for m in messages:
        (size,) = struct.unpack_from("<I", payload, at)
        frame = payload[at : at + size]
        check(size <= msize, "frame over msize accepted", f"{size} > {msize}")
        try:
            again = wire.encode(m)
        except wire.ProtocolError as e:
            raise Finding("decoded message does not re-encode", f"{m!r}: {e}") from None
        check(again == frame, "round trip", f"{frame.hex()} -> {m!r} -> {again.hex()}")
        check(wire.decode(frame) == m, "decode differs from FrameDecoder", repr(m))
        if isinstance(m, (wire.Rread, wire.Twrite)):
            _check_dirs(m.data)
        at += size
        if stats is not None:
            stats["kinds"][m.type_name] = stats["kinds"].get(m.type_name, 0) + 1
    if error is None:
        check(pending == len(payload) - at, "pending miscounted", f"{pending} != {len(payload) - at}")
    _check_dirs(payload)
