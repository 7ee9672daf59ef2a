"""Dis-VM isolates: one Inferno emu in front of each local node.

With ``"isolation": "dis"`` each node is reached through an isolate: a hosted
Inferno emulator (``emu``) running ``limbo/isolate.b``, which mounts the node
in a namespace of its own, loads the model through Llamacpp's
``ModelContext.loadmodel`` and serves the node's tree back out on a port of
its own (as ``styxlisten -A … export`` would; each client connection gets its
own connection to the node). The coordinator then dials the isolate instead of
the node.

A node started with ``--auth-secret-file`` is reached with the same secret
(``auth_secret_file``: ``isolate -k``, Tauth as in :mod:`styxfs.auth`). The
isolate's own export is not authenticated: it listens on loopback (``host``,
127.0.0.1 by default), for the coordinator on the same machine.

Inferno is never shipped with llamafs: emu is looked for on PATH or under
``$INFERNO_ROOT`` (:func:`find_emu`), and our Limbo programs are compiled with
that Inferno's ``limbo`` the first time they are needed (:func:`build_dis`).

    iso = Isolate("node-0")
    iso.start("tcp!127.0.0.1!8000", "model.gguf", 2048, 0, 0)  # 0: any free port
    iso.start(..., auth_secret_file="secret")  # a node with --auth-secret-file
    iso.address        # "tcp!127.0.0.1!PORT": dial this instead of the node
    iso.alive()        # False once emu has gone (a dead isolate is a dead node)
    iso.stop()

Errors are :class:`IsolationError` with the reason and the end of emu's output.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import trio

from styxfs.dial import port_open

from .launch import spawn

__all__ = ["IsolationError", "EmuNotFound", "Isolate", "find_emu", "find_limbo", "build_dis", "LIMBO_SOURCES"]


def _limbo_sources() -> Path:
    """The Limbo sources: the checkout's top-level limbo/, or in an installed
    wheel the same files carried as package data (coordinator/limbo/)."""
    checkout = Path(__file__).resolve().parent.parent / "limbo"
    if (checkout / "llamacpp.m").is_file():
        return checkout
    return Path(str(importlib.resources.files("coordinator") / "limbo"))


LIMBO_SOURCES = _limbo_sources()
PROGRAMS = ("llamacpp", "isolate", "llama")
READY = re.compile(r"^isolate: serving .* on tcp!\S+!(\d+)$", re.MULTILINE)  # the port as announced

_NAMES = ("emu", "emu-g")
_build_lock = threading.Lock()


class IsolationError(RuntimeError):
    """An isolate could not be started, or has died."""


class EmuNotFound(IsolationError):
    pass


def _is_exe(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def _root_of(binary: Path) -> Path | None:
    """ROOT from ROOT/<SYSHOST>/<OBJTYPE>/bin/emu, if it looks like an Inferno tree."""
    real = binary.resolve()
    if len(real.parents) < 4:
        return None
    root = real.parents[3]
    return root if (root / "dis" / "sh.dis").is_file() else None


def find_emu() -> tuple[str, str] | None:
    """``(emu path, Inferno root)``, or None.

    With ``$INFERNO_ROOT``: its ``Linux/386/bin`` (then ``$SYSHOST/$OBJTYPE/bin``)
    ``emu`` or ``emu-g``, else ``emu`` on PATH with that root. Without: ``emu``
    (or ``emu-g``) on PATH, the root deduced from where the binary lives.
    A root must hold ``dis/sh.dis``.
    """
    env_root = os.environ.get("INFERNO_ROOT")
    if env_root:
        root = Path(env_root)
        if not (root / "dis" / "sh.dis").is_file():
            return None
        host = os.environ.get("SYSHOST", "Linux")
        objtype = os.environ.get("OBJTYPE", "386")
        for d in (root / "Linux" / "386" / "bin", root / host / objtype / "bin"):
            for name in _NAMES:
                if _is_exe(d / name):
                    return str(d / name), str(root)
        for name in _NAMES:
            found = shutil.which(name)
            if found:
                return found, str(root)
        return None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            root = _root_of(Path(found))
            if root is not None:
                return found, str(root)
    return None


def find_limbo(emu: str) -> str | None:
    """The limbo compiler beside emu, or on PATH."""
    beside = Path(emu).parent / "limbo"
    if _is_exe(beside):
        return str(beside)
    return shutil.which("limbo")


def _require_emu() -> tuple[str, str]:
    found = find_emu()
    if found is None:
        raise EmuNotFound(
            "isolation \"dis\" needs Inferno's emu: put emu on PATH or set INFERNO_ROOT "
            "to an Inferno tree with a hosted emu built (ROOT/Linux/386/bin/emu)")
    return found


def _cache_dir(src: Path) -> Path:
    """~/.cache/llamafs/dis/HASH: a directory per version of the sources."""
    digest = hashlib.sha256()
    for f in sorted(src.glob("*.[bm]")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamafs" / "dis" / digest.hexdigest()[:16]


def build_dis(root: str, emu: str, names: tuple[str, ...] = PROGRAMS, src: Path = LIMBO_SOURCES) -> Path:
    """The directory holding ``NAME.dis`` for each name, compiled if missing.

    Compiled into the user's cache, never beside the sources (an installed
    package does not write into itself). Warnings are errors.
    """
    if not (src / "llamacpp.m").is_file():
        raise IsolationError(f"the Limbo sources are not in {src}")
    out = _cache_dir(src)
    with _build_lock:
        limbo = None
        for name in names:
            source = src / f"{name}.b"
            target = out / f"{name}.dis"
            if target.is_file():  # the directory is the sources' own (by their hash)
                continue
            limbo = limbo or find_limbo(emu)
            if limbo is None:
                raise IsolationError(f"{target} is missing and no limbo compiler was found beside {emu} or on PATH")
            out.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".dis", dir=out)
            os.close(fd)
            try:
                done = subprocess.run(
                    [limbo, f"-I{Path(root) / 'module'}", f"-I{src}", "-w", "-o", tmp, str(source)],
                    capture_output=True, text=True, timeout=120)
                if done.returncode != 0 or done.stdout.strip() or done.stderr.strip():
                    raise IsolationError(f"limbo {source} failed:\n{done.stdout}{done.stderr}".rstrip())
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return out


def inferno_quote(s: str) -> str:
    """One word for Inferno sh ('' doubles a quote inside quotes)."""
    return "'" + s.replace("'", "''") + "'"


def host_path(p: Path | str) -> str:
    """A host file as Inferno sees it (#U* is the host's /)."""
    return "#U*" + str(Path(p).resolve())


class Isolate:
    """One emu running ``isolate.dis`` in front of one node."""

    def __init__(self, node_id: str = "", *, host: str = "127.0.0.1", log_path: str | os.PathLike | None = None):
        self.node_id = node_id
        self.host = host
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.node_dial: str | None = None
        self.stopped = False
        self._log_path = Path(log_path) if log_path else None
        self._log_file = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __repr__(self) -> str:
        state = "alive" if self.alive() else "not running"
        return f"<Isolate {self.node_id or '?'} {self.node_dial} -> {self.address} {state}>"

    @property
    def address(self) -> str | None:
        """The isolate's dial string: what the coordinator dials instead of the node."""
        return f"tcp!{self.host}!{self.port}" if self.port is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log(self) -> str:
        """Everything emu has written (the isolate's stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text("utf-8", "replace")

    def _describe(self) -> str:
        name = f"isolate for {self.node_id}" if self.node_id else "isolate"
        return f"{name} ({self.node_dial} -> {self.address})"

    def start(self, node_dial: str, model_path: str, ctx: int, layers: int, export_port: int,
              timeout: float = 60.0, auth_secret_file: str | os.PathLike | None = None) -> subprocess.Popen:
        """Start emu; return once the isolate serves on ``export_port`` (0: a free port).

        ``auth_secret_file``: the node's secret (its ``--auth-secret-file``), or
        None for a node without authentication.

        Blocks (use :meth:`start_async` from trio). Raises :class:`EmuNotFound`
        when there is no emu, :class:`IsolationError` when the isolate exits or
        is not serving within ``timeout`` seconds (with emu's output).
        """
        if self.process is not None:
            raise IsolationError(f"{self._describe()} already started")
        emu, root = _require_emu()
        dis = build_dis(root, emu)
        self.node_dial = node_dial
        self.port = None  # export_port, or (0) the OS's choice, once emu says which
        if self._log_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="llamafs-isolate-")
            self._log_path = Path(self._tmp.name) / "emu.log"
        self._log_file = open(self._log_path, "wb")
        words = [host_path(dis / "isolate.dis"), "-M", host_path(dis / "llamacpp.dis")]
        if auth_secret_file is not None:
            words += ["-k", host_path(auth_secret_file)]
        words += [node_dial, model_path, str(int(ctx)), str(int(layers)), f"tcp!{self.host}!{export_port}"]
        script = " ".join(inferno_quote(w) for w in words) + "; echo halt > /dev/sysctl"
        env = {k: v for k, v in os.environ.items() if k != "EMU"}
        self.process = spawn(  # the launcher's: emu ends with this process
            [emu, "-I", "-c0", f"-r{root}", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # emu SIGKILLs its whole process group when it exits
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.log()
                self._reap()
                raise IsolationError(f"{self._describe()} exited before serving:\n{_tail(log)}")
            said = READY.search(self.log())
            if said and port_open(self.host, int(said[1])):
                self.port = int(said[1])
                return self.process
            if time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise IsolationError(f"{self._describe()} not serving after {timeout:g} s:\n{_tail(log)}")
            time.sleep(0.05)

    async def start_async(self, node_dial: str, model_path: str, ctx: int, layers: int, export_port: int,
                          timeout: float = 60.0, auth_secret_file: str | os.PathLike | None = None
                          ) -> subprocess.Popen:
        """:meth:`start` in a worker thread (cancellation stops the isolate)."""
        try:
            return await trio.to_thread.run_sync(self.start, node_dial, model_path, ctx, layers,
                                                 export_port, timeout, auth_secret_file, abandon_on_cancel=False)
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Raise :class:`IsolationError` if the isolate has died (stopped on purpose is not death)."""
        if self.process is None or self.stopped:
            return
        if self.process.poll() is not None:
            raise IsolationError(f"{self._describe()} died (emu exit status {self.process.returncode}):\n"
                                 f"{_tail(self.log())}")

    async def wait_dead(self, poll: float = 0.2) -> str:
        """Return, with the reason, once emu has exited without :meth:`stop`."""
        while True:
            if self.process is not None and not self.stopped and self.process.poll() is not None:
                return (f"{self._describe()} died (emu exit status {self.process.returncode}): "
                        f"{_tail(self.log(), 3)}")
            await trio.sleep(poll)

    def kill(self) -> None:
        """SIGKILL emu's process group, as a crash would (for tests); not counted as a stop."""
        if self.process is not None:
            _killpg(self.process, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Stop emu (and anything it started); idempotent."""
        self.stopped = True
        if self.process is not None and self.process.poll() is None:
            _killpg(self.process, signal.SIGTERM)
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                _killpg(self.process, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            _killpg(self.process, signal.SIGKILL)  # stragglers in its group
        self._reap()

    def _reap(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _killpg(self.process, signal.SIGKILL)
            self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _tail(text: str, lines: int = 20) -> str:
    text = text.strip()
    if not text:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def _killpg(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
