"""Coverage-guided fuzzing of the 9P frame decoder and of a live server connection.

    .venv/bin/python bench/fuzz.py decoder --seconds 60
    .venv/bin/python bench/fuzz.py server  --seconds 60
    .venv/bin/python bench/fuzz.py all     --seconds 60      # each target in turn
    .venv/bin/python bench/fuzz.py repro server bench/fuzz-findings/server-*.bin

Engine: atheris (libFuzzer, coverage of styxfs's bytecode) when it is
installed (`.venv/bin/pip install atheris`), else a plain mutation loop over
the same seeds and checks (`--engine random`, not coverage guided).

Targets (one input = one call of `decoder_input` or `server_input`):

decoder  byte 0 picks a small msize (7..1027), byte 1 a chunking, the rest is
         fed to a FrameDecoder in those chunks.  Only wire.ProtocolError may
         come out; the messages (and the error, and what is left pending) must
         not depend on the chunking; every message must re-encode to exactly
         its frame and fit msize; directory records (decode_dirs) likewise.
server   byte 0 is a mode (chunking, msize 8192 or 256, quiesce before EOF,
         abort instead of EOF, lockstep stream), the rest is what one
         connection sends after a valid Tversion+Tattach, to a fresh ramfs
         server over an in-memory stream.  Then: the server must close the
         connection (a hang is a finding), hold no fid and no outstanding
         request of it, never log an error or answer "internal error", send
         only decodable replies that fit the negotiated msize, one per request
         at most, and leave ramfs holding at most MEMORY_BUDGET; then it must
         serve a normal client (version, attach, create, write, read back,
         stat, list, remove) and release that connection too.

The server target has a 9P-aware custom mutator (mutate_server_input): it
keeps frames whole and their sizes right, tweaks decoded fields, inserts,
drops, repeats and swaps requests; libFuzzer's byte mutations the rest of the
time.  The decoder target gets libFuzzer's byte mutations only.

How the server target stays fast: one trio loop lives for the whole run in a
thread of its own, with a MockClock that autojumps (so a connection that is
stuck shows up at once as an expired virtual deadline, and the server's own
timers cost no real time); the fuzzer's thread hands each input to it with
TrioToken.run_sync_soon and waits on a concurrent.futures.Future with a real
time bound (a loop that never gives it back is wedged: a finding, saved, and
the worker exits).  trio's scheduling shuffle is reseeded per input, so a
finding replays the same way with `repro`.

Why not one trio.run per input: it costs only ~0.7 ms, but the persistent
loop also gives the mocked clock and the wedge detection; an input costs
~10-25 ms either way, nearly all of it trio and the server handling some 10-40
requests (so expect ~40-90 server cases/s, ~2-4k decoder cases/s).

Each target runs in a worker subprocess (libFuzzer ends its process when done,
and the parent can watch it): the parent samples the worker's RSS, kills it if
it overruns, parses libFuzzer's cov/ft, and prints cases, cases/s, coverage,
peak RSS (the worker's ru_maxrss), RSS growth (median of the last fifth of the
run over the second fifth; more than --max-growth-mb is a finding) and findings.  Findings are saved, input and
description, in bench/fuzz-findings/ (libFuzzer's own crash-/timeout-/oom-
artifacts land there too).  Checks that fail are recorded and fuzzing goes on
(--stop-on-finding to stop at the first); at most 3 inputs per signature.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import dataclasses
import hashlib
import json
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
FINDINGS_DIR = os.path.join(ROOT, "bench", "fuzz-findings")
TARGETS = ("decoder", "server")

# Nothing of styxfs is imported at module level: the atheris worker must
# import it inside atheris.instrument_imports() to see its coverage.


class Finding(AssertionError):
    """An input broke a property.  `kind` is its signature."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def _check(condition: bool, kind: str, detail: str = "") -> None:
    if not condition:
        raise Finding(kind, detail)


