"""Coverage-guided fuzzing of the 9P frame decoder and of a live server connection.

    .venv/bin/python -m bench.fuzz decoder --seconds 60
    .venv/bin/python -m bench.fuzz server  --seconds 60
    .venv/bin/python -m bench.fuzz all     --seconds 60      # each target in turn
    .venv/bin/python -m bench.fuzz repro server bench/fuzz-findings/server-*.bin

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
         connection (a hang is a finding), and the oracle (oracle.py, which
         tests/test_fuzz.py uses too) must hold: no fid and no outstanding
         request left, no error logged, no "internal error", only decodable
         replies that fit the msize in force, no more replies to a tag than
         requests with it; ramfs holds at most MEMORY_BUDGET; then a normal
         client (version, attach, create, write, read back, stat, list,
         remove) must work and its connection be released too.

The modules, one job each:

    inputs    the seeds of both targets, and how an input is cut up
    decoder   the decoder target
    server    the server target
    oracle    what a fuzzed server must do (Finding, check_replies, ...)
    loop      the one trio loop of a run, in a thread of its own
    mutate    the byte mutator and the 9P-aware mutator of server inputs
    runner    runs inputs of a target, records findings
    engines   atheris or the plain loop, in the worker process; repro
    cli       the parent: a worker per target, watched; the command line

The server target has a 9P-aware custom mutator (mutate.mutate_server): it
keeps frames whole and their sizes right, tweaks decoded fields (each as its
kind in styxfs.wire.KINDS makes up a value), inserts, drops, repeats and swaps
requests; libFuzzer's byte mutations the rest of the time.  The decoder target
gets libFuzzer's byte mutations only.

How the server target stays fast: one trio loop lives for the whole run in a
thread of its own, with a MockClock that autojumps (so a connection that is
stuck shows up at once as an expired virtual deadline, and the server's own
timers cost no real time); the fuzzer's thread hands each input to it with
TrioToken.run_sync_soon and waits on a concurrent.futures.Future with a real
time bound (a loop that never gives it back is wedged: a finding, saved, and
the worker exits).  Trio has no public way to seed its scheduler, so the
interleaving of an input's tasks may differ from run to run: `repro` runs each
input several times (--times).

Why not one trio.run per input: it costs only ~0.7 ms, but the persistent
loop also gives the mocked clock and the wedge detection; an input costs
~10-25 ms either way, nearly all of it trio and the server handling some 10-40
requests (so expect ~40-90 server cases/s, ~2-4k decoder cases/s).

Each target runs in a worker subprocess (libFuzzer ends its process when done,
and the parent can watch it): the parent samples the worker's RSS, kills it if
it overruns, parses libFuzzer's cov/ft, and prints cases, cases/s, coverage,
peak RSS (the worker's ru_maxrss), RSS growth (median of the last fifth of the
run over the second fifth; more than --max-growth-mb is a finding) and
findings.  Findings are saved, input and description, in bench/fuzz-findings/
(libFuzzer's own crash-/timeout-/oom- artifacts land there too).  Checks that
fail are recorded and fuzzing goes on (--stop-on-finding to stop at the
first); at most 3 inputs per signature.

Nothing here imports styxfs but the modules that the worker loads after
atheris has started to instrument imports (see cli.load_engines).
"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINDINGS_DIR = os.path.join(ROOT, "bench", "fuzz-findings")
TARGETS = ("decoder", "server")
