"""Processes a deployment starts: its nodes (`python -m styxfs.llama`) and
isolates.  They end when the deployment's process ends, however it ends.

On Linux each child asks the kernel for a signal when its parent goes
(PR_SET_PDEATHSIG).  The signal comes when the *thread* that forked the
child exits, not the process: so every child is forked by one launcher
thread that lives as long as this process, never by a worker thread of
trio's pool, which exits when idle.  Ends are awaited without polling.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import trio

import styxfs

from styxfs.llama.models import DEFAULT as DEFAULT_MODEL
from styxfs.llama.ready import READY_FD

from .config import DeploymentConfig, NodeConfig

PR_SET_PDEATHSIG = 1


def node_command(config: DeploymentConfig, node: NodeConfig, listen: str) -> list[str]:
    """The command line of a node of this deployment, listening on listen."""
    cmd = [sys.executable, "-m", "styxfs.llama", "--listen", listen,
           "--ctx", str(config.node_value(node, "contextSize")),
           "--gpu-layers", str(config.node_value(node, "gpuLayers")),
           "--threads", str(config.node_value(node, "threads")),
           "--batch", str(config.node_value(node, "batchSize"))]
    model = config.node_model(node)
    cmd += ["--model", config.model_path(model) or DEFAULT_MODEL]  # which model, said outright
    if config.modelsDir:
        cmd += ["--models-dir", config.modelsDir]
    if config.authSecretFile:
        cmd += ["--auth-secret-file", config.authSecretFile]
    if template := config.node_value(node, "chatTemplateFile"):
        cmd += ["--chat-template-file", template]
    return cmd


def _die_with(parent: int):
    """The child's first act: ask for SIGTERM when its parent thread goes,
    and go now if the parent is gone already."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class _Launcher:
    """The one thread that forks children, for as long as this process lives."""

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def spawn(self, command: list[str], **options) -> subprocess.Popen:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="llamafs-launcher", daemon=True)
                self.thread.start()
        result: concurrent.futures.Future = concurrent.futures.Future()
        self.requests.put((command, options, result))
        return result.result()

    def _run(self) -> None:
        while True:
            command, options, result = self.requests.get()
            try:
                result.set_result(subprocess.Popen(command, preexec_fn=_die_with(os.getpid()), **options))
            except BaseException as e:  # noqa: BLE001 - the caller's to raise
                result.set_exception(e)


_launcher = _Launcher()


def spawn(command: list[str], **options) -> subprocess.Popen:
    """subprocess.Popen, from the launcher thread, the child ending with us.
    Blocks: from trio, `await trio.to_thread.run_sync(spawn, ...)`."""
    return _launcher.spawn(command, **options)


async def wait_exit(process: subprocess.Popen) -> int:
    """The process's exit status, awaited on a pidfd (no polling)."""
    if process.poll() is None:
        try:
            fd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # no pidfds here, or it is gone already
            return await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
    return process.wait()


DEPLOYMENT_ENV = "LLAMAFS_DEPLOYMENT"  # in a node process we start: our pid


def port_holder(port: int) -> int | None:
    """The pid of the process listening on TCP port, from /proc (Linux); None
    if none is found (or /proc says nothing)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc") if inodes else []):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:  # gone, or not ours to look at
            continue
    return None


def deployment_of(pid: int) -> int | None:
    """The pid of the deployment that started process pid, if it was one."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return None
    prefix = DEPLOYMENT_ENV.encode() + b"="
    for item in environ:
        if item.startswith(prefix) and item[len(prefix):].isdigit():
            return int(item[len(prefix):])
    return None


class NodeProcess:
    """One node process."""

    def __init__(self, node_id: str, process: subprocess.Popen, log_path: str | None, ready_fd: int = -1):
        self.node_id, self.process, self.log_path = node_id, process, log_path
        self.ready_fd = ready_fd  # where it says the address it serves on (styxfs.llama.ready)
        self.stopping = False  # asked to stop: its end is no crash

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @classmethod
    async def start(cls, nursery: trio.Nursery, node_id: str, command: list[str],
                    log_dir: str | None = None, on_exit: Callable[[], None] | None = None) -> "NodeProcess":
        """Start it; a task in nursery waits for its end and then calls on_exit."""
        log_path = os.path.join(log_dir, f"{node_id}.log") if log_dir else None
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        # Where a checkout runs uninstalled, the node finds the package as we did.
        root = str(Path(styxfs.__file__).resolve().parent.parent)
        ready_read, ready_write = os.pipe()
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   **{DEPLOYMENT_ENV: str(os.getpid()), READY_FD: str(ready_write)})
        try:
            process = await trio.to_thread.run_sync(
                lambda: spawn(command, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(ready_write,),
                              start_new_session=True))  # Ctrl-C reaches us, and we stop it
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)  # the child has its own copy, as of the log
            if log_path:
                log.close()
        self = cls(node_id, process, log_path, ready_read)
        nursery.start_soon(self._watch, on_exit)
        return self

    async def ready(self) -> str | None:
        """The address it serves on, once it does; None if it ends first.
        Once only: the pipe is closed after."""
        if self.ready_fd < 0:
            return None
        stream, self.ready_fd = trio.lowlevel.FdStream(self.ready_fd), -1
        said = b""
        async with stream:
            while not said.endswith(b"\n") and (data := await stream.receive_some()):
                said += data
        return said.decode(errors="replace").strip() or None

    async def _watch(self, on_exit: Callable[[], None] | None) -> None:
        await wait_exit(self.process)
        if self.ready_fd >= 0:  # never asked
            os.close(self.ready_fd)
            self.ready_fd = -1
        if on_exit is not None:
            on_exit()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after grace seconds."""
        self.stopping = True
        if self.process.poll() is not None:
            return
        self.process.terminate()
        with trio.move_on_after(grace):
            await wait_exit(self.process)
        if self.process.poll() is None:
            self.process.kill()
            await wait_exit(self.process)

    def log_tail(self, lines: int = 3) -> str:
        """': ' and the last lines of its log, or nothing."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return ": " + " / ".join(text[-lines:]) if text else ""