def _single(group: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, if there is one."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


# ---- seeds -------------------------------------------------------------------


def _typical_messages() -> list:
    from styxfs import wire
    from styxfs.wire import NOFID, NOTAG, Dir, Qid

    qid, dqid = Qid(0, 3, 17), Qid(wire.QTDIR, 1, 0)
    stat = Dir(qid=qid, mode=0o644, atime=1, mtime=2, length=10, name="f", uid="glenda", gid="glenda", muid="glenda")
    return [
        wire.Tversion(NOTAG, 8192, "9P2000"), wire.Rversion(NOTAG, 8192, "9P2000"),
        wire.Tversion(NOTAG, 256, "9P2000.L"), wire.Tauth(1, 5, "glenda", ""), wire.Rauth(1, Qid(wire.QTAUTH, 0, 9)),
        wire.Tattach(2, 0, NOFID, "glenda", ""), wire.Rattach(2, dqid), wire.Rerror(3, "file does not exist"),
        wire.Tflush(4, 3), wire.Rflush(4), wire.Twalk(5, 0, 1, ()), wire.Twalk(6, 0, 2, ("a", "..", "b")),
        wire.Rwalk(6, (dqid, qid)), wire.Topen(7, 1, wire.ORDWR | wire.OTRUNC), wire.Ropen(7, qid, 8168),
        wire.Tcreate(8, 1, "new", 0o644, wire.OWRITE), wire.Tcreate(8, 1, "d", wire.DMDIR | 0o755, wire.OREAD),
        wire.Rcreate(8, qid, 8168), wire.Tread(9, 1, 0, 8192), wire.Rread(9, b"hello"),
        wire.Rread(9, stat.encode() + Dir.nochange(name="x").encode()), wire.Twrite(10, 1, 5, b"world"),
        wire.Rwrite(10, 5), wire.Tclunk(11, 1), wire.Rclunk(11), wire.Tremove(12, 2), wire.Rremove(12),
        wire.Tstat(13, 0), wire.Rstat(13, stat), wire.Twstat(14, 1, Dir.nochange(name="renamed")), wire.Rwstat(14),
    ]


def decoder_seeds() -> list[bytes]:
    from styxfs import wire

    frames = [wire.encode(m) for m in _typical_messages()]
    seeds = [b"\xff\x00" + f for f in frames]  # msize 1027, in one chunk
    seeds += [bytes([0xFF, chunking]) + b"".join(frames[i : i + 4]) for i, chunking in zip(range(0, len(frames), 4), (1, 3, 7, 40, 0, 200, 9, 64))]
    seeds += [b"\x10\x05" + frames[0], b"\xff\x01" + frames[19][:-3], b"\x00\x00" + b"\x07\x00\x00\x00"]
    return seeds


def server_seeds() -> list[bytes]:
    from styxfs import wire
    from styxfs.wire import NOFID, NOTAG, Dir

    e = wire.encode
    file_life = [
        wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "f", 0o644, wire.ORDWR), wire.Twrite(3, 1, 0, b"hello world"),
        wire.Tread(4, 1, 0, 100), wire.Tstat(5, 1), wire.Twstat(6, 1, Dir.nochange(name="g", length=5)),
        wire.Tread(7, 1, 3, 100), wire.Tclunk(8, 1), wire.Twalk(9, 0, 2, ("g",)), wire.Tremove(10, 2),
    ]
    dirs = [
        wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "d", wire.DMDIR | 0o755, wire.OREAD), wire.Twalk(3, 0, 2, ("d",)),
        wire.Tcreate(4, 2, "x", 0o600, wire.OWRITE | wire.ORCLOSE), wire.Twrite(5, 2, 4096, b"z" * 10),
        wire.Twalk(6, 0, 3, ()), wire.Topen(7, 3, wire.OREAD), wire.Tread(8, 3, 0, 8192), wire.Tread(9, 3, 0, 50),
        wire.Tclunk(10, 2), wire.Twalk(11, 0, 4, ("d", "..", "d")), wire.Tremove(12, 4),
    ]
    flushes = [
        wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "f", 0o644, wire.ORDWR), wire.Tread(3, 1, 0, 10), wire.Tflush(4, 3),
        wire.Tflush(5, 3), wire.Tflush(6, 99), wire.Tclunk(7, 1),
    ]
    again = [
        wire.Twalk(1, 0, 1, ()), wire.Topen(2, 1, wire.OREAD), wire.Tversion(NOTAG, 4096, "9P2000"),
        wire.Tattach(3, 5, NOFID, "other", "x"), wire.Tstat(4, 5), wire.Tversion(NOTAG, 100, "9P2000"),
        wire.Tversion(NOTAG, 8192, "styx"), wire.Tstat(5, 5), wire.Tauth(6, 7, "u", ""),
    ]
    odd = [
        wire.Twalk(1, 0, 1, tuple("abcdefghijklmnopq")), wire.Twalk(2, 0, 0, ("..",)), wire.Topen(3, 0, 0xFF),
        wire.Tcreate(4, 0, "a/b", 0o644, 0), wire.Tcreate(5, 0, "..", 0o644, 0), wire.Tread(6, 0, 1 << 63, 1 << 31),
        wire.Twalk(7, 0, 9, ("e",)), wire.Tcreate(8, 9, "", 0, 0), wire.Tremove(9, 0), wire.Tclunk(10, 0),
        wire.Tclunk(11, 0), wire.Tstat(12, NOFID),
    ]
    bad_tags = [wire.Twalk(1, 0, 1, ()), wire.Tstat(1, 0), wire.Tstat(NOTAG, 0), wire.Rclunk(2)]
    streams = [b"".join(e(m) for m in seq) for seq in (file_life, dirs, flushes, again, odd, bad_tags)]
    seeds = []
    for i, s in enumerate(streams):
        for mode in (0x00, 0x02, 0x22, 0x41, 0x80 | 0x02, 0x03 | (i % 4 << 2), 0x12, 0x31):
            seeds.append(bytes([mode]) + s)
    seeds += [b"\x00" + e(wire.Tversion(NOTAG, 8192, "9P2000"))[:5], b"\x02" + struct.pack("<I", 1 << 20),
              b"\x00" + os.urandom(0) + b"\x00" * 7, b"\x22" + e(file_life[0]) + e(file_life[1])[:-2]]
    return seeds


def seeds_for(target: str) -> list[bytes]:
    return decoder_seeds() if target == "decoder" else server_seeds()


# ---- the decoder target -------------------------------------------------------------


def _chunks(payload: bytes, how: int) -> list[bytes]:
    if how == 0:
        return [payload]
    rng = random.Random(how)
    most = 1 + how % 37
    out, at = [], 0
    while at < len(payload):
        n = rng.randint(1, most)
        out.append(payload[at : at + n])
        at += n
    return out


def _decode_stream(chunks: list[bytes], msize: int):
    from styxfs import wire

    decoder = wire.FrameDecoder(msize)
    messages = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            messages.extend(decoder)
    except wire.ProtocolError as e:
        return messages, type(e).__name__, None
    return messages, None, decoder.pending


