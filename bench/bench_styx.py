"""Round trips per second for a 1-byte Tread on a ramfs file.

    .venv/bin/python bench/bench_styx.py [--seconds N]

(a) the styxfs trio client and (b) python-9p, against our ramfs run as a
subprocess (`python -m styxfs.ramfs`); (c) both clients against plan9port's
ramfs when it is on PATH.  One request outstanding at a time (a latency
bound), plus the trio client with 16 requests in flight.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from bench.common import free_port, stop_process  # noqa: E402
from styxfs import client, wire  # noqa: E402

FILE = "bench"


def wait_for(connect, proc: subprocess.Popen, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            connect().close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening in {timeout} s")


def start_our_ramfs() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "styxfs.ramfs", "--listen", f"tcp!127.0.0.1!{port}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1), proc, "styxfs.ramfs")
    return proc, f"tcp!127.0.0.1!{port}"


def start_plan9port_ramfs() -> tuple[subprocess.Popen, str, str]:
    """plan9port's ramfs posting a service in the namespace directory."""
    ramfs = shutil.which("ramfs")
    namespace = shutil.which("namespace")
    if ramfs is None:
        raise LookupError("plan9port ramfs is not on PATH")
    if namespace is None:
        raise LookupError("ramfs is on PATH but plan9port's `namespace` is not")
    nsdir = subprocess.run([namespace], capture_output=True, text=True, check=True).stdout.strip()
    name = f"styxbench.{os.getpid()}"
    path = os.path.join(nsdir, name)
    proc = subprocess.Popen([ramfs, "-S", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def connect():
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        return s

    wait_for(connect, proc, "plan9port ramfs")
    return proc, f"unix!{path}", path


# ---- (a) the styxfs trio client -------------------------------------------------------


async def _styx_prepare(c: client.Client) -> None:
    try:
        async with await c.create(FILE, 0o644, wire.OWRITE) as f:
            await f.write(b"x")
    except client.ServerError:  # already there (made by the other client)
        await c.write_file(FILE, b"x")


async def _styx_bench(address: str, seconds: float, parallel: int) -> float:
    async with client.connect(address, uname="bench") as c:
        await _styx_prepare(c)
        f = await c.open(FILE)
        count = 0

        async def loop(deadline: float) -> None:
            nonlocal count
            while trio.current_time() < deadline:
                data = await f.fid.read(1, 0)
                assert data == b"x", data
                count += 1

        async with trio.open_nursery() as nursery:  # warm up, then measure
            nursery.start_soon(loop, trio.current_time() + 0.2)
        count = 0
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(parallel):
                nursery.start_soon(loop, start + seconds)
        elapsed = trio.current_time() - start
        await f.close()
        return count / elapsed


def bench_styx(address: str, seconds: float, parallel: int = 1) -> float:
    return trio.run(_styx_bench, address, seconds, parallel)


# ---- (b) python-9p -----------------------------------------------------------------------


def bench_py9p(address: str, seconds: float) -> float:
    import py9p

    if address.startswith("unix!"):
        c = py9p.Client.connect_unix(address[5:])
    else:
        _, host, port = address.split("!")
        c = py9p.Client.connect_tcp(host, int(port))
    with c:
        c.negotiate()
        c.attach(0, uname="bench")
        try:
            c.walk(0, 1, [FILE])
        except py9p.RemoteError:
            c.walk(0, 1, [])
            c.create(1, FILE, 0o644, 2)
            c.write(1, b"x", 0)
            c.clunk(1)
            c.walk(0, 1, [FILE])
        c.open(1, 0)
        warm = time.monotonic() + 0.2
        while time.monotonic() < warm:
            c.read(1, 1, 0)
        count, start = 0, time.monotonic()
        deadline = start + seconds
        while time.monotonic() < deadline:
            assert c.read(1, 1, 0) == b"x"
            count += 1
        elapsed = time.monotonic() - start
        c.clunk(1)
    return count / elapsed


# ---- the table -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    args = parser.parse_args()

    rows: list[tuple[str, str, str, str]] = []

    def measure(server: str, client_name: str, run) -> None:
        try:
            rate = run()
        except Exception as e:  # noqa: BLE001 - a row saying why, not a traceback
            rows.append((server, client_name, "failed", f"{type(e).__name__}: {e}"))
            return
        rows.append((server, client_name, f"{rate:,.0f}", f"{1e6 / rate:,.1f}"))

    proc, address = start_our_ramfs()
    try:
        server = "styxfs.ramfs"
        measure(server, "styxfs trio client", lambda: bench_styx(address, args.seconds))
        measure(server, "styxfs trio, 16 in flight", lambda: bench_styx(address, args.seconds, 16))
        measure(server, "python-9p", lambda: bench_py9p(address, args.seconds))
    finally:
        stop_process(proc)

    try:
        proc, address, path = start_plan9port_ramfs()
    except (LookupError, RuntimeError, subprocess.CalledProcessError) as e:
        rows.append(("plan9port ramfs", "-", "skipped", str(e)))
    else:
        try:
            server = "plan9port ramfs"
            measure(server, "styxfs trio client", lambda: bench_styx(address, args.seconds))
            measure(server, "python-9p", lambda: bench_py9p(address, args.seconds))
        finally:
            stop_process(proc)
            if os.path.exists(path):
                os.unlink(path)

    header = ("server", "client", "round trips/s", "µs per round trip")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(4)]
    print(f"1-byte Tread round trips, {args.seconds:g} s each, {sys.platform}, "
          f"Python {sys.version.split()[0]}, trio {trio.__version__}")

    def cell(i: int, text: str, width: int) -> str:
        numeric = i >= 2 and text[:1].isdigit()
        return text.rjust(width) if numeric else text.ljust(width)

    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(cell(i, text, w) for i, (text, w) in enumerate(zip(row, widths))).rstrip())


if __name__ == "__main__":
    main()
