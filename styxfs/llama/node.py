"""One node: an engine over llama.cpp, the namespace over it, a 9P server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial

import trio

from styxfs import tls
from styxfs.auth import SecretAuthenticator, read_secret
from styxfs.errors import StyxError
from styxfs.server import Server

from .backend import EngineSessions, NodeRoot
from .engine import Engine
from .llamacpp import LlamaModel
from .model import ModelSettings
from .models import DEFAULT, NAMED, ModelNotFound, model_path
from .namespace import LlamaTree
from .settings import DEFAULT_LISTEN, NODE

log = logging.getLogger("styxfs.llama.node")


@dataclass
class NodeOptions:
    model: str | None = None  # a .gguf path, or a name of models.NAMED; None: the default model
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
    no_model: bool = False  # start empty: a model comes later, by ctl `load`
    prefix_cache: int = NODE["prefixcache"].default  # tokens of closed sessions' prefixes kept for reuse
    share_prefixes: bool = False  # reuse prefixes across users too (a timing side channel between them)
    http: str | None = None  # serve /metrics, /api/status and the dashboard here too
    tls_cert: str | None = None  # for a tls! listen address: the certificate chain (PEM)
    tls_key: str | None = None  # and its key
    tls_client_ca: str | None = None  # mutual TLS: only clients with a certificate this CA signed


class Node:
    def __init__(self, options: NodeOptions, load_progress=None, engine: Engine | None = None):
        self.options = options
        self.engine = engine or Engine(LlamaModel, slots=options.slots, prefix_cache=options.prefix_cache,
                                       share_prefixes=options.share_prefixes)
        model = options.model
        named = model is None or model in NAMED
        models_dir = options.models_dir or (os.path.dirname(os.path.abspath(model)) if not named else None)
        self.sessions = EngineSessions(self.engine)
        self.root = NodeRoot(self.engine, self.sessions, models_dir, load_progress)
        self.tree = LlamaTree(self.sessions, self.root, max_sessions=options.max_sessions,
                              session_timeout=options.session_timeout, owner=options.owner)
        authenticator = None
        if options.auth_secret_file:
            authenticator = SecretAuthenticator(read_secret(options.auth_secret_file))
        tls_context = None
        if options.tls_cert or options.tls_key:
            tls_context = tls.server_context(options.tls_cert, options.tls_key, options.tls_client_ca)
        self.server = Server(self.tree, max_connections=options.max_connections, authenticator=authenticator,
                             tls_context=tls_context)
        self.tree.server = self.server
        self.listeners = []
        self.http_port = 0
        self.binding = options.listen  # what is being listened on: where a failure to listen failed

    async def model_settings(self) -> ModelSettings:
        """What to load: the model (by name or path) and the options."""
        o = self.options
        try:
            model = os.path.abspath(await trio.to_thread.run_sync(model_path, o.model))
        except ModelNotFound as e:
            self.root.load_error = str(e)
            raise StyxError(str(e)) from None
        if self.root.models_dir is None:
            self.root.models_dir = os.path.realpath(os.path.dirname(model))
        template = None
        if o.chat_template_file:
            with open(o.chat_template_file, encoding="utf-8") as f:
                template = f.read()
        return ModelSettings(path=model, ctx=o.ctx, gpulayers=o.gpu_layers, threads=o.threads, batch=o.batch,
                             chat_template=template, name=(o.model or DEFAULT) if o.model in (None, *NAMED) else "")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the model (a failure is reported in ctl, and the node serves
        on: the command line stops instead), then serve until cancelled."""
        o = self.options
        self.engine.start()
        try:
            if not o.no_model:
                try:
                    await self.root.load(await self.model_settings())
                except StyxError as e:
                    log.error("model not loaded: %s", e)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.tree.run)
                self.listeners = await nursery.start(self.server.serve, o.listen)
                if o.http:
                    from .web import serve_http  # hypercorn: only imported where HTTP is served

                    self.binding = o.http
                    secret = read_secret(o.auth_secret_file) if o.auth_secret_file else None
                    self.http_port = await nursery.start(partial(serve_http, o.http, self.server, secret=secret))
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.engine.stop)