def _check_dirs(data: bytes) -> None:
    from styxfs import wire

    try:
        dirs = wire.decode_dirs(data)
    except wire.ProtocolError:
        return
    try:
        again = b"".join(d.encode() for d in dirs)
    except wire.ProtocolError as e:
        raise Finding("decoded stat does not re-encode", repr(e)) from None
    _check(again == data, "stat round trip", f"{data.hex()} -> {again.hex()}")


def decoder_input(data: bytes, stats: dict | None = None) -> None:
    from styxfs import wire

    if len(data) < 2:
        return
    msize = wire.HEADER_SIZE + 4 * data[0]
    payload = bytes(data[2:])
    messages, error, pending = _decode_stream(_chunks(payload, data[1]), msize)
    whole = _decode_stream([payload], msize)
    _check((messages, error, pending) == whole, "result depends on chunking",
           f"chunked {messages!r} {error} {pending}, whole {whole!r}")
    at = 0
    for m in messages:
        (size,) = struct.unpack_from("<I", payload, at)
        frame = payload[at : at + size]
        _check(size <= msize, "frame over msize accepted", f"{size} > {msize}")
        try:
            again = wire.encode(m)
        except wire.ProtocolError as e:
            raise Finding("decoded message does not re-encode", f"{m!r}: {e}") from None
        _check(again == frame, "round trip", f"{frame.hex()} -> {m!r} -> {again.hex()}")
        _check(wire.decode(frame) == m, "decode differs from FrameDecoder", repr(m))
        if isinstance(m, (wire.Rread, wire.Twrite)):
            _check_dirs(m.data)
        at += size
        if stats is not None:
            stats["kinds"][m.type_name] = stats["kinds"].get(m.type_name, 0) + 1
    if error is None:
        _check(pending == len(payload) - at, "pending miscounted", f"{pending} != {len(payload) - at}")
    _check_dirs(payload)


# ---- the server target ----------------------------------------------------------------

HANG_SECONDS = 60.0  # virtual (autojumping) seconds for each phase of an input
MEMORY_BUDGET = 256 << 20  # what one connection (one input, at most 70 kB) may make ramfs hold
SERVER_MSIZE = 8192
SMALL_MSIZE = 256  # the least the server takes: frames near msize fit in a fuzz input
# The mode byte of a server input: how the bytes are chunked (and, for random
# chunks, bits 2-3 seed them), the msize of the handshake, quiesce before the
# end, abort (close both ways) rather than EOF, an unbuffered (lockstep) stream.
Q_CHUNK, Q_SMALL, Q_QUIESCE, Q_ABORT, Q_LOCKSTEP = 0x03, 0x10, 0x20, 0x40, 0x80


class _ErrorLog:
    """Records styxfs's log records of level ERROR (handler exceptions)."""

    def __init__(self):
        import logging

        self.records: list = []
        self.handler = logging.Handler(logging.ERROR)
        self.handler.emit = self.records.append
        self.logger = logging.getLogger("styxfs")
        self.saved = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.ERROR)  # protocol-error warnings are the fuzz's daily bread
        self.logger.propagate = False
        self.logger.addHandler(self.handler)

    def uninstall(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]

    def take(self) -> list[str]:
        out = [f"{r.getMessage()}\n{''.join(traceback.format_exception(*r.exc_info)) if r.exc_info else ''}" for r in self.records]
        self.where = _where(self.records[0].exc_info[1]) if self.records and self.records[0].exc_info else ""
        self.records.clear()
        return out

    def check(self) -> None:
        errors = self.take()
        _check(not errors, f"server logged an error ({self.where})", errors[0] if errors else "")


def _where(e: BaseException) -> str:
    """An exception's type and innermost frame, for a finding's signature."""
    e = _single(e)
    kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
    tb = traceback.extract_tb(e.__traceback__)
    return f"{kind} at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else kind


class TrioThread:
    """One trio loop (MockClock, autojump) for the whole run, in a thread."""

    def __init__(self):
        import trio
        import trio.testing

        self._ready = threading.Event()
        self._trio = trio
        self._clock = trio.testing.MockClock(autojump_threshold=0)
        self.thread = threading.Thread(target=lambda: trio.run(self._main, clock=self._clock), name="fuzz-trio", daemon=True)
        self.thread.start()
        self._ready.wait()

    async def _main(self):
        async with self._trio.open_nursery() as nursery:
            self.nursery, self.token = nursery, self._trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._trio.sleep_forever()

    def close(self) -> None:
        if self.thread.is_alive():
            self.token.run_sync_soon(self.nursery.cancel_scope.cancel)
            self.thread.join(5)

    def call(self, afn, *args, timeout: float):
        """afn(*args) on the loop; its result, or TimeoutError after `timeout` real seconds."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        async def job():
            try:
                future.set_result(await afn(*args))
            except Exception as e:
                future.set_exception(e)
            except BaseException as e:
                future.set_exception(e)
                raise

        self.token.run_sync_soon(self.nursery.start_soon, job)
        return future.result(timeout)


def _frames(data: bytes) -> list[bytes]:
    """Split at the frame boundaries the size fields claim; the rest as one piece."""
    out, at = [], 0
    while at < len(data):
        size = struct.unpack_from("<I", data, at)[0] if at + 4 <= len(data) else 0
        if size < 7 or at + size > len(data):
            out.append(data[at:])
            break
        out.append(data[at : at + size])
        at += size
    return out


def _requests_by_tag(sent: bytes) -> dict[int, int]:
    from styxfs import wire

    decoder, tags = wire.FrameDecoder(1 << 32), {}
    decoder.feed(sent)
    try:
        for m in decoder:
            tags[m.tag] = tags.get(m.tag, 0) + 1
    except wire.ProtocolError:
        pass
    return tags


def _ramfs_bytes(server) -> int:
    """The bytes the server's ramfs files hold."""
    total, stack = 0, [server.tree.root]
    while stack:
        entry = stack.pop()
        total += len(getattr(entry, "data", b""))
        stack.extend(getattr(entry, "files", {}).values())
    return total


