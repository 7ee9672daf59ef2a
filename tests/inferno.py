"""Run Inferno sh scripts inside a hosted Inferno emulator (``emu``) from tests.

Inferno is in no package registry and is never vendored here:
tests that need it use :data:`requires_emu` and skip when no emu is found.

Locating emu (:func:`find_emu`):

* ``$INFERNO_ROOT`` set: ``$INFERNO_ROOT/Linux/386/bin/emu`` (the only hosted
  port that builds on x86-64 Linux, as a 32-bit binary), then
  ``$INFERNO_ROOT/$SYSHOST/$OBJTYPE/bin/emu`` (env vars, defaulting to
  Linux/386), then ``emu-g`` (the headless configuration's install name) in
  those directories, then ``emu`` on PATH with that root; None if
  ``$INFERNO_ROOT/dis/sh.dis`` is missing.
* otherwise ``emu`` (or ``emu-g``) on PATH, ROOT deduced from the resolved
  binary path ``ROOT/<SYSHOST>/<OBJTYPE>/bin/emu``; accepted only if
  ``ROOT/dis/sh.dis`` exists.

How a script is run (:func:`run_inferno`), measured on emu built from
inferno-os (Linux/386, ``emu-g`` headless configuration):

    emu -I -c0 -r<ROOT> sh -c "sh '#U*<tmp>/script' >[2] '#U*<tmp>/stderr';
                               echo -n $status > '#U*<tmp>/status';
                               echo halt > /dev/sysctl"

* ``-r<ROOT>``: the Inferno root (overrides ``$INFERNO``/``$ROOT``, which emu
  also reads). ``$EMU`` (extra emu options) is removed from the environment so
  the flags are exactly these.
* ``-I``: run without a console reader. Without it emu starts a kproc reading
  host stdin, sets termios on fd 0, and an Inferno ``read`` of ``/dev/cons``
  blocks forever even at EOF; with it such reads fail at once ("file does not
  exist"). Output to ``/dev/cons`` still goes to host stdout.
* ``-c0``: interpret Dis, no JIT (the default; stated so it is deterministic).
* No ``-g``/graphics flags: nothing here opens ``/dev/draw``; the emu-g build
  has no X11 at all, and a full X11 emu does not touch the display either.
* The script is written to a host temp dir and read through ``'#U*'`` (the
  host's ``/``, whatever ``-r`` is), so no quoting of the script is needed and
  a script's ``exit`` ends only its own ``sh``.
* Inferno's fd 2 is ``/dev/cons`` too (host stdout), so fd 2 of the script is
  redirected to a host file and returned as ``stderr`` (followed by anything
  emu itself wrote to host stderr).
* ``echo halt > /dev/sysctl`` ends emu even when Inferno processes are left
  (a ``sleep 100 &`` keeps emu alive otherwise; so would a listener).
* emu exits via ``kill(0, SIGKILL)``: it SIGKILLs its whole process group,
  itself included. It therefore runs in a new session
  (``start_new_session=True``), or it would kill pytest; its own exit code is
  always -9 and is replaced (see :class:`InfernoResult`).

Gotchas: ``=`` must be quoted in Inferno sh words (``echo a=b`` is a syntax
error); mount points must exist (``/n/remote``, ``/n/client``, ``/n/local``
... exist in a tree made with ``mk mkdirs``; ``/n/x`` does not); ``mount -A``
against a closed port prints ``mount: can't dial tcp!127.0.0.1!P: Connection
refused`` and sets status ``dial failed``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

__all__ = ["InfernoResult", "find_emu", "inferno", "port", "requires_emu", "run_inferno", "quote"]

# One way to find emu, shared with the isolates.
from coordinator.isolation import find_emu, inferno_quote  # noqa: E402

requires_emu = pytest.mark.skipif(
    find_emu() is None,
    reason="Inferno emu not found: set INFERNO_ROOT or put emu on PATH",
)

quote = inferno_quote  # one word for Inferno sh


class InfernoResult(subprocess.CompletedProcess):
    """CompletedProcess whose ``returncode`` is the script's, not emu's.

    ``status`` is the Inferno sh ``$status`` of the script ("" = success) or
    None if the script never finished (emu died); ``returncode`` is 0 when
    status is "", 1 when it is not, and emu's own code when status is None.
    ``stdout`` is everything written to Inferno's ``/dev/cons`` (fd 1).
    """

    status: str | None


def run_inferno(script: str, timeout: float = 60) -> InfernoResult:
    """Run an Inferno sh ``script`` non-interactively in a headless emu.

    Raises RuntimeError when no emu is found, and subprocess.TimeoutExpired
    (carrying the output so far) after killing emu's process group when the
    script takes longer than ``timeout`` seconds.
    """
    found = find_emu()
    if found is None:
        raise RuntimeError("Inferno emu not found: set INFERNO_ROOT or put emu on PATH")
    emu, root = found
    env = {k: v for k, v in os.environ.items() if k != "EMU"}
    with tempfile.TemporaryDirectory(prefix="inferno-") as tmp:
        tdir = Path(tmp)
        (tdir / "script").write_text(script if script.endswith("\n") else script + "\n")
        (tdir / "stderr").write_bytes(b"")

        def host(name: str) -> str:
            return quote("#U*" + str(tdir / name))

        wrapper = (
            f"sh {host('script')} >[2] {host('stderr')}; "
            f"echo -n $status > {host('status')}; "
            "echo halt > /dev/sysctl"
        )
        cmd = [emu, "-I", "-c0", f"-r{root}", "sh", "-c", wrapper]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # emu SIGKILLs its process group on exit
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(
                cmd, timeout,
                output=out.decode("utf-8", "replace"),
                stderr=(tdir / "stderr").read_text("utf-8", "replace")
                + err.decode("utf-8", "replace"),
            ) from None
        finally:
            _killpg(proc)  # any host processes the script started via devcmd
        status_file = tdir / "status"
        status = status_file.read_text("utf-8", "replace") if status_file.exists() else None
        if status is None:
            rc = proc.returncode
        else:
            rc = 0 if status == "" else 1
        result = InfernoResult(
            cmd, rc,
            stdout=out.decode("utf-8", "replace"),
            stderr=(tdir / "stderr").read_text("utf-8", "replace")
            + err.decode("utf-8", "replace"),
        )
        result.status = status
        return result


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def inferno(script: str, timeout: float = 25) -> InfernoResult:
    """run_inferno from trio, in a worker thread; running over timeout fails
    the test, saying how far the script got."""
    try:
        return await trio.to_thread.run_sync(run_inferno, script, timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"emu script ran over {timeout} s; its output so far:\n{e.output}\nstderr:\n{e.stderr}")


def port(address: str) -> str:
    """The port of a tcp dial string."""
    return address.rsplit("!", 1)[1]
