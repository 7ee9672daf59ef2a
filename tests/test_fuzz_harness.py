"""A short run of bench.fuzz's two targets (the frame decoder and a live
server connection), and proof that its checks see the bugs they are for.

The long runs are `.venv/bin/python -m bench.fuzz all --seconds 600`.  Here:
the seeds through both targets in this process, then a fixed number of cases
of each target in a subprocess (atheris when installed, else the plain mutation
engine: libFuzzer runs once per process and ends it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from bench.fuzz import ROOT, TARGETS
from bench.fuzz.inputs import seeds_for, server_seeds
from bench.fuzz.oracle import Finding, check_replies
from bench.fuzz.runner import Runner
from styxfs import server as styx_server


@pytest.fixture
def runner(tmp_path):
    made = []

    def make(target):
        r = Runner(target, findings_dir=str(tmp_path / "findings"), timeout=10, quiet=True)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_seeds_pass_and_reach_the_file_code(runner):
    for target in TARGETS:
        r = runner(target)
        for seed in seeds_for(target):
            r(seed)
        assert not r.stats["findings"], r.stats["findings"]
        assert r.stats["cases"] >= 30
    # The server seeds get past the handshake into files, directories and flushes.
    assert {"Rcreate", "Rwrite", "Rread", "Rstat", "Rwstat", "Rremove", "Rflush", "Rversion", "Rerror"} <= set(r.stats["kinds"])


# A fixed number of cases and a fixed seed: the same inputs on every machine
# (a few seconds each).  Findings are kept in the test's tmp_path.
RUNS = {"decoder": 5000, "server": 200}


@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzz_run(target, tmp_path):
    out = tmp_path / "result.json"
    findings = tmp_path / "findings"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fuzz", target, "--runs", str(RUNS[target]),
         "--seconds", "60", "--seed", "1", "--json", str(out), "--findings", str(findings), "--keep-log"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.exists(), proc.stdout + proc.stderr
    (result,) = json.loads(out.read_text())
    assert not result["findings"], f"{proc.stdout}\nfindings saved in {findings}, log {result['log']}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["cases"] >= RUNS[target] * 0.9, result
    if result["engine"] == "atheris":
        assert result["cov"] and result["cov"] > 50, result


# ---- the checks do catch what they are for -------------------------------------------

LIFE = server_seeds()[0]  # walk, create, write, read, stat, wstat, clunk, remove


def _finding(r, data: bytes) -> str:
    with pytest.raises(Finding) as info:
        r.run_one(data)
    return info.value.kind


def test_sees_a_connection_that_does_not_close(runner, monkeypatch):
    receive_loop = styx_server.ServerConnection.receive_loop

    async def deaf_to_eof(self):
        await receive_loop(self)
        await trio.sleep_forever()

    monkeypatch.setattr(styx_server.ServerConnection, "receive_loop", deaf_to_eof)
    assert _finding(runner("server"), LIFE).startswith("hang")


def test_sees_fids_kept_after_close(runner, monkeypatch):
    async def keep_fids(self):
        pass

    monkeypatch.setattr(styx_server.ServerConnection, "clunk_all", keep_fids)
    assert _finding(runner("server"), LIFE) == "fids left after close"


def test_sees_a_handler_that_fails(runner, monkeypatch):
    async def broken(self, m):
        raise RuntimeError("bug")

    monkeypatch.setattr(styx_server.ServerConnection, "do_stat", broken)
    assert _finding(runner("server"), LIFE).startswith("server logged an error (RuntimeError at ")


def test_sees_a_round_trip_failure(runner, monkeypatch):
    from styxfs import wire

    encode = wire.encode
    monkeypatch.setattr(wire, "encode", lambda m: encode(m) + (b"" if not isinstance(m, wire.Tclunk) else b"x"))
    r = runner("decoder")
    assert _finding(r, b"\xff\x00" + encode(wire.Tclunk(1, 2))) == "round trip"


def test_the_oracle_sees_bad_replies():
    from styxfs import errors, wire

    sent = wire.encode(wire.Tversion(wire.NOTAG, 8192, wire.VERSION)) + wire.encode(wire.Tclunk(1, 0))
    version = wire.Rversion(wire.NOTAG, 256, wire.VERSION)
    check_replies([version, wire.Rclunk(1)], sent, 8192)
    for reply, kind in [
        (wire.Tclunk(1, 0), "server sent a request"),
        (wire.Rread(1, bytes(300)), "reply larger than msize"),
        (wire.Rread(1, bytes(240)), "Rread over the iounit"),
        (wire.Rerror(1, str(errors.INTERNAL)), "internal error"),
        (wire.Rclunk(2), "more replies than requests for a tag"),
    ]:
        with pytest.raises(Finding) as info:
            check_replies([version, reply], sent, 8192)
        assert info.value.kind == kind
    with pytest.raises(Finding, match="more replies than requests"):
        check_replies([version, wire.Rclunk(1), wire.Rclunk(1)], sent, 8192)


# ---- what the fuzz found (issue 7), minimal: regression tests now -------------------
#
# Names (and unames) were not bounded, so a stat record could outgrow msize or
# even the u16 of its own size field; and ramfs bounded a file, not the total.


def _known_findings():
    from styxfs import wire
    from styxfs.wire import NOFID, NOTAG

    def stream(*messages):
        return b"\x02" + b"".join(wire.encode(m) for m in messages)  # one frame at a time

    big = (wire.Tversion(NOTAG, 65536, "9P2000"), wire.Tattach(1, 1, NOFID, "u", ""), wire.Twalk(2, 1, 2, ()),
           wire.Tcreate(3, 2, "n" * 65500, 0o644, wire.OREAD))
    return {
        # Rstat of 8220 bytes at msize 8192: do_stat never checks the reply fits.
        "rstat over msize": stream(wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "n" * 8150, 0o644, wire.OREAD), wire.Tstat(3, 1)),
        # Dir.encode's struct.pack("<H") raises struct.error in send(), outside
        # run_request's handler: the whole connection dies ("connection 1 failed").
        "stat over 64 KiB kills the connection": stream(*big, wire.Tstat(4, 2)),
        # The same record in DirHandle.read: every client's listing of / is "internal error".
        "stat over 64 KiB breaks the directory": stream(*big, wire.Tclunk(4, 2)),
        # A stat record larger than any client's iounit: / answers "bad count" to all.
        "stat over iounit hides the directory": stream(wire.Twalk(1, 0, 1, ()), wire.Tcreate(2, 1, "n" * 8150, 0o644, wire.OREAD), wire.Tclunk(3, 1)),
        # ramfs caps a file at 64 MiB but not the total: 5 one-byte writes at 64 MiB - 1
        # make it hold 320 MiB (20 make 1.3 GB, from 1.2 kB of requests).
        "ramfs memory unbounded": stream(*[m for k in range(1, 6) for m in (
            wire.Twalk(1, 0, k, ()), wire.Tcreate(2, k, f"f{k}", 0o644, wire.ORDWR), wire.Twrite(3, k, (1 << 26) - 1, b"x"))]),
    }


@pytest.mark.parametrize("name", sorted(_known_findings()))
def test_known_finding(runner, name):
    runner("server").run_one(_known_findings()[name])