def _check_replies(replies: list, sent: bytes, msize: int) -> None:
    from styxfs import errors, wire

    limit = msize
    budget = _requests_by_tag(sent)
    for m in replies:
        _check(not wire.is_request(m), "server sent a request", repr(m))
        size = len(wire.encode(m))
        if limit:
            _check(size <= limit, "reply larger than msize", f"{m.type_name} of {size} bytes, msize {limit}")
        if isinstance(m, wire.Rread) and limit:
            _check(len(m.data) <= limit - wire.IOHDRSZ, "Rread over the iounit", f"{len(m.data)} bytes, msize {limit}")
        if isinstance(m, wire.Rerror):
            _check(m.ename != str(errors.INTERNAL), "internal error", repr(m))
        if isinstance(m, wire.Rversion):
            limit = m.msize if m.version == wire.VERSION else 0
        budget[m.tag] = budget.get(m.tag, 0) - 1
        _check(budget[m.tag] >= 0, "more replies than requests for a tag", repr(m))


async def _normal_client(server) -> None:
    """A well-behaved client, one request at a time, on the server the input
    left behind.  The input may have chmod'ed or filled the root, so only what
    no input can refuse is required: version, attach, a new file of its own,
    its data, its removal; a directory listing must decode if it is readable.
    (Raw frames rather than styxfs.client: its Client() costs 2 ms to make.)"""
    import trio
    import trio.testing

    from styxfs import errors, wire
    from styxfs.wire import NOFID, NOTAG

    cs, ss = trio.testing.memory_stream_pair()
    served = trio.Event()
    decoder = wire.FrameDecoder(SERVER_MSIZE)

    async def serve():
        try:
            await server.handle_stream(ss)
        finally:
            served.set()

    async def rpc(request, want=None):
        await cs.send_all(wire.encode(request))
        while (reply := decoder.next_message()) is None:
            data = await cs.receive_some(65536)
            _check(bool(data), "normal client: connection closed", repr(request))
            decoder.feed(data)
        _check(reply.tag == request.tag, "normal client: reply to another tag", f"{request!r} -> {reply!r}")
        if want is not None:
            why = reply.ename if isinstance(reply, wire.Rerror) else reply.type_name
            _check(isinstance(reply, want), f"normal client: {request.type_name} refused ({why})", f"{request!r} -> {reply!r}")
        return reply

    body = bytes(range(256)) * 31
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with trio.move_on_after(HANG_SECONDS) as scope:
            try:
                await rpc(wire.Tversion(NOTAG, SERVER_MSIZE, wire.VERSION), wire.Rversion)
                await rpc(wire.Tattach(1, 100, NOFID, "glenda", ""), wire.Rattach)
                for i in range(8):
                    name = f"after-fuzz-{i}"
                    await rpc(wire.Twalk(1, 100, 101, ()), wire.Rwalk)
                    reply = await rpc(wire.Tcreate(1, 101, name, 0o644, wire.ORDWR))
                    if isinstance(reply, wire.Rcreate):
                        break
                    _check(reply == wire.Rerror(1, str(errors.EXISTS)), "normal client: create refused", repr(reply))
                    await rpc(wire.Tclunk(1, 101), wire.Rclunk)
                written = await rpc(wire.Twrite(1, 101, 0, body))
                if written != wire.Rerror(1, str(errors.FS_FULL)):  # the input may have filled ramfs: a clear, fair refusal
                    _check(written == wire.Rwrite(1, len(body)), "normal client: short write", repr(written))
                    _check(await rpc(wire.Tread(1, 101, 0, 8000)) == wire.Rread(1, body), "normal client: read back differs")
                    _check((await rpc(wire.Tstat(1, 101), wire.Rstat)).stat.length == len(body), "normal client: stat length")
                await rpc(wire.Tclunk(1, 101), wire.Rclunk)
                await rpc(wire.Twalk(1, 100, 102, ()), wire.Rwalk)
                if isinstance(await rpc(wire.Topen(1, 102, wire.OREAD)), wire.Ropen):  # the input may have made the root unreadable
                    names, offset = [], 0
                    while (data := (await rpc(wire.Tread(1, 102, offset, SERVER_MSIZE - wire.IOHDRSZ), wire.Rread)).data):
                        names += [d.name for d in wire.decode_dirs(data)]
                        offset += len(data)
                    _check(name in names, "normal client: new file not listed", repr(names))
                await rpc(wire.Tclunk(1, 102), wire.Rclunk)
                await rpc(wire.Twalk(1, 100, 103, (name,)), wire.Rwalk)
                await rpc(wire.Tremove(1, 103), wire.Rremove)
                _check(server.fid_count() == 1, "normal client: fids left", str(server.fid_count()))
                _check(server.outstanding_count() == 0, "normal client: requests outstanding")
            except wire.ProtocolError as e:
                raise Finding("normal client: bad reply", f"{type(e).__name__}: {e}") from None
            await cs.aclose()
            await served.wait()
        nursery.cancel_scope.cancel()
    _check(not scope.cancelled_caught, "hang: normal client")


