"""Node processes a deployment starts: `python -m styxfs.llama` each, as trio
processes, watched without polling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

import styxfs

from .config import DeploymentConfig, NodeConfig


def node_command(config: DeploymentConfig, node: NodeConfig, listen: str) -> list[str]:
    """The command line of a node of this deployment, listening on listen."""
    cmd = [sys.executable, "-m", "styxfs.llama", "--listen", listen,
           "--ctx", str(config.node_value(node, "contextSize")),
           "--gpu-layers", str(config.node_value(node, "gpuLayers")),
           "--threads", str(config.node_value(node, "threads")),
           "--batch", str(config.node_value(node, "batchSize"))]
    if config.modelPath:
        cmd += ["--model", config.modelPath]
    if config.modelsDir:
        cmd += ["--models-dir", config.modelsDir]
    if config.authSecretFile:
        cmd += ["--auth-secret-file", config.authSecretFile]
    return cmd


class NodeProcess:
    """One node process.  `exited` is set when it ends while its watcher runs."""

    def __init__(self, node_id: str, process: trio.Process, log_path: str | None):
        self.node_id, self.process, self.log_path = node_id, process, log_path
        self.exited = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @classmethod
    async def start(cls, nursery: trio.Nursery, node_id: str, command: list[str],
                    log_dir: str | None = None) -> "NodeProcess":
        """Start it; a task in nursery waits for its end."""
        log_path = os.path.join(log_dir, f"{node_id}.log") if log_dir else None
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        # Where a checkout runs uninstalled, the node finds the package as we did.
        root = str(Path(styxfs.__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            process = await trio.lowlevel.open_process(
                command, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)  # Ctrl-C reaches us, and we stop it
        finally:
            if log_path:
                log.close()  # the child has its own copy
        self = cls(node_id, process, log_path)
        nursery.start_soon(self._watch)
        return self

    async def _watch(self) -> None:
        await self.process.wait()
        self.exited.set()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after grace seconds."""
        if self.process.returncode is not None:
            return
        self.process.terminate()
        with trio.move_on_after(grace):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

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
