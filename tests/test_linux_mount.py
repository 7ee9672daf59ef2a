"""A node mounted on Linux through plan9port's 9pfuse, used from a shell.

plan9port is in no package registry: build it from its public sources and
put `9pfuse` on PATH (or set PLAN9 to the tree). These tests skip, saying
so, without 9pfuse, /dev/fuse or fusermount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from styxfs import client

from .support import PROMPT, ask, greedy, prompt_tokens, status_fields


def find_9pfuse() -> str | None:
    found = shutil.which("9pfuse")
    if found:
        return found
    plan9 = os.environ.get("PLAN9")
    candidate = Path(plan9) / "bin" / "9pfuse" if plan9 else None
    return str(candidate) if candidate and os.access(candidate, os.X_OK) else None


NINEPFUSE = find_9pfuse()
MISSING = ("9pfuse not found: build plan9port and put 9pfuse on PATH (or set PLAN9)" if NINEPFUSE is None
           else "/dev/fuse is missing" if not os.path.exists("/dev/fuse")
           else "fusermount not found (Debian: apt-get install fuse3)" if not shutil.which("fusermount")
           else None)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def shell(script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout)


async def sh(script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """A bash script, run in a thread: its file operations reach our server through FUSE."""
    return await trio.to_thread.run_sync(shell, script, timeout)


@pytest.fixture
async def mounted(start_node, tmp_path):
    """(mount point, address, node): a node mounted with 9pfuse."""
    address, node = await start_node(ctx=12288)  # room for a prompt of 10 KB
    mnt = tmp_path / "llama"
    mnt.mkdir()
    log = tmp_path / "9pfuse.log"
    with open(log, "w") as out:  # not a pipe: 9pfuse goes on in the background holding it
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run([NINEPFUSE, address, str(mnt)], stdout=out, stderr=out, timeout=30))
    # Not from this thread: a look at the mount waits on the server, which this thread runs.
    assert done.returncode == 0 and await trio.to_thread.run_sync(os.path.ismount, mnt), log.read_text()
    try:
        yield mnt, address, node
    finally:
        await trio.to_thread.run_sync(
            lambda: subprocess.run(["fusermount", "-u", "-z", str(mnt)], capture_output=True, timeout=30))


async def expected(address: str, prompt: str) -> bytes:
    async with client.connect(address) as c:
        return await ask(c, "data", prompt)


async def test_echo_to_new_data_then_cat_reply_twenty_times(mounted):
    mnt, address, node = mounted
    async with client.connect(address) as c:
        await greedy(c, maxtokens=8)
    for i in range(20):
        prompt = f"{PROMPT} {i}"
        want = await expected(address, prompt + "\n")  # echo adds the newline
        created = node.tree.table.created
        done = await sh(f"echo '{prompt}' > {mnt}/new/data && cat {mnt}/reply")
        assert done.returncode == 0, done.stderr
        assert done.stdout.encode() == want and want, (i, done.stdout)
        assert node.tree.table.created == created + 1, "the pair made more than one session"


async def test_sessions_through_the_mount(mounted):
    mnt, address, node = mounted
    async with client.connect(address) as c:
        await greedy(c, maxtokens=12)
    done = await sh(f"cat {mnt}/clone")
    assert done.returncode == 0, done.stderr
    n = done.stdout.strip()
    assert n.isdigit()
    done = await sh(f"echo 'temperature 0' > {mnt}/{n}/ctl && echo 'maxtokens 6' > {mnt}/{n}/ctl"
                    f" && cat {mnt}/{n}/params")
    assert done.returncode == 0, done.stderr
    assert "temperature 0.0\n" in done.stdout and "maxtokens 6\n" in done.stdout
    replies = []
    for turn in (PROMPT, " and then"):
        done = await sh(f"echo '{turn}' > {mnt}/{n}/data && cat {mnt}/{n}/reply && echo '' && cat {mnt}/{n}/status")
        assert done.returncode == 0, done.stderr
        text, status = done.stdout.split("\n", 1)
        replies.append(text)
        fields = status_fields(status.encode())
        assert fields["state"] == "done" and fields["tokens_out"] == "6", status
    assert replies[0] and replies[1] and replies[0] != replies[1]
    done = await sh(f"ls -l {mnt} && ls -l {mnt}/{n}")
    assert done.returncode == 0, done.stderr
    for name in ("clone", "ctl", "data", "metrics", "model", "new", "reply", n, "params", "status"):
        assert name in done.stdout.split(), (name, done.stdout)
    done = await sh(f"cat {mnt}/99999/status")
    assert done.returncode != 0 and "No such file or directory" in done.stderr, done.stderr
    done = await sh(f"cat {mnt}/metrics")
    assert done.returncode == 0 and "llamafs_requests_total" in done.stdout


async def test_a_long_prompt_in_pieces_of_4096_bytes(mounted, tmp_path):
    mnt, address, node = mounted
    prompt = ("the king was in the water and " * 400)[:10000]  # three writes of 4096 bytes
    async with client.connect(address) as c:
        await greedy(c, maxtokens=6)
        n = (await c.read_file("clone")).decode().strip()
        await c.write_file(f"{n}/data", prompt)
        await c.read_file(f"{n}/reply")
        want = status_fields(await c.read_file(f"{n}/status"))
    source = tmp_path / "prompt.txt"
    source.write_text(prompt)
    # Compared by its tokens, not by the reply: a random model's argmax flips on
    # float sums that differ with where a turn's KV cells lie.
    done = await sh(f"n=$(cat {mnt}/clone) && dd if={source} of={mnt}/$n/data bs=4096 status=none && "
                    f"cat {mnt}/$n/reply > /dev/null && cat {mnt}/$n/status")
    assert done.returncode == 0, done.stderr
    got = status_fields(done.stdout.encode())
    assert got["state"] == "done" and got["tokens_out"] == "6", got
    assert prompt_tokens(got) == prompt_tokens(want) > 2000, (got, want)


async def test_two_shells_read_one_reply_at_once(mounted):
    mnt, address, node = mounted
    async with client.connect(address) as c:
        await greedy(c, maxtokens=200)
    n = (await sh(f"cat {mnt}/clone")).stdout.strip()
    done = await sh(f"echo '{PROMPT}' > {mnt}/{n}/data && "
                    f"(cat {mnt}/{n}/reply > {mnt}.a & cat {mnt}/{n}/reply > {mnt}.b & wait) && "
                    f"cmp {mnt}.a {mnt}.b && wc -c < {mnt}.a")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 100


async def test_bad_writes_get_sensible_errors(mounted):
    mnt, address, node = mounted
    done = await sh(f"echo frobnicate > {mnt}/ctl")
    assert done.returncode != 0 and "Invalid argument" in done.stderr, done.stderr
    done = await sh(f"echo hello > {mnt}/model")
    assert done.returncode != 0 and "Numerical result out of range" not in done.stderr, done.stderr