async def server_input(data: bytes, stats: dict | None = None) -> None:
    """One input against a fresh ramfs server; raises Finding if it breaks a property."""
    try:
        await _server_input(data, stats)
    except BaseExceptionGroup as group:  # a nursery's: let the one exception out
        e = _single(group)
        if isinstance(e, BaseExceptionGroup):
            raise
        raise e from None


async def _server_input(data: bytes, stats: dict | None) -> None:
    import trio
    import trio.testing

    from styxfs import ramfs, wire
    from styxfs.wire import NOFID, NOTAG

    try:  # the same interleaving each time the same input runs (trio internals)
        trio._core._run._r.seed(hashlib.sha1(data).digest())
    except AttributeError:
        pass
    ErrorLog.take()  # what an earlier input that failed early left
    mode, payload = (data[0], bytes(data[1:])) if data else (0, b"")
    msize = SMALL_MSIZE if mode & Q_SMALL else SERVER_MSIZE
    handshake = wire.encode(wire.Tversion(NOTAG, msize, wire.VERSION)) + wire.encode(wire.Tattach(0, 0, NOFID, "fuzz", ""))
    server = ramfs.make_server()
    make_pair = trio.testing.lockstep_stream_pair if mode & Q_LOCKSTEP else trio.testing.memory_stream_pair
    cs, ss = make_pair()
    replies: list = []
    bad_output: list = []
    served, drained = trio.Event(), trio.Event()

    async def serve():
        try:
            await server.handle_stream(ss)
        finally:
            served.set()

    async def read_replies():
        decoder = wire.FrameDecoder(server.max_msize)
        try:
            while chunk := await cs.receive_some(65536):
                decoder.feed(chunk)
                replies.extend(decoder)
        except wire.ProtocolError as e:
            bad_output.append(e)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            drained.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(read_replies)
        with trio.move_on_after(HANG_SECONDS) as scope:
            await cs.send_all(handshake)
            await trio.testing.wait_all_tasks_blocked()
            _check(replies[:1] == [wire.Rversion(NOTAG, msize, wire.VERSION)]
                   and len(replies) == 2 and isinstance(replies[1], wire.Rattach), "handshake failed", repr(replies))
            (conn,) = server.connections
            if mode & Q_CHUNK == 1:  # (small pieces of the first 4 KiB only: a piece costs a pass of the loop)
                pieces = _chunks(payload[:4096], (mode >> 2 & 3) + 1) + [payload[4096:]]
            elif mode & Q_CHUNK == 2:
                pieces = _frames(payload)
            elif mode & Q_CHUNK == 3:
                pieces = [payload[i : i + 1] for i in range(min(len(payload), 64))] + [payload[64:]]
            else:
                pieces = [payload]
            try:
                for piece in pieces:
                    if piece:
                        await cs.send_all(piece)
                    if mode & Q_CHUNK == 2:
                        await trio.testing.wait_all_tasks_blocked()  # a lockstep client
                    else:
                        await trio.sleep(0)
                if mode & Q_QUIESCE:
                    await trio.testing.wait_all_tasks_blocked()
                if mode & Q_ABORT:
                    await cs.aclose()
                else:
                    await cs.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await cs.aclose()  # the server hung up on a protocol error
            await served.wait()
            await drained.wait()
        nursery.cancel_scope.cancel()
    ErrorLog.check()
    _check(not scope.cancelled_caught, "hang: connection not closed after the client's EOF",
           f"served={served.is_set()} fids={sorted(conn.fids)} outstanding={sorted(conn.outstanding)}")
    _check(not bad_output, "server sent undecodable bytes", repr(bad_output[:1]))
    _check(not conn.fids, "fids left after close", repr(sorted(conn.fids)))
    _check(not conn.outstanding, "requests outstanding after close", repr(sorted(conn.outstanding)))
    _check(not server.connections and server.fid_count() == 0 and server.outstanding_count() == 0,
           "server holds a closed connection")
    _check_replies(replies, handshake + payload, msize)
    held = _ramfs_bytes(server)
    _check(held <= MEMORY_BUDGET, "one connection made ramfs hold too much memory",
           f"{held >> 20} MiB in files from a {len(data)}-byte input")
    if stats is not None:
        for m in replies[2:]:
            stats["kinds"][m.type_name] = stats["kinds"].get(m.type_name, 0) + 1
    await _normal_client(server)
    ErrorLog.check()
    _check(not server.connections and server.fid_count() == 0 and server.outstanding_count() == 0,
           "server holds the normal client's connection")


ErrorLog: _ErrorLog  # set by Runner for the server target


# ---- a 9P-aware mutator for the server target -------------------------------------------
#
# Byte mutations of a stream of frames mostly break a size field, and the
# server hangs up at once.  Half the time this mutator works on whole frames
# instead: mutate one frame's body and fix its size, change one field of a
# decoded request (names, fids, tags, offsets, counts, modes, lengths) and
# re-encode it, insert a new request or a little coherent scenario (create,
# use, list), or drop, repeat or swap frames.

NAMES = ["", ".", "..", "a", "b", "f", "d", "a/b", "\u00e9t\u00e9", "x" * 200, "after-fuzz-0"]
INTS = [0, 1, 2, 3, 5, 7, 0x10, 0x40, 0x80, 0xFF, 0x100, 0xFFFF, 1 << 16, 1 << 20, 8168, 8192,
        (1 << 26) - 1, 1 << 26, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63), (1 << 64) - 1]
_INT_MAX = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF, "u64": (1 << 64) - 1}


def _tweak_value(rng: random.Random, kind: str, value, tags: list[int]):
    from styxfs import wire

    if kind in _INT_MAX:
        pick = rng.randrange(5)
        if pick == 0 and tags:
            value = rng.choice(tags)
        elif pick == 1:
            value = rng.choice(INTS)
        elif pick == 2:
            value = value + rng.choice((-1, 1))
        elif pick == 3:
            value = rng.randrange(6)
        else:
            value = rng.getrandbits(int(kind[1:]))
        return value & _INT_MAX[kind]
    if kind == "s":  # long ones: near msize 256, 8192, and past what a stat record holds
        return rng.choice(NAMES + [value * 2, value + "x" * rng.randint(1, 300), "n" * rng.choice((230, 8150, 65400))])
    if kind == "strings":
        names = list(value)
        if names and rng.random() < 0.3:
            del names[rng.randrange(len(names))]
        else:
            names.insert(rng.randint(0, len(names)), rng.choice(NAMES))
        return tuple(names[: rng.choice((16, 17, 40))])
    if kind == "data":
        return rng.choice([b"", value * 2, rng.randbytes(rng.choice((1, 100, 240, 1000, 4000))), value[: len(value) // 2]])
    if kind == "stat":
        field = rng.choice(["name", "length", "mode", "mtime", "atime", "uid", "gid", "type"])
        if field in ("name", "uid", "gid"):
            return wire.Dir.nochange(**{field: rng.choice(NAMES)})
        return wire.Dir.nochange(**{field: rng.choice(INTS) & 0xFFFFFFFF})
    return value


def _new_request(rng: random.Random, tags: list[int]):
    from styxfs import wire

    m = rng.choice([m for m in _typical_messages() if wire.is_request(m)])
    tag = rng.choice(tags) if tags and rng.random() < 0.3 else rng.randrange(1, 64)
    return dataclasses.replace(m, tag=tag)


def _scenario(rng: random.Random) -> list[bytes]:
    """A coherent little sequence: (re-version and attach,) clone the root, create
    a file or directory (often with a long name), use it, maybe list the root."""
    from styxfs import wire
    from styxfs.wire import NOFID, NOTAG, Dir

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


def mutate_server_input(data: bytes, max_size: int, seed: int, byte_mutate=None) -> bytes:
    """One mutation of a server input.  `byte_mutate(data, max_size)` is
    libFuzzer's own mutator (atheris.Mutate), or a plain one."""
    from styxfs import wire

    rng = random.Random(seed)
    byte_mutate = byte_mutate or (lambda d, n: _mutate(rng, d, [d], n))
    if len(data) < 1 or rng.random() < 0.4:
        return byte_mutate(data, max_size)
    mode, frames = data[0], _frames(data[1:])
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
        name, kind = rng.choice([(f.name, f.metadata["kind"]) for f in dataclasses.fields(m)])
        try:
            frames[i] = wire.encode(dataclasses.replace(m, **{name: _tweak_value(rng, kind, getattr(m, name), tags)}))
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


# ---- running inputs, recording findings ---------------------------------------------------


class Runner:
    """Runs inputs of one target, records findings and keeps counts."""

    def __init__(self, target: str, findings_dir: str = FINDINGS_DIR, timeout: float = 10.0,
                 stop_on_finding: bool = False, quiet: bool = False):
        self.target, self.findings_dir, self.timeout = target, findings_dir, timeout
        self.stop_on_finding, self.quiet = stop_on_finding, quiet
        self.stats = {"target": target, "cases": 0, "findings": {}, "kinds": {}, "started": time.time()}
        if target == "server":
            global ErrorLog
            ErrorLog = _ErrorLog()
            self.loop = TrioThread()

    def close(self) -> None:
        """Stop the loop and give styxfs's logging back (for use in a test process)."""
        if self.target == "server":
            self.loop.close()
            ErrorLog.uninstall()

    def run_one(self, data: bytes) -> None:
        """Raises what the input raised (Finding or any other exception)."""
        if self.target == "decoder":
            decoder_input(data, self.stats)
        else:
            try:
                self.loop.call(server_input, data, self.stats, timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                raise Finding("wedged: the trio loop did not finish the input", f"{self.timeout} s real time") from None

    def __call__(self, data: bytes) -> None:
        self.stats["cases"] += 1
        try:
            self.run_one(data)
        except Exception as e:
            wedged = isinstance(e, Finding) and e.kind.startswith("wedged")
            self.record(data, e)
            if wedged:
                self.write_stats()
                os._exit(3)  # the loop is gone: nothing more can run
            if self.stop_on_finding:
                raise

    def record(self, data: bytes, e: Exception) -> None:
        signature = e.kind if isinstance(e, Finding) else _where(e)
        entry = self.stats["findings"].setdefault(signature, {"count": 0, "files": []})
        entry["count"] += 1
        name = f"{self.target}-{hashlib.sha1(data).hexdigest()[:16]}"
        path = os.path.join(self.findings_dir, name + ".bin")
        if len(entry["files"]) >= 3 or path in entry["files"]:
            return
        os.makedirs(self.findings_dir, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        text = "".join(traceback.format_exception(e))
        with open(os.path.join(self.findings_dir, name + ".txt"), "w") as f:
            f.write(f"target: {self.target}\nsignature: {signature}\ninput: {data!r}\n\n{text}")
        entry["files"].append(path)
        if not self.quiet:
            print(f"\n*** finding ({signature}) saved to {path}\n{text}", file=sys.stderr, flush=True)

    def write_stats(self, path: str | None = None) -> None:
        path = path or getattr(self, "stats_path", None)
        if path:
            self.stats["elapsed"] = time.time() - self.stats["started"]
            with open(path + ".tmp", "w") as f:
                json.dump(self.stats, f)
            os.replace(path + ".tmp", path)


# ---- engines (run inside the worker process) ---------------------------------------------


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int = 4096) -> bytes:
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


def run_random(runner: Runner, seconds: float, seed: int, runs: int = 0, max_len: int = 4096) -> None:
    rng = random.Random(seed)
    corpus = seeds_for(runner.target)
    deadline = time.monotonic() + seconds
    for s in corpus:
        runner(s)
    n, last_stats = 0, time.monotonic()
    while time.monotonic() < deadline and (not runs or n < runs):
        parent = rng.choice(corpus)
        if runner.target == "server":
            runner(mutate_server_input(parent, max_len, rng.getrandbits(32)))
        else:
            runner(_mutate(rng, parent, corpus, max_len))
        n += 1
        if time.monotonic() - last_stats > 2:
            runner.write_stats()
            last_stats = time.monotonic()
    runner.write_stats()


def run_atheris(runner: Runner, args, corpus_dir: str) -> None:
    import atheris

    last = [time.monotonic()]

    def one(data: bytes) -> None:
        runner(data)
        if time.monotonic() - last[0] > 2:
            runner.write_stats()
            last[0] = time.monotonic()

    # libFuzzer ends the process with exit(): write the stats from a C atexit handler.
    at_exit = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: runner.write_stats())
    runner._at_exit = at_exit  # keep it alive
    ctypes.CDLL(None).__cxa_atexit(at_exit, None, None)
    os.makedirs(runner.findings_dir, exist_ok=True)
    argv = [sys.argv[0], corpus_dir, f"-max_total_time={int(args.seconds)}", "-print_final_stats=1",
            f"-timeout={int(args.timeout) + 5}", f"-rss_limit_mb={args.rss_limit_mb}", f"-max_len={args.max_len}",
            f"-artifact_prefix={runner.findings_dir}/{runner.target}-", f"-seed={args.seed}"]
    if args.runs:
        argv.append(f"-runs={args.runs}")
    if runner.target == "server":
        argv.append("-len_control=0")  # the mutator makes long frames on purpose
    if runner.target == "server":
        atheris.Setup(argv, one, custom_mutator=lambda data, max_size, seed: mutate_server_input(data, max_size, seed, atheris.Mutate))
    else:
        atheris.Setup(argv, one)
    atheris.Fuzz()


def worker(args) -> None:
    engine = args.engine
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["styxfs"]):
            import styxfs.client  # noqa: F401
            import styxfs.ramfs  # noqa: F401
            import styxfs.server  # noqa: F401
            import styxfs.tree  # noqa: F401
            import styxfs.wire  # noqa: F401
    runner = Runner(args.target, args.findings, args.timeout, args.stop_on_finding)
    runner.stats_path = args.stats
    runner.stats["engine"] = engine
    if engine == "atheris":
        corpus_dir = args.corpus or tempfile.mkdtemp(prefix=f"styxfs-fuzz-{args.target}-")
        os.makedirs(corpus_dir, exist_ok=True)
        for i, seed in enumerate(seeds_for(args.target)):
            path = os.path.join(corpus_dir, f"seed-{i:03d}")
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(seed)
        run_atheris(runner, args, corpus_dir)
    else:
        run_random(runner, args.seconds, args.seed, args.runs, args.max_len)


# ---- the parent: run a worker, watch it, report --------------------------------------------


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_target(target: str, args) -> dict:
    engine = args.engine if args.engine != "auto" else ("atheris" if have_atheris() else "random")
    fd, stats_path = tempfile.mkstemp(prefix=f"styxfs-fuzz-{target}-", suffix=".json")
    os.close(fd)
    os.unlink(stats_path)
    cmd = [sys.executable, os.path.abspath(__file__), "_worker", target, "--engine", engine,
           "--seconds", str(args.seconds), "--stats", stats_path, "--findings", args.findings,
           "--timeout", str(args.timeout), "--rss-limit-mb", str(args.rss_limit_mb),
           "--max-len", str(args.max_len or (70000 if target == "server" else 4096)), "--seed", str(args.seed), "--runs", str(args.runs)]
    if args.corpus:
        cmd += ["--corpus", os.path.join(args.corpus, target)]
    if args.stop_on_finding:
        cmd.append("--stop-on-finding")
    log_path = stats_path[:-5] + ".log"
    before = set(os.listdir(args.findings)) if os.path.isdir(args.findings) else set()
    start = time.monotonic()
    samples: list[tuple[float, float]] = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        killed, limit = False, (args.seconds if not args.runs else 3600) + args.timeout + 60
        while True:  # wait4 rather than poll(): the child's own peak RSS comes with it
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.25)
            rss = _rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.monotonic() - start, rss))
            if not killed and time.monotonic() - start > limit:
                proc.kill()
                killed = True
    elapsed = time.monotonic() - start
    with open(log_path, errors="replace") as f:
        log_text = f.read()
    try:
        with open(stats_path) as f:
            stats = json.load(f)
        os.unlink(stats_path)
    except (OSError, ValueError):
        stats = {"cases": 0, "findings": {}, "kinds": {}}
    findings = dict(stats.get("findings", {}))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log_text)
    corp = re.findall(r"corp: (\d+)/", log_text)
    done = re.search(r"stat::number_of_executed_units: (\d+)", log_text)
    cases = int(done.group(1)) if done else stats.get("cases", 0)
    run_seconds = stats.get("elapsed") or elapsed
    # libFuzzer's own verdicts: timeout, out of memory, a crash it caught.
    for kind, pattern in (("libFuzzer timeout", r"ERROR: libFuzzer: timeout"), ("libFuzzer out of memory", r"ERROR: libFuzzer: out-of-memory"),
                          ("libFuzzer: deadly signal", r"ERROR: libFuzzer: deadly signal"), ("uncaught Python exception", r"Uncaught Python exception")):
        if re.search(pattern, log_text):
            findings.setdefault(kind, {"count": 1, "files": []})
    if killed:
        findings.setdefault("worker overran its time and was killed", {"count": 1, "files": []})
    if proc.returncode not in (0,) and not findings:
        findings["worker exited with status %d" % proc.returncode] = {"count": 1, "files": []}
    if os.path.isdir(args.findings):
        for name in sorted(set(os.listdir(args.findings)) - before):
            if re.match(rf"{target}-(crash|timeout|oom|leak|slow-unit)-", name):
                findings.setdefault(f"libFuzzer artifact {name.split('-')[1]}", {"count": 1, "files": []})["files"].append(os.path.join(args.findings, name))
    # Memory: the peak, and whether the last fifth of the run sits well above the
    # second fifth (medians: one input may allocate much and free it, a leak stays).
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    growth = 0.0
    if len(samples) >= 10:
        total = samples[-1][0]
        early = [r for t, r in samples if total * 0.2 <= t < total * 0.4]
        late = [r for t, r in samples if t >= total * 0.8]
        if early and late:
            growth = statistics.median(late) - statistics.median(early)
    if growth > args.max_growth_mb:
        findings.setdefault("memory grows", {"count": 1, "files": [], "detail": f"{growth:.0f} MB over the run"})
    if peak > args.rss_limit_mb:
        findings.setdefault("memory over the limit", {"count": 1, "files": [], "detail": f"peak {peak:.0f} MB"})
    result = {
        "target": target, "engine": engine, "cases": cases, "seconds": round(run_seconds, 1),
        "cases_per_second": round(cases / run_seconds, 1) if run_seconds else 0.0,
        "cov": int(cov[-1][0]) if cov else None, "ft": int(cov[-1][1]) if cov else None,
        "corpus": int(corp[-1]) if corp else None, "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(growth, 1),
        "reply_kinds" if target == "server" else "message_kinds": stats.get("kinds", {}),
        "findings": findings, "returncode": proc.returncode, "log": log_path,
    }
    if not findings and proc.returncode == 0 and not args.keep_log:
        os.unlink(log_path)
        result["log"] = None
    return result


def print_result(r: dict) -> None:
    cov = f"cov {r['cov']} ft {r['ft']} corpus {r['corpus']}" if r["cov"] is not None else "coverage n/a (not atheris)"
    print(f"{r['target']:8} {r['engine']:8} cases {r['cases']:>9}  {r['cases_per_second']:>9.1f}/s  {cov}  "
          f"peak RSS {r['peak_rss_mb']:.0f} MB (growth {r['rss_growth_mb']:+.0f} MB)  findings {len(r['findings'])}")
    kinds = r.get("reply_kinds") or r.get("message_kinds") or {}
    if kinds:
        print("         seen: " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    for signature, entry in r["findings"].items():
        files = " ".join(entry.get("files", [])) or entry.get("detail", "")
        print(f"   FINDING {signature} (x{entry['count']}) {files}")
    if r["log"]:
        print(f"         worker log: {r['log']}")


def repro(target: str, paths: list[str]) -> int:
    runner = Runner(target, findings_dir=tempfile.mkdtemp(prefix="styxfs-repro-"), quiet=True)
    bad = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            runner.run_one(data)
            print(f"{path}: ok")
        except Exception as e:
            bad += 1
            print(f"{path}: {''.join(traceback.format_exception(e))}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=TARGETS + ("all", "repro", "_worker"))
    p.add_argument("rest", nargs="*", help="repro: TARGET FILE...; _worker: TARGET")
    p.add_argument("--seconds", type=float, default=60, help="per target")
    p.add_argument("--runs", type=int, default=0, help="stop after this many inputs (0: no limit)")
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--seed", type=int, default=0, help="libFuzzer's -seed / the random engine's (0: libFuzzer picks)")
    p.add_argument("--corpus", help="keep the corpus in DIR/<target> (default: a fresh temporary one, from the seeds)")
    p.add_argument("--findings", default=FINDINGS_DIR)
    p.add_argument("--timeout", type=float, default=10.0, help="real seconds one input may take")
    p.add_argument("--rss-limit-mb", type=int, default=1024)
    p.add_argument("--max-growth-mb", type=float, default=64.0)
    p.add_argument("--max-len", type=int, help="longest input (default: decoder 4096, server 70000, room for a 64 KiB frame)")
    p.add_argument("--stop-on-finding", action="store_true")
    p.add_argument("--keep-log", action="store_true")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--stats", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.target == "_worker":
        args.target = args.rest[0]
        worker(args)
        return 0
    if args.target == "repro":
        return repro(args.rest[0], args.rest[1:])
    results = [run_target(t, args) for t in (TARGETS if args.target == "all" else (args.target,))]
    for r in results:
        print_result(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["findings"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
